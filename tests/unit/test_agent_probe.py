"""Superblock and partition-table probing on images made by the real mkfs and sfdisk tools.

Regular files only: no root, no loop devices. A partition is probed at its
byte offset inside the disk image, as the probing API allows.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from linuxrc_agent.probe import (
    Filesystem,
    Partition,
    format_guid,
    format_uuid,
    partition_table,
    probe,
    probe_bytes,
)

UUID = "0b9a4b1e-1111-4222-8333-944455556666"
MiB = 1 << 20


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (make deps)")


def sh(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, input=stdin).stdout


def blank(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def blkid(path: Path, offset: int = 0) -> dict[str, str]:
    """blkid's view, to check the agent against the reference implementation."""
    argv = ["blkid", "-p", "-o", "export", str(path)]
    if offset:
        argv[2:2] = ["-O", str(offset)]
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.mark.parametrize("fstype", ["ext2", "ext3", "ext4"])
def test_ext(tmp_path: Path, fstype: str) -> None:
    need(f"mkfs.{fstype}")
    img = blank(tmp_path / "fs.img", 16 * MiB)
    sh(f"mkfs.{fstype}", "-q", "-F", "-L", "ssiroot", "-U", UUID, str(img))
    assert probe(str(img)) == Filesystem(fstype, UUID, "ssiroot")
    ref = blkid(img)
    assert (ref["TYPE"], ref["UUID"], ref["LABEL"]) == (fstype, UUID, "ssiroot")


