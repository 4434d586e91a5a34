"""`lilo.ssi --local-only` on a running node: which node am I, where is my boot
partition, what pair does it hold.

On a running node udev maintains /dev/disk/by-*, so LABEL=, UUID= and PARTUUID=
resolve through those links (the agent, with no udev, probes superblocks instead).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from linuxrc_agent import mac_match
from linuxrc_agent.disk_sync import EXTLINUX, Bootloader, hash_file
from linuxrc_agent.ssitab import BootDev, BootDevKind, Node, Ssitab
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.localsync import mounted
from mkinitrd_ssi.pairspool import Pair
from mkinitrd_ssi.run import log

_BY = {BootDevKind.LABEL: "by-label", BootDevKind.UUID: "by-uuid",
       BootDevKind.PARTUUID: "by-partuuid"}
# udev's encode_devnode_name keeps these; anything else becomes \xNN.
_UDEV_SAFE = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#+-.:=@_")


def this_node(table: Ssitab, sys_class_net: str = "/sys/class/net") -> Node:
    nics = mac_match.local_nics(sys_class_net)
    try:
        return mac_match.match(table, nics).node
    except mac_match.UnknownNode:
        macs = ", ".join(f"{n.name} {n.mac}" for n in nics) or "none found"
        raise SsiError(f"this machine is not in {table.path} (local NICs: {macs})",
                       hint="add it to ssitab, or name the partition with --boot-dir") from None
    except mac_match.AmbiguousNode as e:
        raise SsiError(str(e)) from None


def udev_escape(name: str) -> str:
    return "".join(c if c in _UDEV_SAFE or ord(c) > 127 else f"\\x{ord(c):02x}" for c in name)


def bootdev_candidates(bootdev: BootDev, dev: Path = Path("/dev")) -> list[Path]:
    if bootdev.kind is BootDevKind.PATH:
        return [dev / bootdev.value.removeprefix("/dev/")]
    base = dev / "disk" / _BY[bootdev.kind]
    if bootdev.kind is BootDevKind.LABEL:
        return [base / udev_escape(bootdev.value)]
    # ssitab keeps UUIDs in lower case; udev names a FAT volume id in upper case.
    return list(dict.fromkeys([base / bootdev.value, base / bootdev.value.upper()]))


def find_bootdev(bootdev: BootDev, dev: Path = Path("/dev")) -> Path | None:
    """The block device bootdev names, or None when there is no such partition."""
    for path in bootdev_candidates(bootdev, dev):
        try:
            if stat.S_ISBLK(os.stat(path).st_mode):
                return path.resolve()
        except OSError:
            continue
    return None


def installed_pair(boot_dir: Path, bootloader: Bootloader = EXTLINUX) -> Pair | None:
    """The pair boot_dir would boot, hashed from the files themselves (not the
    config's record), so a damaged local copy reads as stale; None if none."""
    try:
        data = bootloader.config_path(boot_dir).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SsiError(f"{boot_dir}: cannot read the boot config: {e.strerror}") from None
    pair = bootloader.parse(data)
    if pair is None:
        return None
    try:
        return Pair(hash_file(boot_dir / pair.kernel.name),
                    hash_file(boot_dir / pair.initrd.name), pair.append)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SsiError(f"{boot_dir}: cannot read the local pair: {e.strerror}") from None


class NoBootPartition(Exception):
    """Not a failure: the node boots from the network until someone creates the partition."""


class NotLocal(Exception):
    """This node has no local boot flag: there is nothing to sync."""


@contextlib.contextmanager
def boot_partition(boot_dir: Path | None, node_of: Callable[[], Node],
                   dev: Path = Path("/dev"), read_only: bool = False) -> Iterator[Path]:
    """The boot partition as a directory: --boot-dir as given, else this node's
    bootdev from ssitab, mounted for the duration."""
    if boot_dir is not None:
        if not boot_dir.is_dir():
            raise SsiError(f"--boot-dir {boot_dir}: not a directory")
        yield boot_dir
        return
    node = node_of()
    if not node.local or node.bootdev is None:
        raise NotLocal(f"node {node.number} has no local boot flag in ssitab")
    device = find_bootdev(node.bootdev, dev)
    if device is None:
        raise NoBootPartition(
            f"node {node.number}: no partition {node.bootdev} (create it: fdisk, "
            f"mkfs with that label or UUID, provision extlinux; then run lilo.ssi --local-only)")
    log.info("mounting %s (%s)", device, node.bootdev)
    # A partition already mounted (say on /boot) mounts here just the same:
    # the kernel shares its superblock, so the two views cannot tear anything.
    with mounted(device, "ro,noatime" if read_only else "noatime") as mnt:
        yield mnt
