"""mkdhcpd.ssi under hypothesis: every backend, any table text, output parsed back.

Two kinds of input reach mkdhcpd.ssi (in-process, --no-check):

- generated valid tables, with an independent model of what they ask for (each
  node's MACs, address, hostname and boot server): the output must hold exactly those host
  statements, nothing else after the proto;
- hostile text: valid tables with words replaced by quotes, braces, semicolons,
  newlines, control and non-ASCII characters, huge words, and arbitrary text.
  mkdhcpd.ssi exits 0 or 1 (never a traceback); on 1 it prints errors only and
  writes nothing; on 0 the output holds exactly what the parser accepted.

The output is parsed back by a strict grammar of the generated part (ISC and
dnsmasq: every line after the proto must be one of the few shapes the backend
writes; Kea: the JSON document must be the proto's plus our reservations and
boot settings). A sample of generated configs also goes through the servers'
own checkers (dhcpd -t, kea-dhcp4 -t, dnsmasq --test).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from linuxrc_agent.ssitab import Ssitab, SsitabError, load
from mkinitrd_ssi.dhcp import HEADER, Format, backend
from mkinitrd_ssi.dhcp.kea import strip_comments
from mkinitrd_ssi.mkdhcpd import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROTOS = {Format.ISC: "dhcpd.proto", Format.KEA: "kea-dhcp4.proto.json",
          Format.DNSMASQ: "dnsmasq.proto"}
CHECKERS = {Format.ISC: "dhcpd", Format.KEA: "kea-dhcp4", Format.DNSMASQ: "dnsmasq"}
FORMATS = list(Format)
# How many examples each property runs (the README's fuzz figures come from these).
VALID_EXAMPLES = 200
HOSTILE_EXAMPLES = 300
CHECKER_EXAMPLES = 12

# (mac, ip, hostname, boot server or None): one host statement of a generated config.
Statement = tuple[str, str, str, str | None]


# --- generated valid tables with their own model ------------------------------------------


@dataclass(frozen=True)
class Row:
    number: int
    ip: str
    macs: tuple[str, ...]  # as written in the table
    hostname: str | None  # hostname= option, if any
    local: str  # the local flag as written
    bootdev: str
    server: str | None = None  # server= option, if any

    def statements(self) -> list[Statement]:
        name = self.hostname or f"node{self.number}"
        return [(m.replace("-", ":").lower(), self.ip, name, self.server) for m in self.macs]


_LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]|[a-z]", fullmatch=True)
# Boot servers (ssitab server=): on the nodes' subnet, on another, repeated across nodes.
_SERVER = st.sampled_from(["10.77.0.2", "10.77.0.3", "10.77.1.1", "192.168.9.9"])
_HOSTNAME = st.lists(_LABEL, min_size=1, max_size=3).map(".".join).filter(
    lambda name: re.fullmatch(r"node[0-9]+", name) is None)


@st.composite
def mac_spelling(draw: st.DrawFn, value: int) -> str:
    octets = [(value >> (8 * i)) & 0xFF for i in range(5, -1, -1)]
    sep = draw(st.sampled_from([":", "-"]))
    upper = draw(st.booleans())
    text = sep.join(f"{o:02x}" for o in octets)
    return text.upper() if upper else text


@st.composite
def valid_tables(draw: st.DrawFn, max_nodes: int = 12) -> tuple[str, list[Row]]:
    count = draw(st.integers(1, max_nodes))
    numbers = draw(st.lists(st.integers(1, 999_999), min_size=count, max_size=count,
                            unique=True))
    hosts = draw(st.lists(st.integers(1, 254), min_size=count, max_size=count, unique=True))
    nics = draw(st.lists(st.integers(1, 3), min_size=count, max_size=count))
    # Unicast, not all-zero: an even first octet, some bits set in the rest.
    macs = draw(st.lists(st.tuples(st.integers(0, 127).map(lambda o: o * 2),
                                   st.integers(1, (1 << 40) - 1))
                         .map(lambda t: (t[0] << 40) | t[1]),
                         min_size=sum(nics), max_size=sum(nics), unique=True))
    names = draw(st.lists(st.one_of(st.none(), _HOSTNAME), min_size=count, max_size=count))
    servers = draw(st.lists(st.one_of(st.none(), _SERVER), min_size=count, max_size=count))
    rows: list[Row] = []
    used: set[str] = set()  # explicit names; defaults (node<N>) never collide, see _HOSTNAME
    at = 0
    for number, host, n, name, server in zip(numbers, hosts, nics, names, servers,
                                             strict=True):
        if name is not None and name.lower() in used:
            name = None
        if name is not None:
            used.add(name.lower())
        spelled = tuple(draw(mac_spelling(v)) for v in macs[at:at + n])
        at += n
        local = draw(st.sampled_from(["0", "no", "NO", "1", "yes", "Yes"]))
        boot = draw(st.sampled_from(["/dev/vda1", "LABEL=ssiboot", "UUID=ABCD-1234"])) \
            if local.lower() in ("1", "yes") else "-"
        rows.append(Row(number, f"10.77.0.{host}", spelled, name, local, boot, server))
    lines = ["# generated by hypothesis"]
    for row in rows:
        pad = draw(st.sampled_from([" ", "\t", "   "]))
        prefix = draw(st.sampled_from(["", "/24"]))
        words = [str(row.number), row.ip + prefix, ",".join(row.macs), row.local, row.bootdev]
        options = [f"hostname={row.hostname}"] if row.hostname else []
        options += [f"server={row.server}"] if row.server else []
        if options:
            # Both orders, and the comma form: the parser takes each.
            options = draw(st.permutations(options))
            words += [",".join(options)] if draw(st.booleans()) else options
        comment = draw(st.sampled_from(["", "  # a comment", "\t#"]))
        lines.append(pad.join(words) + comment)
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "   ", "# between", "\t"])))
    return "\n".join(lines) + "\n", rows


# --- hostile input ---------------------------------------------------------------------------

HOSTILE_WORDS = [
    '"', "'", "{", "}", ";", "};", "\\", "#", ",", "=", "host evil { }", "n3;deny",
    'x"y', "a\\b", "n3\x00", "\x1b[2J", "é", "ｎ３", "٣", "1e3", "0x10", "-1", "1000000",
    "52:54:00:12:34:01;", "52:54:00:12:34:01\"", "10.77.0.1;", "10.77.0.1/24;",
    "10.77.0.256", "010.77.0.1", "10.77.0.0", "10.77.0.255", "224.0.0.1", "::1",
    "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "00:00:00:00:00:00",
    "hostname=a;b", 'hostname="x"', "hostname=n3,hostname=n4", "hostname=}", "hostname=",
    "hostname=1d", "hostname=12m", "hostname=infinite", "hostname=52-54-00",
    "hostname=" + "a" * 64, "hostname=" + ".".join(["a" * 63] * 5),
    "filename=evil", "next-server=1.2.3.4", "server=10.0.0.1;", "server=10.0.0.1}",
    'server="10.0.0.1"', "server=10.0.0.1,server=10.0.0.2", "server=set:x", "server=",
    "server=10.77.0.2 server=10.77.0.2", "server=ssi-ipxe",
    "dhcp-host=evil", "\r", "\u2028", "\x0c",
    "x" * 10_000, "9" * 5000,
]


@st.composite
def hostile_tables(draw: st.DrawFn) -> str:
    text, _rows = draw(valid_tables(max_nodes=5))
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(lines) - 1))
        words = lines[index].split()
        if not words:
            continue
        how = draw(st.sampled_from(["replace", "append", "splice", "text"]))
        bad = draw(st.one_of(st.sampled_from(HOSTILE_WORDS), st.text(max_size=20)))
        col = draw(st.integers(0, len(words) - 1))
        if how == "replace":
            words[col] = bad
        elif how == "append":
            words.append(bad)
        elif how == "splice":
            at = draw(st.integers(0, len(words[col])))
            words[col] = words[col][:at] + bad + words[col][at:]
        else:
            lines.insert(index, bad)
            continue
        lines[index] = " ".join(words)
    return "\n".join(lines)


# --- running mkdhcpd.ssi in-process ----------------------------------------------------------


@dataclass
class Outcome:
    rc: int
    err: str
    output: str | None  # the generated file, if one was written
    proto: str
    table: Ssitab | SsitabError  # what the parser makes of the same file (the oracle)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dhcpprops")


@contextlib.contextmanager
def fresh_dir(base: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=base) as d:
        yield Path(d)


def mkdhcpd(base: Path, fmt: Format, text: str) -> Outcome:
    with fresh_dir(base) as d:
        ssitab, proto, out = d / "ssitab", d / "proto", d / "out"
        ssitab.write_bytes(text.encode("utf-8", "surrogateescape"))
        proto_text = (EXAMPLES / PROTOS[fmt]).read_text()
        proto.write_text(proto_text)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["--format", fmt.value, "--ssitab", str(ssitab), "--proto", str(proto),
                       "-o", str(out), "--no-check"])
        output = out.read_text() if out.exists() else None
        try:
            table: Ssitab | SsitabError = load(str(ssitab))
        except SsitabError as e:
            table = e
    return Outcome(rc, err.getvalue(), output, proto_text, table)


# --- parsing the output back -----------------------------------------------------------------

_IP = r"(?:\d{1,3}\.){3}\d{1,3}"
_MAC = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
_FILE = r"[^\"\\;,# ]+"
ISC_LINES = [re.compile(p) for p in (
    r"# .*", r"option ssi-client-arch code 93 = unsigned integer 16;", r"group \{",
    rf"  next-server {_IP};",
    r'  if exists user-class and option user-class = "iPXE" \{', rf'    filename "{_FILE}";',
    r"  \} elsif option ssi-client-arch = 00:07 or option ssi-client-arch = 00:09 \{",
    r"  \} else \{", r"  \}", r"\}",
)]
# The boot file by client: iPXE (any firmware), UEFI x86-64 (option 93 = 7 or 9), BIOS PXE.
BOOT_FILES = ["ssi.ipxe", "shimx64.efi", "pxelinux.0"]
ISC_HOST = re.compile(rf'  host (ssi-node\d+(?:-\d+)?) \{{ hardware ethernet ({_MAC}); '
                      rf'fixed-address ({_IP}); option host-name "({_NAME})"; '
                      rf'(?:next-server ({_IP}); )?\}}')
DNSMASQ_LINES = [re.compile(p) for p in (
    r"# .*", r"dhcp-userclass=set:ssi-ipxe,iPXE", r"dhcp-match=set:ssi-efi64,option:client-arch,7",
    r"dhcp-match=set:ssi-efi64,option:client-arch,9",
)]
# One dhcp-boot line per kind of client (iPXE; else UEFI x86-64; else BIOS PXE), the
# three generic ones first, then three per boot server, tagged with it.
DNSMASQ_BOOT = re.compile(rf"dhcp-boot=(?:tag:(ssi-srv-[0-9-]+),)?(tag:ssi-ipxe|tag:!ssi-ipxe,"
                          rf"tag:ssi-efi64|tag:!ssi-ipxe,tag:!ssi-efi64),({_FILE})(?:,,({_IP}))?")
DNSMASQ_BOOT_KINDS = dict(zip(("tag:ssi-ipxe", "tag:!ssi-ipxe,tag:ssi-efi64",
                               "tag:!ssi-ipxe,tag:!ssi-efi64"), BOOT_FILES, strict=True))
DNSMASQ_HOST = re.compile(rf"dhcp-host=((?:{_MAC},)+)(?:set:(ssi-srv-[0-9-]+),)?({_IP}),"
                          rf"({_NAME}),infinite")


def generated_part(output: str, proto: str) -> list[str]:
    assert output.startswith(proto), "the proto is not copied verbatim"
    rest = output[len(proto):]
    if proto and not proto.endswith("\n"):
        assert rest.startswith("\n")
        rest = rest[1:]
    assert rest.startswith(HEADER)
    assert rest.endswith("\n")
    return rest[:-1].split("\n")


def statements_isc(output: str, proto: str) -> list[Statement]:
    found: list[Statement] = []
    labels: list[str] = []
    lines = generated_part(output, proto)
    for line in lines:
        m = ISC_HOST.fullmatch(line)
        if m:
            labels.append(m.group(1))
            found.append((m.group(2), m.group(3), m.group(4), m.group(5)))
        else:
            assert any(p.fullmatch(line) for p in ISC_LINES), f"unexpected statement {line!r}"
    assert len(set(labels)) == len(labels), "duplicate host declarations"
    assert [line.split('"')[1] for line in lines if line.startswith("    filename ")] == BOOT_FILES
    return found


def statements_dnsmasq(output: str, proto: str) -> list[Statement]:
    found: list[Statement] = []
    servers: dict[str, str] = {}  # tag -> address of its dhcp-boot lines
    kinds: Counter[tuple[str | None, str]] = Counter()  # (server tag, kind): dhcp-boot lines
    for line in generated_part(output, proto):
        m = DNSMASQ_HOST.fullmatch(line)
        b = DNSMASQ_BOOT.fullmatch(line)
        if m:
            tag = m.group(2)
            server = None if tag is None else servers[tag]  # KeyError: tag with no lines
            found += [(mac, m.group(3), m.group(4), server) for mac in m.group(1).split(",")[:-1]]
        elif b:
            tag, kind, file, address = b.groups()
            assert file == DNSMASQ_BOOT_KINDS[kind], line
            if tag is None:
                assert not servers, "a generic dhcp-boot after a server's"
            else:
                # dnsmasq takes the last matching dhcp-boot: ours must follow the generic ones.
                assert sum(kinds[None, k] for k in DNSMASQ_BOOT_KINDS) == 3, \
                    "a server's dhcp-boot before the generic ones"
                assert address is not None
                assert servers.setdefault(tag, address) == address
            kinds[tag, kind] += 1
        else:
            assert any(p.fullmatch(line) for p in DNSMASQ_LINES), f"unexpected statement {line!r}"
    assert all(kinds[tag, k] == 1 for tag in (None, *servers) for k in DNSMASQ_BOOT_KINDS), kinds
    return found


def statements_kea(output: str, proto: str) -> list[Statement]:
    doc = json.loads(output)  # strict JSON: no comments, nothing after the document
    before = json.loads(strip_comments(proto))
    dhcp4, old = doc["Dhcp4"], before["Dhcp4"]
    # Dhcp4 gains exactly two keys' worth of changes: our class and ip-reservations-unique.
    assert set(dhcp4) - set(old) <= {"ip-reservations-unique", "client-classes"}
    assert dhcp4["ip-reservations-unique"] is False
    for key in set(old) - {"subnet4", "client-classes"}:
        assert dhcp4[key] == old[key], key
    assert [c for c in dhcp4["client-classes"] if c.get("name", "").startswith("ssi-")] == [
        {"name": "ssi-ipxe", "test": "option[77].hex == 'iPXE'", "boot-file-name": "ssi.ipxe"},
        {"name": "ssi-efi64", "test": "(option[93].hex == 0x0007 or option[93].hex == 0x0009) "
         "and not member('ssi-ipxe')", "boot-file-name": "shimx64.efi"}]
    found: list[Statement] = []
    assert len(dhcp4["subnet4"]) == len(old["subnet4"])
    for new_sub, old_sub in zip(dhcp4["subnet4"], old["subnet4"], strict=True):
        net = ipaddress.IPv4Network(new_sub["subnet"], strict=False)
        mine = new_sub["reservations"][len(old_sub.get("reservations", [])):]
        extra = set(new_sub) - set(old_sub) - {"reservations"}
        assert extra <= ({"boot-file-name", "next-server"} if mine else set()), extra
        for key in set(old_sub) - {"reservations"}:
            assert new_sub[key] == old_sub[key], key
        for r in mine:
            assert set(r) - {"next-server"} == {"hw-address", "ip-address", "hostname"}, r
            assert ipaddress.IPv4Address(r["ip-address"]) in net
            found.append((r["hw-address"], r["ip-address"], r["hostname"],
                          r.get("next-server")))
    return found


PARSE_BACK = {Format.ISC: statements_isc, Format.KEA: statements_kea,
              Format.DNSMASQ: statements_dnsmasq}


def expected_from_table(table: Ssitab) -> list[Statement]:
    return [(mac, n.ip, n.hostname, n.server) for n in table for mac in n.macs]


def check_clean_failure(outcome: Outcome) -> None:
    assert outcome.output is None, "a failed run wrote a file"
    lines = outcome.err.splitlines()
    assert lines, "failed without a message"
    assert all(line.startswith("mkdhcpd.ssi: ") for line in lines), outcome.err
    assert "Traceback" not in outcome.err
    # What the table held is quoted with its control characters escaped.
    assert all(line.isprintable() for line in lines), outcome.err


_MISREAD = "would be misread by dnsmasq"



def examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# --- the properties --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.value for f in FORMATS])
@examples(VALID_EXAMPLES)
@given(table=valid_tables())
def test_valid_table_gives_exactly_its_statements(workdir: Path, fmt: Format,
                                                   table: tuple[str, list[Row]]) -> None:
    text, rows = table
    outcome = mkdhcpd(workdir, fmt, text)
    want = [s for row in rows for s in row.statements()]
    if fmt is Format.DNSMASQ and outcome.rc == 1 and _MISREAD in outcome.err:
        check_clean_failure(outcome)
        return
    assert outcome.rc == 0, outcome.err
    assert outcome.output is not None
    assert Counter(PARSE_BACK[fmt](outcome.output, outcome.proto)) == Counter(want)


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.value for f in FORMATS])
@examples(HOSTILE_EXAMPLES)
@given(text=st.one_of(hostile_tables(), st.text(max_size=300)))
def test_any_text_gives_a_clean_error_or_exactly_the_tables_statements(
        workdir: Path, fmt: Format, text: str) -> None:
    outcome = mkdhcpd(workdir, fmt, text)
    assert outcome.rc in (0, 1), outcome.err
    if outcome.rc == 1:
        check_clean_failure(outcome)
        if isinstance(outcome.table, SsitabError):
            assert all(f"mkdhcpd.ssi: {p}" in outcome.err for p in outcome.table.problems)
        else:  # a table the parser takes, refused by the backend: say which and why
            assert _MISREAD in outcome.err or "no subnet4" in outcome.err, outcome.err
        return
    assert outcome.output is not None and isinstance(outcome.table, Ssitab)
    assert Counter(PARSE_BACK[fmt](outcome.output, outcome.proto)) == \
        Counter(expected_from_table(outcome.table))


# --- the servers' own checkers on a sample ---------------------------------------------------


def checker_ok(fmt: Format, config: str, base: Path) -> tuple[bool, str]:
    with fresh_dir(base) as d:
        path = d / "generated.conf"
        path.write_text(config)
        result = subprocess.run(backend(fmt).check(str(path)), capture_output=True, timeout=60,
                                check=False)
    return result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.value for f in FORMATS])
@examples(CHECKER_EXAMPLES)
@given(text=st.one_of(valid_tables().map(lambda t: t[0]), hostile_tables()))
def test_real_checker_accepts_generated_configs(workdir: Path, fmt: Format, text: str) -> None:
    if shutil.which(CHECKERS[fmt]) is None:
        pytest.skip(f"{CHECKERS[fmt]} not installed (make deps installs it)")
    outcome = mkdhcpd(workdir, fmt, text)
    assume(outcome.rc == 0)
    assert outcome.output is not None
    ok, detail = checker_ok(fmt, outcome.output, workdir)
    assert ok, f"{CHECKERS[fmt]} rejected:\n{detail[-2000:]}\n--- config ---\n{outcome.output}"
