"""Block devices: /proc/partitions, their /dev nodes, and `root=`/bootdev specs resolved to one.

The kernel lists every block device in /proc/partitions as soon as its
driver has probed it; that is all the agent waits on (no udev). Nodes are
created from the listed major/minor, so this works with or without devtmpfs.
A spec is what ssitab's `parse_bootdev` accepts: /dev/NAME, LABEL=, UUID=,
PARTUUID=; LABEL and UUID come from the superblocks (probe.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Callable
from typing import NamedTuple

from linuxrc_agent import devnodes
from linuxrc_agent.probe import Filesystem, PartitionTable, partition_table, probe
from linuxrc_agent.ssitab import BootDev, BootDevKind, parse_bootdev
from linuxrc_agent.units import human_size

# Partition names: sda1, vda1, xvda1; nvme0n1p1, mmcblk0p1, loop0p1 (a 'p' after a digit).
_PART_RE = re.compile(r"^(.*\d)p(\d+)$|^(.*\D)(\d+)$")


class BlockDev(NamedTuple):
    name: str  # the kernel's name: vda1, nvme0n1p2, cciss!c0d0
    major: int
    minor: int
    size: int  # bytes
    path: str  # its node: /dev/vda1, /dev/cciss/c0d0


class Probed(NamedTuple):
    dev: BlockDev
    fs: Filesystem | None
    partuuid: str  # "" for whole disks and unknown tables
    table: str  # "gpt" or "dos" for a disk with a partition table, else ""

    def describe(self) -> str:
        size = human_size(self.dev.size)
        what = [f"{self.dev.path} ({self.dev.major}:{self.dev.minor}, {size})"]
        if self.table:
            what.append(f"{self.table} partition table")
        if self.fs is not None:
            what.append(self.fs.fstype)
            if self.fs.label:
                what.append(f"LABEL={self.fs.label}")
            if self.fs.uuid:
                what.append(f"UUID={self.fs.uuid}")
        elif not self.table:
            what.append("no filesystem recognised")
        if self.partuuid:
            what.append(f"PARTUUID={self.partuuid}")
        return " ".join(what)


class Scanner:
    """Reads /proc/partitions, makes nodes, and probes each device once.

    Results are cached per (name, major, minor): while waiting for a device
    only new ones are read. Make a new Scanner after the admin changed disks
    (after the rescue shell).
    """

    def __init__(self, proc_partitions: str = "/proc/partitions", dev: str = "/dev",
                 sys_block: str = "/sys/class/block", make_nodes: bool = True) -> None:
        self.proc_partitions = proc_partitions
        self.dev = dev
        self.sys_block = sys_block
        self.make_nodes = make_nodes
        self._probed: dict[tuple[str, int, int], Probed] = {}
        self._tables: dict[str, PartitionTable | None] = {}

    def devices(self) -> list[BlockDev]:
        try:
            with open(self.proc_partitions) as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        devs = []
        for line in lines:
            words = line.split()
            if len(words) != 4 or not words[0].isdigit():
                continue  # the header and its blank line
            major, minor, blocks, name = words
            path = f"{self.dev}/{name.replace('!', '/')}"
            devs.append(BlockDev(name, int(major), int(minor), int(blocks) * 1024, path))
        if self.make_nodes:
            for d in devs:
                # A failure shows later, when probing the node names the device.
                with contextlib.suppress(OSError):
                    devnodes.ensure_node(d.path, stat.S_IFBLK | 0o600, d.major, d.minor)
        return devs

    def probed(self) -> list[Probed]:
        return [self._probe(d) for d in self.devices()]

    def find(self, spec: BootDev) -> list[Probed]:
        """Every device matching `spec`, in /proc/partitions order."""
        return [p for p in self.probed() if matches(p, spec)]

    def _probe(self, d: BlockDev) -> Probed:
        key = (d.name, d.major, d.minor)
        if key not in self._probed:
            self._probed[key] = self._read(d)
        return self._probed[key]

    def _read(self, d: BlockDev) -> Probed:
        parent = self.parent(d.name)
        partuuid = ""
        if parent is not None:
            disk, number = parent
            table = self.table(disk)
            for part in table.partitions if table else ():
                if part.number == number:
                    partuuid = part.partuuid
            return Probed(d, _probe_or_none(d.path), partuuid, "")
        table = self.table(d.name)
        if table is not None:
            # A partitioned disk: a superblock at its start would be stale, as blkid judges.
            return Probed(d, None, "", table.kind)
        return Probed(d, _probe_or_none(d.path), "", "")

    def table(self, name: str) -> PartitionTable | None:
        if name not in self._tables:
            try:
                self._tables[name] = partition_table(f"{self.dev}/{name.replace('!', '/')}")
            except OSError:
                self._tables[name] = None
        return self._tables[name]

    def parent(self, name: str) -> tuple[str, int] | None:
        """(disk name, partition number) when `name` is a partition."""
        base = f"{self.sys_block}/{name}"
        try:
            with open(f"{base}/partition") as f:
                number = int(f.read())
        except FileNotFoundError:
            if os.path.isdir(base):
                return None  # sysfs knows it, and it is a whole disk
            return _guess_parent(name)  # no sysfs: go by the name
        except (OSError, ValueError):
            return None
        return os.path.basename(os.path.dirname(os.path.realpath(base))), number


def _guess_parent(name: str) -> tuple[str, int] | None:
    m = _PART_RE.match(name)
    if m is None:
        return None
    disk, number = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    # vda1 -> vda, nvme0n1p1 -> nvme0n1; but nvme0n1 itself is a disk ("nvme0n" + 1).
    if re.match(r"^(nvme\d+n|mmcblk|loop|md|nbd)$", disk):
        return None
    return disk, int(number)


def _probe_or_none(path: str) -> Filesystem | None:
    try:
        return probe(path)
    except OSError:
        return None  # an empty CD drive, a dying disk: not the one we look for


def matches(p: Probed, spec: BootDev) -> bool:
    if spec.kind is BootDevKind.PATH:
        if spec.value in (p.dev.path, f"/dev/{p.dev.name}"):
            return True
        try:
            st = os.stat(spec.value)  # a node the admin made under another name
        except OSError:
            return False
        return stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(p.dev.major, p.dev.minor)
    if spec.kind is BootDevKind.PARTUUID:
        return p.partuuid.lower() == spec.value.lower() != ""
    if p.fs is None:
        return False
    if spec.kind is BootDevKind.LABEL:
        if p.fs.fstype == "vfat":
            # FAT stores labels in upper case (mkfs.fat, mtools, Windows): an
            # admin's LABEL=ssiboot means the volume that shows as SSIBOOT.
            return p.fs.label.upper() == spec.value.upper()
        return p.fs.label == spec.value
    return p.fs.uuid.lower() == spec.value.lower() != ""


def resolve(spec: BootDev | str, scanner: Scanner | None = None) -> Probed | None:
    """The first device matching `spec` now (text specs are parsed; an invalid one matches none)."""
    parsed = parse_bootdev(spec) if isinstance(spec, str) else spec
    if parsed is None:
        return None
    found = (scanner or Scanner()).find(parsed)
    return found[0] if found else None


def wait_for(spec: BootDev, timeout: float, scanner: Scanner | None = None,
             on_poll: Callable[[], None] | None = None, interval: float = 0.1) -> Probed | None:
    """Poll until a device matches `spec` or `timeout` seconds pass; the first match or None.

    `on_poll` runs between polls (the agent rescans for devices a late
    driver created and loads their modules there).
    """
    scanner = scanner or Scanner()
    deadline = time.monotonic() + timeout
    while True:
        found = scanner.find(spec)
        if found:
            return found[0]
        if time.monotonic() >= deadline:
            return None
        if on_poll is not None:
            on_poll()
        time.sleep(interval)
