"""`lilo.ssi --provision DEVICE`: make a partition ready for local boot.

DEVICE is a whole disk or a disk image file (a new dos table with one
active partition and Syslinux's mbr.bin: localsync.provision), or an
existing partition (a filesystem and extlinux on it, and on its disk only
what the BIOS needs: localsync.provision_partition). A device in use is
never written; one that holds a filesystem, a partition table or any data
is overwritten only with --force. The partition is left empty but for
extlinux: the agent's first sync (at boot, or `lilo.ssi --local-only`)
fills it. `--fs esp` makes an EFI System Partition instead (type ef, FAT,
EFI/BOOT): the first sync installs shim and GRUB into it (bootpair.esp).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from linuxrc_agent.partitions import BlockDev, Probed, matches
from linuxrc_agent.probe import Filesystem, partition_table, probe
from linuxrc_agent.ssitab import BootDevKind, Node, parse_bootdev
from linuxrc_agent.units import human_size
from mkinitrd_ssi import cli
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.local import blockdev
from mkinitrd_ssi.local import node as local_node
from mkinitrd_ssi.local.partition import (
    SECTOR,
    START_SECTOR,
    Provisioned,
    disk_boot_plan,
    is_partition,
    partition_bytes,
    partition_of,
    provision,
    provision_partition,
    size_of,
)
from mkinitrd_ssi.run import log

DEFAULT_LABEL = "ssiboot"
# What mkfs.fat refuses in a volume label; ext4 takes anything in 16 bytes.
_FAT_FORBIDDEN = frozenset('"*+,./:;<=>?[\\]|')
NEXT_HERE = "next: lilo.ssi --local-only fills it now, or reboot: the agent fills it"
NEXT_IMAGE = ("next: boot a node from it (its agent fills it), or mount partition 1 and run "
              "lilo.ssi --local-only --boot-dir DIR")


@dataclass(frozen=True)
class ProvisionOptions:
    device: Path
    ssitab: Path
    ssitab_given: bool  # --ssitab: a missing table is then an error, not "no node"
    force: bool = False
    fs: str = "ext4"
    label: str | None = None  # default: this node's LABEL= bootdev, else ssiboot
    size: int | None = None  # MiB of a disk image to create
    dry_run: bool = False


def label_problem(label: str, fs: str) -> str | None:
    """Why --label cannot be the boot partition's label, or None."""
    if parse_bootdev(f"LABEL={label}") is None:
        return (f"--label {label!r}: ssitab's bootdev could not name it (no blanks, quotes, "
                f"backslashes or control characters)")
    if fs in ("vfat", "esp") and (len(label) > 11 or not label.isascii()
                         or any(c in _FAT_FORBIDDEN for c in label)):
        return (f"--label {label!r}: a FAT label is at most 11 ASCII characters, none of "
                f"{''.join(sorted(_FAT_FORBIDDEN))}")
    if fs == "ext4" and len(label.encode()) > 16:
        return f"--label {label!r}: an ext4 label holds at most 16 bytes"
    return None


def _this_node(args: ProvisionOptions) -> Node | None:
    """This machine's ssitab entry, or None when there is no table or no entry."""
    path = args.ssitab
    if not args.ssitab_given and not path.exists():
        return None
    try:
        return local_node.this_node(cli.load_ssitab(path))
    except SsiError as e:
        log.info("%s", e)
        return None


def default_label(node: Node | None) -> str:
    """This node's LABEL= bootdev from ssitab, so its agent finds the partition; else ssiboot."""
    if node is not None and node.bootdev is not None and node.bootdev.kind is BootDevKind.LABEL:
        return node.bootdev.value
    return DEFAULT_LABEL


def _kind(target: Path, size_mib: int | None) -> str:
    """'partition', 'disk', 'image' or 'new image'; SsiError for anything else."""
    if target.exists():
        if size_mib is not None:
            raise SsiError(f"{target} exists: --size only creates a new disk image",
                           hint="drop --size to provision it as it is")
        if target.is_block_device():
            return "partition" if is_partition(target) else "disk"
        if target.is_file():
            return "image"
        raise SsiError(f"{target} is neither a block device nor a disk image file")
    if size_mib is None:
        raise SsiError(f"{target}: no such device or disk image",
                       hint="to create a disk image file, add --size MIB (e.g. --size 512)")
    if target.resolve().is_relative_to("/dev"):
        raise SsiError(f"{target}: no such device",
                       hint="name an existing disk or partition; --size makes image files, "
                       "never under /dev")
    if not target.parent.is_dir():
        raise SsiError(f"{target.parent}: no such directory")
    return "new image"


