"""Filesystem superblocks and partition tables, read directly (no blkid, no udev database).

Every reader takes a path and a byte offset, so tests probe a partition
inside a disk image file without loop devices, and the agent probes
/dev/vda1 the same way with offset 0.

Formats, with the fields blkid reports:
- ext2/3/4: magic 0xEF53 at 1024+56; UUID at 1024+104, label at 1024+120.
- xfs: 'XFSB' at 0; UUID at 32, label at 108.
- vfat: the BIOS parameter block of the boot sector; volume id and label at
  39/43 (FAT12/16) or 67/71 (FAT32).
- btrfs and swap too, so the device list an admin sees on failure names them.
- GPT (partition GUIDs, mixed-endian on disk) and MBR (disk signature at
  440, PARTUUID `xxxxxxxx-NN`, logical partitions from 5 through the EBR chain).
"""

from __future__ import annotations

import binascii
import os
import struct
from typing import NamedTuple

# Enough for every superblock probed here: btrfs is the farthest, at 64 KiB.
HEAD_SIZE = 0x10000 + 0x1000

_EXT_MAGIC = 0xEF53
_EXT3_INCOMPAT = 0x0002 | 0x0004 | 0x0010  # filetype, recover, meta_bg
_EXT3_RO_COMPAT = 0x0001 | 0x0002 | 0x0004  # sparse_super, large_file, btree_dir
_EXT_HAS_JOURNAL = 0x0004
_EXT_JOURNAL_DEV = 0x0008

_MBR_EXTENDED = frozenset({0x05, 0x0F, 0x85})
_MBR_GPT = 0xEE
_MAX_LOGICAL = 128


# NamedTuples, not dataclasses: creating a dataclass costs a boot under emulation
# tens of milliseconds each, a NamedTuple a tenth of it.
class Filesystem(NamedTuple):
    fstype: str
    uuid: str = ""  # "" when the filesystem has none
    label: str = ""


class Partition(NamedTuple):
    number: int  # as the kernel numbers it: GPT slot + 1; MBR 1-4, logical from 5
    start: int  # bytes from the start of the disk
    size: int  # bytes
    partuuid: str


class PartitionTable(NamedTuple):
    kind: str  # "gpt" or "dos"
    disk_id: str  # GPT disk GUID or MBR signature (8 hex digits)
    partitions: tuple[Partition, ...]


def read_at(path: str, offset: int, size: int) -> bytes:
    """Up to `size` bytes at `offset`; shorter at the end of the device or file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def format_uuid(raw: bytes) -> str:
    """RFC 4122 text of 16 bytes stored in big-endian order (ext4, xfs, btrfs, swap)."""
    if not any(raw):
        return ""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def format_guid(raw: bytes) -> str:
    """GPT's mixed-endian GUID: the first three fields little-endian, the rest as stored."""
    if not any(raw):
        return ""
    a, b, c = struct.unpack_from("<IHH", raw)
    return f"{a:08x}-{b:04x}-{c:04x}-{raw[8:10].hex()}-{raw[10:16].hex()}"


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def probe(path: str, offset: int = 0) -> Filesystem | None:
    """The filesystem at `offset` in `path`, or None when none is recognised."""
    return probe_bytes(read_at(path, offset, HEAD_SIZE))


def probe_bytes(head: bytes) -> Filesystem | None:
    for prober in (_ext, _xfs, _btrfs, _vfat, _swap):
        found = prober(head)
        if found is not None:
            return found
    return None


def _ext(head: bytes) -> Filesystem | None:
    sb = head[1024:2048]
    if len(sb) < 256 or struct.unpack_from("<H", sb, 56)[0] != _EXT_MAGIC:
        return None
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 92)
    if incompat & _EXT_JOURNAL_DEV:
        fstype = "jbd"  # an external journal, not a mountable filesystem
    elif incompat & ~_EXT3_INCOMPAT or ro_compat & ~_EXT3_RO_COMPAT:
        fstype = "ext4"
    elif compat & _EXT_HAS_JOURNAL:
        fstype = "ext3"
    else:
        fstype = "ext2"
    return Filesystem(fstype, format_uuid(sb[104:120]), _text(sb[120:136]))


def _xfs(head: bytes) -> Filesystem | None:
    if len(head) < 120 or head[:4] != b"XFSB":
        return None
    return Filesystem("xfs", format_uuid(head[32:48]), _text(head[108:120]))


def _btrfs(head: bytes) -> Filesystem | None:
    sb = head[0x10000:0x11000]
    if len(sb) < 0x22B or sb[0x40:0x48] != b"_BHRfS_M":
        return None
    return Filesystem("btrfs", format_uuid(sb[0x20:0x30]), _text(sb[0x12B:0x22B]))


def _swap(head: bytes) -> Filesystem | None:
    # The signature ends the first page; try the usual page sizes.
    for page in (4096, 8192, 16384, 65536):
        if head[page - 10:page] in (b"SWAPSPACE2", b"SWAP-SPACE"):
            return Filesystem("swap", format_uuid(head[1024 + 12:1024 + 28]),
                              _text(head[1024 + 28:1024 + 44]))
    return None


