"""The admin side's block devices: bootdev through udev's database or the agent's probe,
what a device holds, and who uses it. No root: devices are files in a fake tree
(tests/unit/test_agent_partitions.FakeSystem); udev's database is read as udev writes it.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from linuxrc_agent.partitions import BlockDev, matches
from linuxrc_agent.ssitab import BootDev, BootDevKind, parse_bootdev
from mkinitrd_ssi.local import blockdev
from mkinitrd_ssi.local import node as localnode
from tests.unit.test_agent_partitions import FakeSystem

MiB = 1 << 20
DEV = BlockDev("sdb1", 8, 17, 64 * MiB, "/dev/sdb1")


def spec(text: str) -> BootDev:
    parsed = parse_bootdev(text)
    assert parsed is not None
    return parsed


# Properties as udevadm info --query=property shows them for real devices (trimmed).
EXT4 = {"DEVTYPE": "partition", "ID_FS_TYPE": "ext4", "ID_FS_LABEL": "ssi_boot",
        "ID_FS_LABEL_ENC": "ssi\\x2fboot", "ID_FS_UUID": "c9970b0d-b17c-47d3-af3a-b0a49d552d67",
        "ID_FS_UUID_ENC": "c9970b0d-b17c-47d3-af3a-b0a49d552d67",
        "ID_PART_ENTRY_UUID": "5b2e7c1a-01"}
VFAT = {"DEVTYPE": "partition", "ID_FS_TYPE": "vfat", "ID_FS_LABEL": "SSIBOOT",
        "ID_FS_LABEL_ENC": "SSIBOOT", "ID_FS_UUID": "A1B2-C3D4", "ID_FS_UUID_ENC": "A1B2-C3D4",
        "ID_PART_ENTRY_UUID": "5b2e7c1a-02"}
DISK = {"DEVTYPE": "disk", "ID_PART_TABLE_TYPE": "dos", "ID_PART_TABLE_UUID": "5b2e7c1a"}


@pytest.mark.parametrize("props,text,found", [
    (EXT4, "LABEL=ssi/boot", True),  # the label as blkid read it, from the _ENC form
    (EXT4, "LABEL=ssi_boot", False),  # udev's blank-free spelling is not the label
    (EXT4, "LABEL=SSI/BOOT", False),  # ext4 labels are case-sensitive
    (EXT4, "UUID=C9970B0D-B17C-47D3-AF3A-B0A49D552D67", True),
    (EXT4, "PARTUUID=5b2e7c1a-01", True),
    (VFAT, "LABEL=ssiboot", True),  # FAT: any case, as the agent matches
    (VFAT, "UUID=a1b2-c3d4", True),
    (VFAT, "PARTUUID=5b2e7c1a-01", False),
    (DISK, "PARTUUID=5b2e7c1a-01", False),
    ({"DEVTYPE": "partition"}, "LABEL=ssiboot", False),
])
def test_udev_properties_match_as_the_agent_matches(props: dict[str, str], text: str,
                                                    found: bool) -> None:
    assert matches(blockdev.from_udev(DEV, props), spec(text)) is found


def test_udev_decode_keeps_utf8_and_plain_properties() -> None:
    assert blockdev.udev_decode({"ID_FS_LABEL_ENC": "b\\x20\\x5cé"}, "ID_FS_LABEL") == "b \\é"
    assert blockdev.udev_decode({"ID_FS_LABEL": "plain"}, "ID_FS_LABEL") == "plain"
    assert blockdev.udev_decode({}, "ID_FS_LABEL") == ""
    disk = blockdev.from_udev(DEV, DISK)
    assert disk.table == "dos" and disk.fs is None and disk.partuuid == ""


# ---------------------------------------------------------------- is udev running?


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # AF_UNIX paths are short: keep the directory near the root of tmp.
    path = Path(f"/tmp/ssit-udev-{os.getpid()}")
    path.mkdir()
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=True)


def test_no_control_socket_means_no_udev(run_dir: Path) -> None:
    assert blockdev.udev_unavailable(run_dir) == f"no {run_dir}/control"


def test_a_socket_left_by_a_stopped_udevd_is_not_udev(run_dir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(run_dir / "control"))
    stale.close()  # the file stays, nobody listens: as after `udevd` exits
    (run_dir / "data").mkdir()
    (run_dir / "data/b7:0").write_text("E:ID_FS_LABEL=stale\n")
    assert "nothing listens" in (blockdev.udev_unavailable(run_dir) or "")


def test_a_listening_udev_with_a_database(run_dir: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as control:
        control.bind(str(run_dir / "control"))
        control.listen()
        assert blockdev.udev_unavailable(run_dir) == f"{run_dir}/data is empty"
        (run_dir / "data").mkdir()
        assert blockdev.udev_unavailable(run_dir) == f"{run_dir}/data is empty"
        (run_dir / "data/b7:0").write_text("E:ID_FS_TYPE=ext4\n")
        assert blockdev.udev_unavailable(run_dir) is None


def test_pyudev_lists_this_machines_block_devices_in_kernel_order() -> None:
    """pyudev's own objects over the real sysfs: every device of /proc/partitions, with
    its numbers (no udev database here, so no ID_FS_* properties: nothing matches)."""
    scanner = blockdev.Scanner(make_nodes=False)
    kernel = [(d.name, d.major, d.minor) for d in scanner.devices()]
    listed = blockdev._in_kernel_order(blockdev._udev_devices(), scanner)
    assert [(p.dev.name, p.dev.major, p.dev.minor) for p in listed][:len(kernel)] == kernel
    assert all(p.dev.path == f"/dev/{p.dev.name}" for p in listed if "!" not in p.dev.name)


# ---------------------------------------------------------------- where udev does not run


@pytest.fixture
def system(tmp_path: Path) -> FakeSystem:
    """sda: ext4 LABEL=ssiboot; sdb: vfat SSIBOOT; sdc: ext4 LABEL=ssiboot again."""
    fake = FakeSystem(tmp_path / "sys")
    for name, minor, argv in (("sda", 0, ["mkfs.ext4", "-q", "-L", "ssiboot"]),
                              ("sdb", 16, ["mkfs.vfat", "-n", "SSIBOOT", "-i", "a1b2c3d4"]),
                              ("sdc", 32, ["mkfs.ext4", "-q", "-L", "ssiboot"])):
        image = tmp_path / f"{name}.img"
        os.truncate(os.open(image, os.O_CREAT | os.O_WRONLY, 0o600), 8 * MiB)
        subprocess.run([*argv, str(image)], check=True, capture_output=True)
        fake.add(name, 8, minor, image)
    return fake


def test_without_udev_the_agents_probe_finds_the_bootdev(
        system: FakeSystem, run_dir: Path, ssi_log: pytest.LogCaptureFixture) -> None:
    def find(text: str) -> Path | None:
        return blockdev.find(spec(text), run_dir=run_dir, scanner=system.scanner())

    assert find("UUID=A1B2-C3D4") == system.dev / "sdb"
    assert f"no {run_dir}/control: probing /proc/partitions and superblocks" in ssi_log.text
    assert "found through the agent's probe" in ssi_log.text
    assert find("LABEL=SSIBOOT") == system.dev / "sdb"  # vfat: any case
    assert find("LABEL=nosuch") is None
    ssi_log.clear()
    # Three devices with one label (FAT's in any case): the first in /proc/partitions,
    # as at boot, and a warning.
    assert find("LABEL=ssiboot") == system.dev / "sda"
    assert "3 devices match" in ssi_log.text and "as the agent does at boot" in ssi_log.text


def test_a_path_bootdev_must_be_a_block_device(tmp_path: Path) -> None:
    assert blockdev.find(spec("/dev/null")) is None  # a character device
    assert localnode.find_bootdev(BootDev(BootDevKind.PATH, "/dev/nosuch-ssit")) is None
    assert blockdev.find(spec("LABEL=nosuch-ssit-label"), run_dir=tmp_path) is None


# ---------------------------------------------------------------- before writing


def test_contents_names_what_provisioning_would_destroy(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    os.truncate(os.open(blank, os.O_CREAT | os.O_WRONLY, 0o600), 16 * MiB)
    assert blockdev.contents(blank) is None
    fs = tmp_path / "fs.img"
    fs.write_bytes(blank.read_bytes())
    subprocess.run(["mkfs.ext4", "-q", "-L", "data", str(fs)], check=True)
    assert blockdev.contents(fs) == "ext4 LABEL=data"
    table = tmp_path / "table.img"
    table.write_bytes(blank.read_bytes())
    subprocess.run(["sfdisk", "-q", str(table)], input=b"label: dos\nsize=4M\nsize=4M\n",
                   check=True)
    assert blockdev.contents(table) == ("a dos partition table (partition 1: no filesystem, "
                                        "4.0 MiB; partition 2: no filesystem, 4.0 MiB)")
    luks_like = tmp_path / "luks.img"
    luks_like.write_bytes(b"LUKS\xba\xbe" + bytes(16 * MiB - 6))
    assert "data the agent's probe does not recognise" in (blockdev.contents(luks_like) or "")


def test_nobody_uses_a_plain_file(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    assert blockdev.users(image) == []
