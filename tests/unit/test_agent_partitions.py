"""Block devices from a fake /proc/partitions, /dev and sysfs: nodes, specs, waiting.

The "devices" are regular files (a GPT disk image and its partitions cut
out of it), so resolving LABEL=, UUID= and PARTUUID= runs the real probing
code without root or loop devices.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from linuxrc_agent.partitions import Scanner, _guess_parent, resolve, wait_for
from linuxrc_agent.probe import partition_table
from linuxrc_agent.ssitab import BootDev, BootDevKind, parse_bootdev

UUID = "0b9a4b1e-1111-4222-8333-944455556666"
MiB = 1 << 20


def _run(*argv: str, stdin: str | None = None) -> None:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} not installed (make deps)")
    subprocess.run(argv, check=True, capture_output=True, text=True, input=stdin)


class FakeSystem:
    """/proc/partitions, /dev and /sys/class/block under one temp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc = root / "partitions"
        self.dev = root / "dev"
        self.sys = root / "sys"
        self.dev.mkdir(parents=True)
        self.partuuids: dict[int, str] = {}
        (self.sys / "class" / "block").mkdir(parents=True)
        self.lines: list[str] = []
        self.write()

    def write(self) -> None:
        self.proc.write_text("major minor  #blocks  name\n\n" + "".join(self.lines))

    def add(self, name: str, major: int, minor: int, content: bytes | Path,
            parent: str | None = None, number: int = 0) -> None:
        path = self.dev / name
        if isinstance(content, Path):
            shutil.copyfile(content, path)
        else:
            path.write_bytes(content)
        self.lines.append(f" {major:4} {minor:7} {path.stat().st_size // 1024:10} {name}\n")
        self.write()
        # sysfs: /sys/devices/virtual/block/DISK[/PART], linked from /sys/class/block/NAME.
        devdir = self.sys / "devices" / "virtual" / "block" / (parent or name)
        if parent:
            devdir = devdir / name
            devdir.mkdir(parents=True)
            (devdir / "partition").write_text(f"{number}\n")
        else:
            devdir.mkdir(parents=True)
        (self.sys / "class" / "block" / name).symlink_to(devdir)

    def scanner(self, sysfs: bool = True) -> Scanner:
        sys_block = self.sys / "class" / "block" if sysfs else self.root / "nosys"
        return Scanner(str(self.proc), str(self.dev), str(sys_block), make_nodes=False)