def _vfat(head: bytes) -> Filesystem | None:
    bs = head[:512]
    if len(bs) < 512 or bs[510:512] != b"\x55\xaa" or bs[0] not in (0xEB, 0xE9):
        return None
    sector, per_cluster, reserved, fats = struct.unpack_from("<HBHB", bs, 11)
    media = bs[21]
    fat16_length = struct.unpack_from("<H", bs, 22)[0]
    sane = (sector in (512, 1024, 2048, 4096) and per_cluster in (1, 2, 4, 8, 16, 32, 64, 128)
            and reserved > 0 and fats in (1, 2) and (media >= 0xF8 or media == 0xF0))
    if not sane:
        return None
    if fat16_length == 0:
        # FAT32: the extended BPB moves past the 32-bit FAT size and root cluster.
        if bs[82:87] != b"FAT32" and bs[3:8] not in (b"MSWIN", b"MSDOS", b"mkfs."):
            return None
        ext_sig, vid_at, label_at = bs[66], 67, 71
    else:
        if bs[54:57] != b"FAT" and bs[3:8] not in (b"MSWIN", b"MSDOS", b"mkfs."):
            return None
        ext_sig, vid_at, label_at = bs[38], 39, 43
    if ext_sig not in (0x28, 0x29):
        return Filesystem("vfat")
    vid = struct.unpack_from("<I", bs, vid_at)[0]
    uuid = f"{vid >> 16:04X}-{vid & 0xFFFF:04X}" if vid else ""
    label = ""
    if ext_sig == 0x29:
        label = bs[label_at:label_at + 11].decode("latin-1").rstrip(" \0")
        if label == "NO NAME":
            label = ""
    return Filesystem("vfat", uuid, label)


def partition_table(path: str, offset: int = 0) -> PartitionTable | None:
    """The GPT or MBR table of the disk at `offset` in `path`; None when there is none."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        mbr = os.pread(fd, 512, offset)
        if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa" or _vfat(mbr) is not None:
            return None
        entries = [struct.unpack_from("<B3xB3xII", mbr, 446 + 16 * i) for i in range(4)]
        if any(boot not in (0x00, 0x80) for boot, _, _, _ in entries):
            return None  # boot code, not a partition table
        if any(kind == _MBR_GPT for _, kind, _, _ in entries):
            return _gpt(fd, offset)
        return _mbr(fd, offset, mbr, entries)
    finally:
        os.close(fd)


def _gpt(fd: int, offset: int) -> PartitionTable | None:
    # The header is at LBA 1; the sector size is 512 on almost every disk, 4096 on a few.
    for sector in (512, 4096):
        header = os.pread(fd, 512, offset + sector)
        if header[:8] != b"EFI PART" or len(header) < 92:
            continue
        size = struct.unpack_from("<I", header, 12)[0]
        if not 92 <= size <= 512:
            continue
        crc = struct.unpack_from("<I", header, 16)[0]
        if binascii.crc32(header[:16] + b"\0\0\0\0" + header[20:size]) != crc:
            continue
        entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
        if not 128 <= entry_size <= 4096 or count > 4096:
            continue
        table = os.pread(fd, count * entry_size, offset + entries_lba * sector)
        parts = []
        for i in range(min(count, len(table) // entry_size)):
            entry = table[i * entry_size:(i + 1) * entry_size]
            if not any(entry[:16]):
                continue  # unused slot
            first, last = struct.unpack_from("<QQ", entry, 32)
            parts.append(Partition(i + 1, first * sector, (last - first + 1) * sector,
                                   format_guid(entry[16:32])))
        return PartitionTable("gpt", format_guid(header[56:72]), tuple(parts))
    return None


def _mbr(fd: int, offset: int, mbr: bytes,
         entries: list[tuple[int, int, int, int]]) -> PartitionTable:
    signature = struct.unpack_from("<I", mbr, 440)[0]
    disk_id = f"{signature:08x}"
    parts = []
    extended: tuple[int, int] | None = None
    for i, (_, kind, start, count) in enumerate(entries):
        if kind == 0 or count == 0:
            continue
        # The kernel shows an extended partition as a 1 KiB stub; blkid gives it a PARTUUID.
        size = 1024 if kind in _MBR_EXTENDED else count * 512
        parts.append(Partition(i + 1, start * 512, size, f"{disk_id}-{i + 1:02x}"))
        if kind in _MBR_EXTENDED and extended is None:
            extended = (start, count)
    if extended is not None:
        parts.extend(_logical(fd, offset, disk_id, extended[0]))
    return PartitionTable("dos", disk_id, tuple(parts))


def _logical(fd: int, offset: int, disk_id: str, base: int) -> list[Partition]:
    """Walk the EBR chain: each EBR holds one logical partition and a link to the next EBR."""
    parts: list[Partition] = []
    ebr_lba = base
    seen: set[int] = set()
    while ebr_lba not in seen and len(seen) < _MAX_LOGICAL:
        seen.add(ebr_lba)
        ebr = os.pread(fd, 512, offset + ebr_lba * 512)
        if len(ebr) < 512 or ebr[510:512] != b"\x55\xaa":
            break
        _, kind, start, count = struct.unpack_from("<B3xB3xII", ebr, 446)
        if kind != 0 and count != 0:
            number = 5 + len(parts)
            parts.append(Partition(number, (ebr_lba + start) * 512, count * 512,
                                   f"{disk_id}-{number:02x}"))
        _, next_kind, next_start, _ = struct.unpack_from("<B3xB3xII", ebr, 462)
        if next_kind not in _MBR_EXTENDED or next_start == 0:
            break
        ebr_lba = base + next_start
    return parts
