"""Local boot disks for the VM tests: provisioned, filled with a stale pair, read from the host."""

from __future__ import annotations

import hashlib
from pathlib import Path

import xxhash

from mkinitrd_ssi.local.partition import attach, local_only, mounted, provision
from vm_tests import cluster


def stale_disk(work: Path, kernel: Path, append: str) -> Path:
    """Node 2's disk: an extlinux partition LABEL=ssiboot holding an older pair (root only)."""
    disk = work / "stale-disk.img"
    provision(disk, size_mib=128, label=cluster.BOOT_LABEL)
    old_initrd = work / "old-initrd.img"
    old_initrd.write_bytes(b"an older ramdisk\n" * 1000)
    with attach(disk) as (part, _), mounted(part) as mnt:
        result = local_only(mnt, kernel, old_initrd, append)
    if result.status.value != "updated":
        raise RuntimeError(f"could not put the stale pair on {disk}: {result}")
    return disk


def pair_on_disk(disk: Path) -> dict[str, str]:
    """xxh3_128 of every ssi/ file on the disk's boot partition, and its extlinux.conf."""
    with attach(disk) as (part, _), mounted(part, "ro") as mnt:
        # Keyed by the path under ssi/ (slot/name), which the config names as ssi/slot/name.
        files = {str(p.relative_to(mnt / "ssi")): xxhash.xxh3_128_hexdigest(p.read_bytes())
                 for p in sorted((mnt / "ssi").rglob("*")) if p.is_file()}
        files["extlinux.conf"] = (mnt / "extlinux.conf").read_text()
    return files


def image_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