@pytest.fixture
def gpt_system(tmp_path: Path) -> FakeSystem:
    """vda: a GPT disk; vda1 plain, vda2 ext4 LABEL=ssiroot UUID=UUID; vdb: whole-disk vfat."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")
    os.truncate(disk, 64 * MiB)
    _run("sfdisk", "-q", str(disk), stdin="label: gpt\nsize=8M, type=L\nsize=40M, type=L\n")
    table = partition_table(str(disk))
    assert table is not None
    p1, p2 = table.partitions
    part2 = tmp_path / "p2.img"
    part2.write_bytes(b"")
    os.truncate(part2, p2.size)
    _run("mkfs.ext4", "-q", "-F", "-L", "ssiroot", "-U", UUID, str(part2))
    fat = tmp_path / "fat.img"
    fat.write_bytes(b"")
    os.truncate(fat, 16 * MiB)
    _run("mkfs.vfat", "-n", "SSIBOOT", "-i", "a1b2c3d4", str(fat))
    system = FakeSystem(tmp_path / "sys")
    system.add("vda", 254, 0, disk)
    system.add("vda1", 254, 1, disk.read_bytes()[p1.start:p1.start + p1.size], "vda", 1)
    system.add("vda2", 254, 2, part2, "vda", 2)
    system.add("vdb", 254, 16, fat)
    system.partuuids = {p.number: p.partuuid for p in table.partitions}
    return system


def test_devices_from_proc_partitions(gpt_system: FakeSystem) -> None:
    devs = gpt_system.scanner().devices()
    assert [(d.name, d.major, d.minor) for d in devs] == \
        [("vda", 254, 0), ("vda1", 254, 1), ("vda2", 254, 2), ("vdb", 254, 16)]
    assert devs[0].size == 64 * MiB
    assert devs[2].path == f"{gpt_system.dev}/vda2"


def test_probed_devices(gpt_system: FakeSystem) -> None:
    probed = {p.dev.name: p for p in gpt_system.scanner().probed()}
    assert probed["vda"].table == "gpt" and probed["vda"].fs is None
    assert probed["vda1"].fs is None
    assert probed["vda2"].fs is not None and probed["vda2"].fs.label == "ssiroot"
    assert probed["vda2"].partuuid == gpt_system.partuuids[2]
    assert probed["vdb"].fs is not None and probed["vdb"].fs.uuid == "A1B2-C3D4"
    text = probed["vda2"].describe()
    assert "ext4" in text and "LABEL=ssiroot" in text and f"UUID={UUID}" in text
    assert "PARTUUID=" in text and "(254:2, 40.0 MiB)" in text


@pytest.mark.parametrize("sysfs", [True, False])
def test_resolve(gpt_system: FakeSystem, sysfs: bool) -> None:
    s = gpt_system.scanner(sysfs)
    partuuid = gpt_system.partuuids[2]

    def name(spec: str) -> str | None:
        found = resolve(spec, s)
        return found.dev.name if found else None

    assert name("LABEL=ssiroot") == "vda2"
    assert name("LABEL=SSIROOT") is None  # ext4 labels are case-sensitive, as blkid's
    assert name(f"UUID={UUID}") == "vda2"
    assert name(f"UUID={UUID.upper()}") == "vda2"
    assert name(f"PARTUUID={partuuid}") == "vda2"
    assert name(f"PARTUUID={partuuid.upper()}") == "vda2"
    assert name("UUID=a1b2-c3d4") == "vdb"
    assert name("LABEL=SSIBOOT") == "vdb"
    assert name("LABEL=ssiboot") == "vdb"  # FAT stores labels upper-cased
    assert name("/dev/vda1") == "vda1"
    assert name("/dev/vdz") is None
    assert name("LABEL=nosuch") is None
    assert name("garbage") is None


def test_node_under_another_name_matches_by_number(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    system = FakeSystem(tmp_path)
    system.add("vda", 254, 0, b"\0" * 4096)
    alias = tmp_path / "rootdisk"
    os.mknod(alias, stat.S_IFBLK | 0o600, os.makedev(254, 0))
    found = system.scanner().find(BootDev(BootDevKind.PATH, str(alias)))
    assert [p.dev.name for p in found] == ["vda"]


def test_make_nodes(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    system = FakeSystem(tmp_path)
    system.lines = [" 254 1 1024 vda1\n", " 104 0 2048 cciss!c0d0\n"]
    system.write()
    s = Scanner(str(system.proc), str(system.dev), str(system.sys), make_nodes=True)
    s.devices()
    st = os.stat(system.dev / "vda1")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(254, 1)
    assert stat.S_ISBLK(os.stat(system.dev / "cciss" / "c0d0").st_mode)
    # A stale node with the wrong numbers is replaced.
    os.unlink(system.dev / "vda1")
    os.mknod(system.dev / "vda1", stat.S_IFBLK | 0o600, os.makedev(8, 1))
    s.devices()
    assert os.stat(system.dev / "vda1").st_rdev == os.makedev(254, 1)


@pytest.mark.parametrize(("name", "parent"), [
    ("vda1", ("vda", 1)), ("sda12", ("sda", 12)), ("xvda3", ("xvda", 3)),
    ("nvme0n1p2", ("nvme0n1", 2)), ("mmcblk0p1", ("mmcblk0", 1)), ("loop0p3", ("loop0", 3)),
    ("nvme0n1", None), ("mmcblk0", None), ("loop0", None), ("md0", None), ("vda", None),
    ("sr0", ("sr", 0)),
])
def test_guess_parent_without_sysfs(name: str, parent: tuple[str, int] | None) -> None:
    assert _guess_parent(name) == parent


def test_unreadable_device_is_not_fatal(tmp_path: Path) -> None:
    system = FakeSystem(tmp_path)
    system.lines = [" 11 0 1048575 sr0\n"]  # listed, but no node: an empty CD drive, say
    system.write()
    probed = system.scanner().probed()
    assert [(p.dev.name, p.fs) for p in probed] == [("sr0", None)]
    assert "no filesystem recognised" in probed[0].describe()


def test_missing_proc_partitions(tmp_path: Path) -> None:
    s = Scanner(str(tmp_path / "nope"), str(tmp_path), str(tmp_path))
    assert s.devices() == []


def test_wait_for_times_out_and_polls(tmp_path: Path) -> None:
    system = FakeSystem(tmp_path)
    spec = parse_bootdev("LABEL=late")
    assert spec is not None
    polls: list[int] = []
    assert wait_for(spec, 0.3, system.scanner(), lambda: polls.append(1), 0.05) is None
    assert len(polls) >= 3


def test_wait_for_sees_a_late_device(gpt_system: FakeSystem, tmp_path: Path) -> None:
    late = FakeSystem(tmp_path / "late")
    spec = parse_bootdev(f"UUID={UUID}")
    assert spec is not None
    ext4 = (gpt_system.dev / "vda2").read_bytes()

    def appear() -> None:
        if not late.lines:
            late.add("sdb", 8, 16, ext4)

    found = wait_for(spec, 5.0, late.scanner(), appear, 0.01)
    assert found is not None and found.dev.name == "sdb"


def test_parse_bootdev_for_root() -> None:
    assert parse_bootdev("nfs:10.0.0.1:/export") is None
    assert parse_bootdev("LABEL=x") is not None
    assert parse_bootdev("/dev/../etc/passwd") is None