def test_ext4_without_label(tmp_path: Path) -> None:
    need("mkfs.ext4")
    img = blank(tmp_path / "fs.img", 16 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-U", UUID, str(img))
    assert probe(str(img)) == Filesystem("ext4", UUID, "")


def test_xfs(tmp_path: Path) -> None:
    need("mkfs.xfs")
    img = blank(tmp_path / "fs.img", 320 * MiB)  # sparse; mkfs.xfs wants 300 MiB at least
    sh("mkfs.xfs", "-q", "-L", "xroot", "-m", f"uuid={UUID}", str(img))
    assert probe(str(img)) == Filesystem("xfs", UUID, "xroot")


@pytest.mark.parametrize(("bits", "size"), [(12, 4 * MiB), (16, 32 * MiB), (32, 64 * MiB)])
def test_vfat(tmp_path: Path, bits: int, size: int) -> None:
    need("mkfs.vfat")
    img = blank(tmp_path / "fs.img", size)
    sh("mkfs.vfat", "-F", str(bits), "-n", "SSIBOOT", "-i", "1234abcd", str(img))
    assert probe(str(img)) == Filesystem("vfat", "1234-ABCD", "SSIBOOT")
    ref = blkid(img)
    assert (ref["UUID"], ref["LABEL"]) == ("1234-ABCD", "SSIBOOT")


def test_vfat_without_label(tmp_path: Path) -> None:
    need("mkfs.vfat")
    img = blank(tmp_path / "fs.img", 32 * MiB)
    sh("mkfs.vfat", "-i", "0000beef", str(img))
    assert probe(str(img)) == Filesystem("vfat", "0000-BEEF", "")


def test_swap(tmp_path: Path) -> None:
    need("mkswap")
    img = blank(tmp_path / "swap.img", 8 * MiB)
    sh("mkswap", "-L", "sw", "-U", UUID, str(img))
    assert probe(str(img)) == Filesystem("swap", UUID, "sw")


@pytest.mark.parametrize("content", [b"", b"\0" * 100, b"\0" * 70000, b"\xff" * 70000,
                                     b"XFSB", b"\x55\xaa" * 35000])
def test_nothing_recognised(tmp_path: Path, content: bytes) -> None:
    img = tmp_path / "junk.img"
    img.write_bytes(content)
    assert probe(str(img)) is None
    assert partition_table(str(img)) is None


def test_fat_lookalike_is_rejected() -> None:
    # A boot sector signature and a jump, but no sane BIOS parameter block.
    sector = bytearray(512)
    sector[0] = 0xEB
    sector[54:59] = b"FAT16"
    sector[510:512] = b"\x55\xaa"
    assert probe_bytes(bytes(sector)) is None


def test_uuid_formats() -> None:
    raw = bytes(range(16))
    assert format_uuid(raw) == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert format_guid(raw) == "03020100-0504-0706-0809-0a0b0c0d0e0f"
    assert format_uuid(bytes(16)) == format_guid(bytes(16)) == ""


def _disk(tmp_path: Path, script: str, size: int = 100 * MiB) -> Path:
    need("sfdisk")
    img = blank(tmp_path / "disk.img", size)
    sh("sfdisk", "-q", str(img), stdin=script)
    return img


def _sfdisk_uuids(img: Path) -> dict[int, str]:
    out = {}
    for line in sh("sfdisk", "-d", str(img)).splitlines():
        if " : start=" in line:
            number = int(line.split(" : ")[0].removeprefix(str(img)))
            fields = dict(f.strip().split("=", 1) for f in line.split(" : ")[1].split(","))
            out[number] = fields["uuid"].lower()
    return out


def mkfs_into(img: Path, part: Partition, *mkfs: str) -> None:
    """Make a filesystem in a partition of a disk image: in a file of its size, copied in."""
    need(mkfs[0])
    fs = blank(img.with_suffix(f".p{part.number}"), part.size)
    sh(*mkfs, str(fs))
    with open(img, "r+b") as f:
        f.seek(part.start)
        f.write(fs.read_bytes())


def test_gpt(tmp_path: Path) -> None:
    img = _disk(tmp_path, "label: gpt\nlabel-id: 0C2E3A5B-1D4E-4F60-8172-93A4B5C6D7E8\n"
                          "size=20M, type=L\nsize=30M, type=L, name=second\n")
    table = partition_table(str(img))
    assert table is not None and table.kind == "gpt"
    assert table.disk_id == "0c2e3a5b-1d4e-4f60-8172-93a4b5c6d7e8"
    assert [(p.number, p.start, p.size) for p in table.partitions] == \
        [(1, 1 * MiB, 20 * MiB), (2, 21 * MiB, 30 * MiB)]
    assert {p.number: p.partuuid for p in table.partitions} == _sfdisk_uuids(img)


def test_gpt_partition_probed_at_its_offset(tmp_path: Path) -> None:
    need("mkfs.ext4")
    img = _disk(tmp_path, "label: gpt\nsize=20M, type=L\nsize=30M, type=L\n")
    table = partition_table(str(img))
    assert table is not None
    second = table.partitions[1]
    mkfs_into(img, second, "mkfs.ext4", "-q", "-F", "-L", "inner", "-U", UUID)
    assert probe(str(img), second.start) == Filesystem("ext4", UUID, "inner")
    assert probe(str(img), table.partitions[0].start) is None
    assert probe(str(img)) is None  # the whole disk: a protective MBR, no filesystem


def test_gpt_with_a_corrupt_header_is_not_trusted(tmp_path: Path) -> None:
    img = _disk(tmp_path, "label: gpt\nsize=20M, type=L\n")
    with open(img, "r+b") as f:
        f.seek(512 + 40)
        f.write(b"\x01")  # inside the CRC'd header
    assert partition_table(str(img)) is None


def test_mbr_with_logical_partitions(tmp_path: Path) -> None:
    img = _disk(tmp_path, "label: dos\nlabel-id: 0xdeadbeef\nsize=20M, type=83\ntype=5\n"
                          "size=10M, type=83\nsize=10M, type=b\n")
    table = partition_table(str(img))
    assert table is not None and table.kind == "dos" and table.disk_id == "deadbeef"
    got = [(p.number, p.partuuid) for p in table.partitions]
    assert got == [(1, "deadbeef-01"), (2, "deadbeef-02"), (5, "deadbeef-05"),
                   (6, "deadbeef-06")]
    starts = {p.number: p.start for p in table.partitions}
    sizes = {p.number: p.size for p in table.partitions}
    assert (starts[1], sizes[1]) == (1 * MiB, 20 * MiB)
    assert sizes[5] == sizes[6] == 10 * MiB
    ref = sh("sfdisk", "-d", str(img))
    for number in (5, 6):
        line = next(x for x in ref.splitlines() if x.startswith(f"{img}{number} "))
        start = int(line.split("start=")[1].split(",")[0])
        assert starts[number] == start * 512


def test_mbr_vfat_partition(tmp_path: Path) -> None:
    need("mkfs.vfat")
    img = _disk(tmp_path, "label: dos\nlabel-id: 0x12345678\nsize=40M, type=c\n")
    table = partition_table(str(img))
    assert table is not None
    p = table.partitions[0]
    mkfs_into(img, p, "mkfs.vfat", "-F", "32", "-n", "BOOT", "-i", "cafef00d")
    assert probe(str(img), p.start) == Filesystem("vfat", "CAFE-F00D", "BOOT")
    assert p.partuuid == "12345678-01"
    assert blkid(img, p.start)["UUID"] == "CAFE-F00D"


def test_a_superfloppy_fat_is_not_a_partition_table(tmp_path: Path) -> None:
    need("mkfs.vfat")
    img = blank(tmp_path / "fs.img", 32 * MiB)
    sh("mkfs.vfat", "-n", "FLOPPY", str(img))
    assert partition_table(str(img)) is None
    fs = probe(str(img))
    assert fs is not None and fs.label == "FLOPPY"


def test_looping_ebr_chain_terminates(tmp_path: Path) -> None:
    img = _disk(tmp_path, "label: dos\nlabel-id: 0x01020304\ntype=5\nsize=10M, type=83\n"
                          "size=10M, type=83\n")
    table = partition_table(str(img))
    assert table is not None
    assert [p.number for p in table.partitions] == [1, 5, 6]
    base = table.partitions[0].start
    with open(img, "r+b") as f:
        f.seek(base + 462 + 8)
        second = int.from_bytes(f.read(4), "little")  # the second EBR, relative to base
        # Make the second EBR link to itself: a loop a careless walker never leaves.
        f.seek(base + second * 512 + 462 + 8)
        f.write(second.to_bytes(4, "little"))
    again = partition_table(str(img))
    assert again is not None
    assert [p.number for p in again.partitions] == [1, 5, 6]
