"""The ssitab parser: every accepted spelling, one case per error kind, and properties."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from linuxrc_agent.ssitab import (
    BootDev,
    BootDevKind,
    Node,
    Ssitab,
    SsitabError,
    _parse,
    is_valid_hostname,
    load,
    normalize_mac,
    parse,
    parse_bootdev,
)

GOOD = "1 10.0.0.11/24 52:54:00:12:34:01 0 -"

SPELLINGS = """\
# A comment line, then a blank one and one of only whitespace.

\t   \t
1   10.77.0.11/24 52:54:00:12:34:01 1 /dev/vda1   # trailing comment
2\t10.77.0.12/16\t52-54-00-12-34-02\t0\t-
3 10.77.0.13 52:54:00:AB:CD:03,52-54-00-ab-cd-13 no - hostname=n3
4 10.77.0.14/24 52:54:00:12:34:04 yes LABEL=ssiboot hostname=Node-4.cluster.example
5 10.77.0.15/24 52:54:00:12:34:05 YES UUID=0A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9
6 10.77.0.16/24 52:54:00:12:34:06 Yes PARTUUID=1234abcd-01
7 10.77.0.17/24 52:54:00:12:34:07 1 UUID=ABCD-1234
8 10.77.0.18/31 52:54:00:12:34:08 NO -
9 10.77.0.19/32 52:54:00:12:34:09,52:54:00:12:34:19,52:54:00:12:34:29 0 -
10 10.77.0.20/24 52:54:00:12:34:0a 1 /dev/disk/by-label/ssi-boot\r
"""


def node(number: int, ip: str, prefix: int, macs: tuple[str, ...], local: bool,
         bootdev: BootDev | None, hostname: str) -> Node:
    return Node(number, ip, prefix, macs, local, bootdev, hostname)


def test_every_accepted_spelling() -> None:
    table = parse(SPELLINGS, "/etc/ssitab")
    assert table.nodes == (
        node(1, "10.77.0.11", 24, ("52:54:00:12:34:01",), True,
             BootDev(BootDevKind.PATH, "/dev/vda1"), "node1"),
        node(2, "10.77.0.12", 16, ("52:54:00:12:34:02",), False, None, "node2"),
        node(3, "10.77.0.13", 24, ("52:54:00:ab:cd:03", "52:54:00:ab:cd:13"), False, None, "n3"),
        node(4, "10.77.0.14", 24, ("52:54:00:12:34:04",), True,
             BootDev(BootDevKind.LABEL, "ssiboot"), "Node-4.cluster.example"),
        node(5, "10.77.0.15", 24, ("52:54:00:12:34:05",), True,
             BootDev(BootDevKind.UUID, "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"), "node5"),
        node(6, "10.77.0.16", 24, ("52:54:00:12:34:06",), True,
             BootDev(BootDevKind.PARTUUID, "1234abcd-01"), "node6"),
        node(7, "10.77.0.17", 24, ("52:54:00:12:34:07",), True,
             BootDev(BootDevKind.UUID, "abcd-1234"), "node7"),
        node(8, "10.77.0.18", 31, ("52:54:00:12:34:08",), False, None, "node8"),
        node(9, "10.77.0.19", 32,
             ("52:54:00:12:34:09", "52:54:00:12:34:19", "52:54:00:12:34:29"), False, None,
             "node9"),
        node(10, "10.77.0.20", 24, ("52:54:00:12:34:0a",), True,
             BootDev(BootDevKind.PATH, "/dev/disk/by-label/ssi-boot"), "node10"),
    )
    assert [n.line for n in table] == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert table.path == "/etc/ssitab"
    assert len(table) == 10
    assert table.by_mac()["52:54:00:ab:cd:13"].number == 3
    assert table.by_number()[4].hostname == "Node-4.cluster.example"
    assert str(table.by_number()[5].bootdev) == "UUID=0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
    assert str(table.by_number()[1].bootdev) == "/dev/vda1"


SERVERS = """\
1 10.77.0.11/24 52:54:00:12:34:01 0 - server=10.77.0.1
2 10.77.0.12/24 52:54:00:12:34:02 0 - hostname=n2 server=10.77.1.1
3 10.77.0.13/24 52:54:00:12:34:03 0 - server=10.77.1.1 hostname=n3
4 10.77.0.14/24 52:54:00:12:34:04 0 - hostname=n4,server=192.168.5.1
5 10.77.0.15/24 52:54:00:12:34:05 0 - hostname=n5
"""


@pytest.mark.parametrize("fast", [True, False])
def test_server_option_in_every_spelling(fast: bool) -> None:
    table = _parse(SERVERS, "/etc/ssitab", fast=fast)
    assert [(n.number, n.hostname, n.server) for n in table] == [
        (1, "node1", "10.77.0.1"), (2, "n2", "10.77.1.1"), (3, "n3", "10.77.1.1"),
        (4, "n4", "192.168.5.1"), (5, "n5", None)]
    assert table == parse(SERVERS, "/etc/ssitab")


def test_server_is_part_of_the_node() -> None:
    # Moving a node to another boot server is a change of its record (DHCP output differs).
    assert parse(GOOD + " server=10.0.0.1") != parse(GOOD + " server=10.0.0.2")


def test_default_prefix_and_derived_fields() -> None:
    n = parse("1 10.1.2.3 52:54:00:12:34:01 0 -").nodes[0]
    assert (n.prefix, n.netmask, n.network) == (24, "255.255.255.0", "10.1.2.0/24")
    n = parse("1 10.1.2.3/15 52:54:00:12:34:01 0 -").nodes[0]
    assert (n.netmask, n.network) == ("255.254.0.0", "10.0.0.0/15")


def test_empty_and_comment_only_tables() -> None:
    assert parse("") == Ssitab("/etc/ssitab", ())
    assert len(parse("# nothing\n\n   \n")) == 0


def test_nodes_are_frozen() -> None:
    n = parse(GOOD).nodes[0]
    with pytest.raises(AttributeError):
        n.ip = "10.0.0.99"  # type: ignore[misc]


def two(second: str, first: str = GOOD) -> str:
    return f"{first}\n{second}\n"


# (table, line, column, message): the first problem reported, exactly.
ERRORS = {
    "malformed node number": (
        "x1 10.0.0.11/24 52:54:00:12:34:01 0 -", 1, 1,
        "bad node number 'x1'; expected an integer from 1 to 999999"),
    "node number out of range": (
        "1000000 10.0.0.11 52:54:00:12:34:01 0 -", 1, 1,
        "bad node number '1000000'; expected an integer from 1 to 999999"),
    "node number with leading zero": (
        "01 10.0.0.11 52:54:00:12:34:01 0 -", 1, 1,
        "bad node number '01'; expected an integer from 1 to 999999"),
    "duplicate node number": (
        two("1 10.0.0.12/24 52:54:00:12:34:02 0 -"), 2, 1,
        "duplicate node number 1 (first on line 1); node numbers must be unique"),
    "malformed MAC": (
        "1 10.0.0.11/24 52:54:00:12:34 0 -", 1, 16,
        "bad MAC address '52:54:00:12:34'; expected six hex octets separated by ':' or "
        "'-', e.g. 52:54:00:12:34:01"),
    "MAC with mixed separators": (
        "1 10.0.0.11/24 52:54-00:12:34:01 0 -", 1, 16,
        "bad MAC address '52:54-00:12:34:01'; expected six hex octets separated by ':' or "
        "'-', e.g. 52:54:00:12:34:01"),
    "multicast MAC": (
        "1 10.0.0.11/24 01:00:5e:00:00:01 0 -", 1, 16,
        "MAC 01:00:5e:00:00:01 is a multicast address (first octet odd); a NIC's address "
        "has an even first octet"),
    "broadcast MAC": (
        "1 10.0.0.11/24 FF-FF-FF-FF-FF-FF 0 -", 1, 16,
        "MAC ff:ff:ff:ff:ff:ff is the broadcast address; use the NIC's real address"),
    "all-zero MAC": (
        "1 10.0.0.11/24 00:00:00:00:00:00 0 -", 1, 16,
        "MAC 00:00:00:00:00:00 is all-zero; use the NIC's real address"),
    "duplicate MAC in one node": (
        "1 10.0.0.11/24 52:54:00:12:34:01,52:54:00:12:34:01 0 -", 1, 34,
        "duplicate MAC 52:54:00:12:34:01 (first on line 1); a MAC belongs to one node only"),
    "duplicate MAC across nodes, other spelling": (
        two("2 10.0.0.12/24 52:54:00:12:34:02,52-54-00-12-34-01 0 -"), 2, 34,
        "duplicate MAC 52:54:00:12:34:01 (first on line 1); a MAC belongs to one node only"),
    "malformed IP": (
        "1 10.0.0.256/24 52:54:00:12:34:01 0 -", 1, 3,
        "bad IPv4 address '10.0.0.256'; expected four decimal octets 0-255 with an optional "
        "/prefix, e.g. 10.0.0.11/24"),
    "IP with a leading zero": (
        "1 10.0.0.011 52:54:00:12:34:01 0 -", 1, 3,
        "bad IPv4 address '10.0.0.011'; expected four decimal octets 0-255 with an optional "
        "/prefix, e.g. 10.0.0.11/24"),
    "not a unicast address": (
        "1 127.0.0.1/8 52:54:00:12:34:01 0 -", 1, 3,
        "address 127.0.0.1 is not a unicast host address; expected e.g. 10.0.0.11/24"),
    "malformed prefix": (
        "1 10.0.0.11/33 52:54:00:12:34:01 0 -", 1, 12,
        "bad prefix '/33'; expected /1 to /32, e.g. 10.0.0.11/24"),
    "duplicate IP": (
        two("2 10.0.0.11/16 52:54:00:12:34:02 0 -"), 2, 3,
        "duplicate IP address 10.0.0.11 (first on line 1); each node needs its own address"),
    "network address": (
        "1 10.0.0.0/24 52:54:00:12:34:01 0 -", 1, 3,
        "10.0.0.0 is the network address of 10.0.0.0/24; use a host address inside the "
        "subnet"),
    "broadcast address, default prefix": (
        "1 10.0.0.255 52:54:00:12:34:01 0 -", 1, 3,
        "10.0.0.255 is the broadcast address of 10.0.0.255/24; use a host address inside "
        "the subnet"),
    "bad local flag": (
        "1 10.0.0.11/24 52:54:00:12:34:01 maybe -", 1, 34,
        "bad local boot flag 'maybe'; expected 1, 0, yes or no"),
    "local node without bootdev": (
        "1 10.0.0.11/24 52:54:00:12:34:01 1 -", 1, 36,
        "local node without a boot device; expected /dev/NAME, LABEL=, UUID= or PARTUUID="),
    "non-local node with bootdev": (
        "1 10.0.0.11/24 52:54:00:12:34:01 0 /dev/sda1", 1, 36,
        "non-local node with boot device '/dev/sda1'; use '-' or set the local flag to 1"),
    "bad bootdev form": (
        "1 10.0.0.11/24 52:54:00:12:34:01 1 sda1", 1, 36,
        "bad boot device 'sda1'; expected /dev/NAME, LABEL=NAME, UUID=UUID, PARTUUID=UUID "
        "or '-'"),
    "bootdev escaping /dev": (
        "1 10.0.0.11/24 52:54:00:12:34:01 1 /dev/../etc/passwd", 1, 36,
        "bad boot device '/dev/../etc/passwd'; expected /dev/NAME, LABEL=NAME, UUID=UUID, "
        "PARTUUID=UUID or '-'"),
    "unknown option": (
        "1 10.0.0.11/24 52:54:00:12:34:01 0 - color=red", 1, 38,
        "unknown option 'color'; known options: hostname, server"),
    "bad server address": (
        "1 10.0.0.11/24 52:54:00:12:34:01 0 - server=10.0.0.1/24", 1, 45,
        "bad server address '10.0.0.1/24'; expected the IPv4 address of the node's boot "
        "server (four decimal octets, a unicast host), e.g. server=10.0.0.1"),
    "server not a host address": (
        "1 10.0.0.11/24 52:54:00:12:34:01 0 - hostname=n1,server=224.0.0.1", 1, 57,
        "bad server address '224.0.0.1'; expected the IPv4 address of the node's boot "
        "server (four decimal octets, a unicast host), e.g. server=10.0.0.1"),
    "server given twice": (
        "1 10.0.0.11/24 52:54:00:12:34:01 0 - server=10.0.0.1 server=10.0.0.2", 1, 54,
        "option 'server' given twice; give it once"),
    "malformed option": (
        "1 10.0.0.11/24 52:54:00:12:34:01 0 - =n1", 1, 38,
        "malformed option '=n1'; expected key=value, e.g. hostname=n3"),
    "option given twice": (
        "1 10.0.0.11/24 52:54:00:12:34:01 0 - hostname=a,hostname=b", 1, 49,
        "option 'hostname' given twice; give it once"),
    "bad hostname": (
        '1 10.0.0.11/24 52:54:00:12:34:01 0 - hostname=a";b', 1, 47,
        "bad hostname 'a\";b'; expected RFC 1123 labels of letters, digits and inner hyphens, "
        "the last one not all digits, e.g. n3"),
    "duplicate hostname, other case": (
        two("2 10.0.0.12/24 52:54:00:12:34:02 0 - hostname=NODE1"), 2, 47,
        "duplicate hostname 'NODE1' (first on line 1); each node needs its own hostname="),
    "hostname taken by a default name": (
        two("2 10.0.0.12/24 52:54:00:12:34:02 0 -",
            "1 10.0.0.11/24 52:54:00:12:34:01 0 - hostname=node2"), 2, 1,
        "node 2's default hostname 'node2' is already used on line 1; give one of them "
        "another hostname="),
    "too few columns": (
        "1 10.0.0.11/24 52:54:00:12:34:01 0   # bootdev forgotten", 1, 35,
        "too few columns (4); expected 'node ip mac local bootdev [options]', e.g. "
        "'1 10.0.0.11/24 52:54:00:12:34:01 0 -'"),
    "too many columns": (
        "1 10.0.0.11/24 52:54:00:12:34:01 0 - hostname=n1 extra", 1, 50,
        "too many columns: 'extra'; expected 'node ip mac local bootdev [key=value ...]'"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_error_names_line_column_and_remedy(name: str) -> None:
    text, line, col, message = ERRORS[name]
    with pytest.raises(SsitabError) as info:
        parse(text, "site.tab")
    first = info.value.problems[0]
    assert (first.line, first.col, first.message) == (line, col, message)
    assert str(first) == f"site.tab:{line}:{col}: {message}"
    # The careful path alone must say exactly the same.
    with pytest.raises(SsitabError) as careful:
        _parse(text, "site.tab", fast=False)
    assert careful.value.problems == info.value.problems


def test_all_errors_of_a_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "ssitab"
    path.write_text(
        "# node ip mac local bootdev\n"
        "1 10.0.0.11/24 52:54:00:12:34:01 0 -\n"
        "1 10.0.0.300 01:54:00:12:34:02 2 -\n"        # four errors on one line
        "\n"
        "3 10.0.0.13 52:54:00:12:34:01 0 - size=3\n"  # duplicate MAC, unknown option
        "4 10.0.0.14\n"                               # too few columns
        "5 10.0.0.15 52:54:00:12:34:05 0 -\n")        # fine
    with pytest.raises(SsitabError) as info:
        load(str(path))
    assert [(p.line, p.col) for p in info.value.problems] == [
        (3, 1), (3, 3), (3, 14), (3, 32), (5, 13), (5, 35), (6, 12)]
    lines = str(info.value).splitlines()
    assert len(lines) == 7
    assert all(line.startswith(f"{path}:") for line in lines)


def test_every_problem_names_the_file_line_and_column() -> None:
    with pytest.raises(SsitabError) as info:
        parse("\tx 1 2 3 4\n", "/etc/ssitab")
    assert str(info.value).startswith("/etc/ssitab:1:2: bad node number 'x'")


def test_line_numbers_follow_newlines_only() -> None:
    # A form feed or U+2028 is not a line break for editors or `grep -n`.
    text = f"{GOOD}\f \u2028\n2 10.0.0.12 52:54:00:12:34:02 0 - bogus=1\n"
    with pytest.raises(SsitabError) as info:
        parse(text)
    assert [(p.line, p.col) for p in info.value.problems] == [(2, 35)]


def test_crlf_table(tmp_path: Path) -> None:
    path = tmp_path / "ssitab"
    path.write_bytes(b"# dos\r\n1 10.0.0.11/24 52:54:00:12:34:01 0 - hostname=n1\r\n")
    assert load(str(path)).nodes[0].hostname == "n1"


def test_huge_numbers_are_errors_not_crashes() -> None:
    digits = "9" * 5000  # int() refuses more than 4300 digits
    with pytest.raises(SsitabError) as info:
        parse(f"{digits} 10.0.0.{digits}/{digits} 52:54:00:12:34:01 0 -")
    assert [p.col for p in info.value.problems] == [1, 5002, 5002 + 7 + 5000]


def test_non_ascii_digits_and_case_folding_are_refused() -> None:
    with pytest.raises(SsitabError) as info:
        parse("\u0661 10.0.0.11 52:54:00:12:34:01 ye\u017f -")  # Arabic one, long s
    assert [p.col for p in info.value.problems] == [1, 31]


@pytest.mark.parametrize("text, expected", [
    ("52:54:00:12:34:01", "52:54:00:12:34:01"),
    ("52-54-00-AB-CD-EF", "52:54:00:ab:cd:ef"),
    ("52:54:00:12:34:01\n", None),
    ("52:54-00:12:34:01", None),
    ("52:54:00:12:34", None),
    ("5254.0012.3401", None),
])
def test_normalize_mac(text: str, expected: str | None) -> None:
    assert normalize_mac(text) == expected


@pytest.mark.parametrize("name, ok", [
    ("n3", True), ("node-1.cluster.example", True), ("3com", True), ("a" * 63, True),
    ("a" * 64, False), (".".join(["a" * 63] * 4), False), ("-n3", False), ("n3-", False),
    ("n_3", False), ("", False), ("n3.", False), ("10.0.0.5", False), ("n3\n", False),
    ('n3";', False), ("n3 deny", False), ("n3}", False),
])
def test_is_valid_hostname(name: str, ok: bool) -> None:
    assert is_valid_hostname(name) is ok


@pytest.mark.parametrize("text, expected", [
    ("/dev/sda1", BootDev(BootDevKind.PATH, "/dev/sda1")),
    ("/dev/disk/by-partlabel/ssi", BootDev(BootDevKind.PATH, "/dev/disk/by-partlabel/ssi")),
    ("LABEL=ssi boot", None),
    ('LABEL=a"b', None),
    ("LABEL=a\x1bb", None),
    ("LABEL=", None),
    ("UUID=xyz", None),
    ("PARTUUID=1234ABCD-02", BootDev(BootDevKind.PARTUUID, "1234abcd-02")),
    ("/dev/", None),
    ("/dev/sda1\n", None),
    ("/dev/../sda1", None),
    ("sda1", None),
])
def test_parse_bootdev(text: str, expected: BootDev | None) -> None:
    assert parse_bootdev(text) == expected


# --- properties ---------------------------------------------------------------------------

def outcome(text: str, fast: bool | None) -> Ssitab | list[tuple[int, int, str]]:
    try:
        return parse(text, "p") if fast is None else _parse(text, "p", fast)
    except SsitabError as e:
        assert e.problems, "an SsitabError always lists its problems"
        return [(p.line, p.col, p.message) for p in e.problems]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
@example("9" * 5000)
@example("1 10.0.0.1/99999999999999999999 52:54:00:12:34:01 0 -")
def test_any_text_gives_a_table_or_an_ssitab_error(text: str) -> None:
    result = outcome(text, None)
    assert isinstance(result, (Ssitab, list))


# Tables of valid, unique lines of which some get one broken word or a value
# copied from another line: they exercise the checks behind the tokenizer,
# which uniformly random text almost never reaches.
IP_FORMS = ["10.0.{i}.11", "10.0.{i}.12/24", "10.{i}.0.1/16", "10.0.0.{i}/31", "10.0.0.{i}/32",
            "10.0.{i}.255/23", "172.{i}.0.1/12"]
MAC_FORMS = ["52:54:00:12:34:0{i}", "52-54-00-12-34-1{i}", "52:54:00:AB:CD:2{i}",
             "52:54:00:12:34:3{i},52:54:00:12:34:4{i}", "52:54:00:12:34:5{i},52-54-00-12-34-6{i}"]
LOCAL_FORMS = ["0 -", "no -", "1 /dev/vda1", "yes LABEL=ssiboot", "YES UUID=abcd-1234",
               "1 PARTUUID=1234abcd-01"]
OPTION_FORMS = ["", "hostname=h{i}", "hostname=H{i}.cluster", "hostname=node{i}",
                "server=10.9.0.{i}", "hostname=h{i} server=10.9.0.1",
                "server=10.9.{i}.1 hostname=s{i}",
                "hostname=h{i},server=192.168.{i}.1"]
BROKEN = {
    "number": ["0", "01", "1000000", "x", "\u0661", "1"],
    "ip": ["10.0.0.0", "10.0.0.255/24", "127.0.0.1", "0.1.2.3", "224.0.0.1", "10.0.0.256",
           "10.0.0.011", "10.0.0.1/0", "10.0.0.1/33", "1.2.3", "10.0.0.15/", "10.0.1.11",
           "10.0.1.11/8"],
    "mac": ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "52:54:00:12:34",
            "52:54-00:12:34:07", ",", "52:54:00:12:34:08,52:54:00:12:34:08",
            "52:54:00:12:34:01", "52-54-00-12-34-01"],
    "local bootdev": ["2 -", "ye\u017f -", "1 -", "0 /dev/vda1", "1 sda1", "1 /dev/..",
                      "1 LABEL=", "1"],
    "options": ["hostname=-x", "hostname=10.0.0.1", "color=red", "=x", "hostname=h1",
                "hostname=H1", "hostname=node3", "hostname=a,hostname=b", "hostname=n9 extra", "x",
                "hostname=n1,", "hostname=" + "a" * 64, "server=", "server=10.0.0.01",
                "server=127.0.0.1", "server=0.0.0.0", "server=10.0.0.256", "server=host1",
                "server=10.0.0.1 server=10.0.0.1", "server=10.0.0.1,server=10.0.0.2",
                "hostname=h2 server=10.0.0.1/24", "server=\u0661.0.0.1"],
}
SEPARATORS = st.sampled_from([" ", "\t", "  ", " \t"])


@st.composite
def table_lines(draw: st.DrawFn, i: int) -> str:
    columns = {
        "number": str(i),
        "ip": draw(st.sampled_from(IP_FORMS)).format(i=i),
        "mac": draw(st.sampled_from(MAC_FORMS)).format(i=i),
        "local bootdev": draw(st.sampled_from(LOCAL_FORMS)),
        "options": draw(st.sampled_from(OPTION_FORMS)).format(i=i),
    }
    if draw(st.integers(0, 3)) == 0:
        column = draw(st.sampled_from(sorted(BROKEN)))
        columns[column] = draw(st.sampled_from(BROKEN[column]))
    words = " ".join(columns.values()).split()
    if draw(st.integers(0, 9)) == 0:
        words = words[:draw(st.integers(0, len(words)))]
    line = "".join(w + draw(SEPARATORS) for w in words).rstrip()
    line += draw(st.sampled_from(["", "", " # comment", "#", "\r", " \u00a0", "\f"]))
    return draw(SEPARATORS) + line if draw(st.booleans()) else line


@st.composite
def tables(draw: st.DrawFn) -> str:
    count = draw(st.integers(0, 6))
    return "\n".join(draw(table_lines(i)) for i in range(1, count + 1))


@pytest.mark.parametrize("column, word", [(c, w) for c in BROKEN for w in BROKEN[c]])
def test_each_broken_word_is_an_error_on_both_paths(column: str, word: str) -> None:
    first = "1 10.0.1.11 52:54:00:12:34:01 0 - hostname=h1"
    columns = {"number": "2", "ip": "10.0.2.11", "mac": "52:54:00:12:34:02",
               "local bootdev": "1 /dev/vda1", "options": "hostname=h2", column: word}
    text = "\n".join([first, " ".join(columns.values()), "3 10.0.3.11 52:54:00:12:34:03 0 -"])
    careful = outcome(text, False)
    assert isinstance(careful, list), f"{word!r} should be an error"
    assert outcome(text, True) == careful
    assert outcome(text, None) == careful


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_fast_and_careful_paths_agree(text: str) -> None:
    careful = outcome(text, False)
    assert outcome(text, True) == careful
    assert outcome(text, None) == careful
    if isinstance(careful, Ssitab):
        assert [n.line for n in careful] == [n.line for n in outcome(text, None)]  # type: ignore[union-attr]


@settings(max_examples=100)
@given(st.integers(1, 400), st.sampled_from([8, 16, 20, 24]), st.booleans())
def test_generated_valid_tables_parse_completely(count: int, prefix: int, dashes: bool) -> None:
    lines = []
    for i in range(1, count + 1):
        mac = f"52:54:00:00:{i >> 8:02x}:{i & 255:02x}"
        # Host part ...7 is neither network nor broadcast address for any of the prefixes.
        lines.append(f"{i} 10.{1 + (i >> 8)}.{i & 255}.7/{prefix} "
                     f"{mac.replace(':', '-') if dashes else mac} {i % 2} "
                     f"{'/dev/vda1' if i % 2 else '-'} hostname=h{i}")
    text = "\n".join(lines)
    table = parse(text)
    assert len(table) == count
    assert table == _parse(text, "/etc/ssitab", fast=False)
    assert [n.line for n in table] == list(range(1, count + 1))
