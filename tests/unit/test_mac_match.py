"""Which node am I: NIC discovery from a sysfs tree and matching against ssitab."""

from __future__ import annotations

from pathlib import Path

import pytest

from linuxrc_agent import cmdline
from linuxrc_agent.mac_match import (
    AmbiguousNode,
    Nic,
    UnknownNode,
    local_nics,
    match,
    unknown_banner,
)
from linuxrc_agent.ssitab import parse

TABLE = parse(
    "1 10.77.0.11/24 52:54:00:12:34:01 0 -\n"
    "2 10.77.0.12/24 52:54:00:12:34:02,52:54:00:12:34:22 0 - hostname=two\n"
    "3 10.77.0.13/24 52:54:00:12:34:03 1 LABEL=boot\n",
    "ssitab",
)


def fake_net(root: Path, name: str, mac: str, *, physical: bool = True, kind: str = "1") -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "address").write_text(mac + "\n")
    (d / "type").write_text(kind + "\n")
    if physical:
        (d / "device").mkdir()


def test_local_nics_skips_loopback_virtual_and_non_ethernet(tmp_path: Path) -> None:
    fake_net(tmp_path, "lo", "00:00:00:00:00:00", physical=False, kind="772")
    fake_net(tmp_path, "br0", "52:54:00:aa:aa:aa", physical=False)
    fake_net(tmp_path, "ib0", "52:54:00:bb:bb:bb", kind="32")
    fake_net(tmp_path, "eth1", "52:54:00:12:34:22")
    fake_net(tmp_path, "eth0", "52:54:00:12:34:99")
    assert local_nics(str(tmp_path)) == [Nic("eth0", "52:54:00:12:34:99"),
                                         Nic("eth1", "52:54:00:12:34:22")]


def test_missing_sysfs_means_no_nics(tmp_path: Path) -> None:
    assert local_nics(str(tmp_path / "absent")) == []


def test_second_nic_listed_finds_node() -> None:
    ident = match(TABLE, [Nic("eth0", "52:54:00:99:99:99"), Nic("eth1", "52:54:00:12:34:22")])
    assert (ident.node.number, ident.nic.name, ident.node.hostname) == (2, "eth1", "two")


def test_first_listed_mac_is_preferred_interface() -> None:
    nics = [Nic("eth0", "52:54:00:12:34:22"), Nic("eth1", "52:54:00:12:34:02")]
    assert match(TABLE, nics).nic.name == "eth1"


def test_bootif_chooses_between_listed_nics() -> None:
    nics = [Nic("eth0", "52:54:00:12:34:02"), Nic("eth1", "52:54:00:12:34:22")]
    assert match(TABLE, nics, bootif="52:54:00:12:34:22").nic.name == "eth1"


def test_bootif_not_local_is_ignored() -> None:
    nics = [Nic("eth0", "52:54:00:12:34:01")]
    assert match(TABLE, nics, bootif="52:54:00:12:34:02").node.number == 1


def test_macs_of_two_nodes_is_an_error_not_a_guess() -> None:
    with pytest.raises(AmbiguousNode, match=r"node 1.*node 3"):
        match(TABLE, [Nic("eth0", "52:54:00:12:34:03"), Nic("eth1", "52:54:00:12:34:01")])


def test_unknown_node() -> None:
    nics = [Nic("eth0", "52:54:00:12:34:99")]
    with pytest.raises(UnknownNode) as info:
        match(TABLE, nics)
    assert info.value.nics == nics


def test_banner_line_pastes_into_ssitab() -> None:
    nics = [Nic("eth0", "52:54:00:12:34:99"), Nic("eth1", "52:54:00:12:34:98")]
    lines = unknown_banner(TABLE, nics)
    assert any("eth0" in line and "52:54:00:12:34:99" in line for line in lines)
    paste = next(line for line in lines if "52:54:00:12:34:99,52:54:00:12:34:98" in line)
    extended = parse(TABLE_TEXT + paste.strip() + "\n", "ssitab")
    assert extended.by_number()[4].ip == "10.77.0.14"
    assert any("mkinitrd.ssi" in line for line in lines)


TABLE_TEXT = "".join(
    f"{n.number} {n.ip}/{n.prefix} {','.join(n.macs)} {int(n.local)} {n.bootdev or '-'}\n"
    for n in TABLE
)


@pytest.mark.parametrize(("text", "mac"), [
    ("01-52-54-00-12-34-01", "52:54:00:12:34:01"),
    ("52:54:00:12:34:01", "52:54:00:12:34:01"),
    ("52-54-00-12-34-0A", "52:54:00:12:34:0a"),
    ("garbage", None),
    ("01-52-54-00-12", None),
])
def test_bootif_forms(text: str, mac: str | None) -> None:
    # The agent reads both through its command-line parser (PXELINUX's form, and ours).
    key = "BOOTIF" if text.startswith("01-") else "ssi.bootif"
    assert cmdline.parse(f"{key}={text}").bootif == mac