def _refuse_or_warn(args: ProvisionOptions, target: Path) -> None:
    in_use = blockdev.users(target)
    if in_use:
        raise SsiError(f"{target} is in use: {'; '.join(in_use)}",
                       hint="lilo.ssi --provision writes to no device in use, --force or not: "
                       "unmount, swapoff or detach what is named first")
    held = blockdev.contents(target)
    if held is None:
        return
    if not args.force:
        raise SsiError(f"{target} holds {held}: lilo.ssi --provision would destroy it",
                       hint="add --force if that is what you want")
    log.warning("%s holds %s: %s (--force)", target, held,
                "it would be destroyed" if args.dry_run else "destroying it")


def _loader(fs: str) -> tuple[str, str]:
    """(what provisioning puts on the partition, what a message says it did)."""
    if fs == "esp":
        return ("make EFI/BOOT on it (the first sync installs shim and GRUB)",
                "EFI/BOOT made, shim and GRUB at the first sync")
    return "install extlinux on it", "extlinux installed"


def _plan(args: ProvisionOptions, target: Path, kind: str, label: str) -> list[str]:
    """What run() would do, one line each (the dry run's output)."""
    fs = f"{'vfat (EFI System Partition)' if args.fs == 'esp' else args.fs} LABEL={label}"
    loader = _loader(args.fs)[0]
    if kind == "partition":
        size = human_size(size_of(target))
        return [f"would make {fs} on {target} ({size}) and {loader}",
                *disk_boot_plan(target, esp=args.fs == "esp").steps(dry_run=True)]
    # _kind() calls it a new image only when --size was given.
    disk_bytes = (args.size or 0) << 20 if kind == "new image" else size_of(target)
    lines = [f"would create {target}, a sparse {args.size} MiB disk image"] \
        if kind == "new image" else []
    size = human_size(partition_bytes(target, disk_bytes))
    boot = "type ef (EFI System Partition)" if args.fs == "esp" else \
        "active; Syslinux's mbr.bin as boot code"
    return [*lines,
            f"would write a new dos partition table to {target}: partition 1 from "
            f"{START_SECTOR * SECTOR >> 20} MiB, {size}, {boot}",
            f"would make {fs} on partition 1 and {loader}"]


def _fs_line(fs: Filesystem | None, fallback: str) -> str:
    if fs is None:
        return fallback
    return f"{fs.fstype} LABEL={fs.label}" + (f" UUID={fs.uuid}" if fs.uuid else "")


def _bootdev_note(node: Node | None, part: Path, fs: Filesystem | None) -> str | None:
    """Why this node's agent would not find the partition, if it would not."""
    if node is None:
        return None
    if not node.local or node.bootdev is None:
        return (f"note: node {node.number} has no local boot flag in ssitab: its agent leaves "
                f"this partition alone until the table says local 1 and a bootdev for it")
    disk, number, _start = partition_of(part)
    table = partition_table(str(disk))
    partuuid = next((p.partuuid for p in table.partitions if p.number == number), "") \
        if table is not None else ""
    st = os.stat(part)
    dev = BlockDev(part.resolve().name, os.major(st.st_rdev), os.minor(st.st_rdev),
                   size_of(part), str(part))
    if matches(Probed(dev, fs, partuuid, ""), node.bootdev):
        return None
    name = f"LABEL={fs.label}" if fs is not None and fs.label else str(part)
    return (f"note: node {node.number}'s bootdev in ssitab is {node.bootdev}, which is not "
            f"this partition: make it {name}, or its agent will not find it")


def _done(args: ProvisionOptions, kind: str, label: str, node: Node | None) -> None:
    target: Path = args.device
    if kind == "partition":
        done, plan = provision_partition(target, fs=args.fs, label=label)
        for line in plan.steps():
            print(line)
    else:
        done = provision(target, fs=args.fs, size_mib=args.size, label=label)
    part = done.partition
    fs = probe(str(part)) if part is not None else probe(str(target), done.start)
    what = str(target) if kind == "partition" else _whole(done)
    print(f"provisioned {what}: {_fs_line(fs, f'{args.fs} LABEL={label}')}, "
          f"{human_size(done.size)}, {_loader(args.fs)[1]}; "
          + (NEXT_HERE if part is not None else NEXT_IMAGE))
    note = _bootdev_note(node, part, fs) if part is not None else None
    if note is not None:
        print(note)


def _whole(done: Provisioned) -> str:
    new = "new dos table, EFI System Partition" if done.fs == "esp" else \
        "new dos table, Syslinux's mbr.bin"
    if done.partition is None:
        return f"partition 1 of {done.target} ({new})"
    return f"{done.partition} (partition 1 of {done.target}, {new})"


def run(args: ProvisionOptions) -> int:
    target: Path = args.device
    kind = _kind(target, args.size)
    node = _this_node(args)
    label = args.label if args.label is not None else default_label(node)
    log.info("provisioning %s (%s) as %s LABEL=%s", target, kind, args.fs, label)
    if kind != "new image":
        _refuse_or_warn(args, target)
    if args.dry_run:
        for line in _plan(args, target, kind, label):
            print(line)
        return 0
    _done(args, kind, label, node)
    return 0
