"""`lilo.ssi --local-only` on a running node: which node am I, where is my boot
partition, what pair does it hold.

LABEL=, UUID= and PARTUUID= resolve through udev's database where udev runs,
else through the agent's own probe (blockdev.find says which under -v).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from linuxrc_agent import firmware, mac_match
from linuxrc_agent.bootpair.esp import bootloader_for
from linuxrc_agent.bootpair.fileops import hash_file
from linuxrc_agent.bootpair.pair import Bootloader
from linuxrc_agent.ssitab import BootDev, Node, Ssitab
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.local import blockdev
from mkinitrd_ssi.local.partition import mounted
from mkinitrd_ssi.push.spool import Pair
from mkinitrd_ssi.run import log


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


def find_bootdev(bootdev: BootDev) -> Path | None:
    """The block device bootdev names on this machine, or None when there is no such partition."""
    return blockdev.find(bootdev)


def installed_pair(boot_dir: Path, bootloader: Bootloader | None = None) -> Pair | None:
    """The pair boot_dir would boot, hashed from the files themselves (not the
    config's record), so a damaged local copy reads as stale; None if none.
    bootloader: whose config to read (default: an ESP's GRUB, else extlinux)."""
    if bootloader is None:
        bootloader = bootloader_for(boot_dir, firmware.kind() == "uefi")
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
                   read_only: bool = False) -> Iterator[Path]:
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
    device = find_bootdev(node.bootdev)
    if device is None:
        raise NoBootPartition(
            f"node {node.number}: no partition {node.bootdev} (create it: lilo.ssi "
            f"--provision DEVICE; then run lilo.ssi --local-only)")
    log.info("mounting %s (%s)", device, node.bootdev)
    # A partition already mounted (say on /boot) mounts here just the same:
    # the kernel shares its superblock, so the two views cannot tear anything.
    with mounted(device, "ro,noatime" if read_only else "noatime") as mnt:
        yield mnt
