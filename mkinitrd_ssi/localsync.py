"""Admin side of the local boot partition: `lilo.ssi --local-only`, the manifest, provisioning.

- `local_only` syncs a mounted boot partition through the agent's own code
  (linuxrc_agent.disk_sync), so a running node and a booting node agree.
- `publish_manifest` is what lilo.ssi writes after it installs the default
  pair; nodes copy a pair only when it matches.
- `provision` makes a disk (or a disk image) bootable by extlinux: MBR with
  Syslinux's mbr.bin, one bootable partition, a filesystem, ldlinux.sys.
  It needs root (loop devices, mount) except for vfat images, which mtools
  and `syslinux --offset` handle unmounted.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from linuxrc_agent.disk_sync import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    SyncResult,
    hash_file,
    local_append,
    sync_boot_dir,
)
from mkinitrd_ssi.atomic import replace_if_changed
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.run import log, run

MBR_BIN = ("/usr/lib/EXTLINUX/mbr.bin", "/usr/lib/syslinux/mbr/mbr.bin")
SECTOR = 512
START_SECTOR = 2048  # 1 MiB: the alignment every partitioning tool uses today
# MBR partition types: Linux, and FAT32 with LBA (what firmware expects of FAT).
PART_TYPES = {"ext4": "83", "vfat": "c"}
FILESYSTEMS = tuple(PART_TYPES)
# syslinux 6.03+ reads ext4's 64bit feature (checked with Debian's 6.04 under
# QEMU), older ones do not; a boot partition never needs 64-bit block numbers.
EXT4_FEATURES = "^64bit"


def local_only(boot_dir: Path, kernel: Path, initrd: Path, append: str,
               *, root: Path | None = None) -> SyncResult:
    """Sync a mounted boot partition with kernel + initrd, exactly as the agent does at boot.

    append goes through local_append like the agent's /proc/cmdline, so the
    config lilo.ssi writes is the one the next boot finds unchanged.
    """
    return sync_boot_dir(boot_dir, kernel, initrd, local_append(append), root=root)


def manifest_for(kernel: Path, initrd: Path, manifest: Path | None = None) -> Manifest:
    where = (manifest or kernel.parent / MANIFEST_NAME).parent
    try:
        return Manifest(
            ManifestEntry(os.path.relpath(kernel, where), hash_file(kernel)),
            ManifestEntry(os.path.relpath(initrd, where), hash_file(initrd)),
        )
    except OSError as e:
        raise SsiError(f"cannot read {e.filename}: {e.strerror}") from None


def publish_manifest(kernel: Path, initrd: Path, manifest: Path | None = None) -> bool:
    """Write (atomically, only if changed) the manifest of the shared root's default pair.

    Call it after kernel and initrd are in place: between the two a booting
    node sees files that do not match the manifest and skips its sync (it
    never copies a half-installed pair). Returns True when the manifest changed.
    """
    path = manifest or kernel.parent / MANIFEST_NAME
    return replace_if_changed(path, manifest_for(kernel, initrd, path).to_json(), backup=False)


# ---------------------------------------------------------------- provisioning


@dataclass(frozen=True)
class Provisioned:
    target: Path
    fs: str
    label: str
    start: int  # bytes from the start of the disk to the partition
    size: int  # bytes
    how: str  # how the partition was reached: partscan, partx, offset loop, block device, mtools


def provision(
    device_or_image: Path,
    *,
    fs: str = "ext4",
    size_mib: int | None = None,
    label: str = "ssiboot",
    ext4_features: str = EXT4_FEATURES,
) -> Provisioned:
    """Partition, format and make bootable (extlinux) a whole disk or a disk image.

    An image that does not exist is created with size_mib (a sparse file).
    Everything on the target is lost. The partition is left empty but for
    ldlinux.sys/ldlinux.c32: the first sync (agent or local_only) adds the
    pair and extlinux.conf.
    """
    if fs not in PART_TYPES:
        raise SsiError(f"unknown filesystem {fs!r}", hint=f"use one of {', '.join(FILESYSTEMS)}")
    target = device_or_image
    is_block = target.exists() and target.is_block_device()
    if not is_block:
        if size_mib is not None:
            with open(target, "ab") as f:
                f.truncate(size_mib << 20)
        elif not target.is_file():
            raise SsiError(f"{target}: no such disk image", hint="pass size_mib to create it")
    elif _is_partition(target):
        raise SsiError(f"{target} is a partition", hint="provision the whole disk, e.g. /dev/sdb")
    disk_bytes = _size_of(target)
    size = (disk_bytes // SECTOR - START_SECTOR) * SECTOR
    if size < (8 << 20):
        raise SsiError(f"{target}: {disk_bytes >> 20} MiB is too small for a boot partition",
                       hint="a kernel and ramdisk pair needs twice its size; 512 MiB is ample")
    run(["sfdisk", "--quiet", "--wipe", "always", str(target)],
        input=f"label: dos\nstart={START_SECTOR}, type={PART_TYPES[fs]}, bootable\n".encode(),
        capture=True)
    _write_mbr(target)
    start = START_SECTOR * SECTOR
    if fs == "vfat" and not is_block and (os.geteuid() != 0 or not _kernel_has("vfat")):
        # Without root (no loop devices), or on a host without the vfat module,
        # a FAT image cannot be mounted; mtools and syslinux work on the
        # unmounted image instead.
        _mkfs_vfat_offset(target, label, size)
        run(["syslinux", "--install", "--offset", str(start), str(target)], capture=True)
        how = "mtools"
    else:
        with attach(target) as (part, how):
            _mkfs(part, fs, label, ext4_features)
            with mounted(part) as mnt:
                run(["extlinux", "--install", str(mnt)], capture=True)
    log.info("provisioned %s: %s %s at %d MiB, %d MiB, via %s", target, fs, label, start >> 20,
             size >> 20, how)
    return Provisioned(target, fs, label, start, size, how)


def _write_mbr(target: Path) -> None:
    # The first 440 bytes are boot code; the partition table after them stays.
    for candidate in MBR_BIN:
        if os.path.isfile(candidate):
            code = Path(candidate).read_bytes()[:440]
            break
    else:
        raise SsiError("Syslinux's mbr.bin not found", hint="apt-get install syslinux-common")
    with open(target, "r+b") as f:
        f.write(code)
        f.flush()
        os.fsync(f.fileno())


def _mkfs(part: Path, fs: str, label: str, ext4_features: str) -> None:
    if fs == "ext4":
        features = ["-O", ext4_features] if ext4_features else []
        run(["mkfs.ext4", "-q", "-F", *features, "-L", label, str(part)], capture=True)
    else:
        run(["mkfs.vfat", "-n", _fat_label(label), str(part)], capture=True)


def _mkfs_vfat_offset(image: Path, label: str, size: int) -> None:
    run(["mkfs.vfat", "-n", _fat_label(label), "--offset", str(START_SECTOR), str(image),
         str(size // 1024)], capture=True)


def _fat_label(label: str) -> str:
    return label.upper()[:11]


def _kernel_has(fs: str) -> bool:
    try:
        text = Path("/proc/filesystems").read_text()
    except OSError:
        return False
    if any(line.split()[-1] == fs for line in text.splitlines() if line.strip()):
        return True
    # A module loads on the first mount; it is there if modprobe finds it.
    return run(["modprobe", "-q", fs], check=False, capture=True).returncode == 0


def _size_of(target: Path) -> int:
    with open(target, "rb") as f:
        return f.seek(0, os.SEEK_END)


def _is_partition(dev: Path) -> bool:
    name = dev.resolve().name
    return Path(f"/sys/class/block/{name}/partition").exists()


def _partition_node(disk: Path, number: int = 1) -> Path | None:
    """The block device of partition `number` of disk, found through sysfs (any naming)."""
    name = disk.resolve().name
    sysdir = Path(f"/sys/class/block/{name}")
    if not sysdir.is_dir():
        return None
    for child in sysdir.iterdir():
        try:
            if (child / "partition").read_text().strip() == str(number):
                node = Path("/dev") / child.name
                return node if node.exists() else None
        except OSError:
            continue
    return None


def _wait_partition(disk: Path, seconds: float = 2.0) -> Path | None:
    deadline = time.monotonic() + seconds
    while True:
        node = _partition_node(disk)
        if node is not None or time.monotonic() > deadline:
            return node
        time.sleep(0.05)


@contextlib.contextmanager
def attach(target: Path) -> Iterator[tuple[Path, str]]:
    """The first partition of a disk or disk image as a block device, and how it was reached.

    For an image: a loop device with partition scanning; where the kernel
    does not scan partition tables (some minimal kernels lack the MBR parser)
    `partx --add` declares the partition; failing that, a second loop device
    maps just the partition's byte range.
    """
    if target.is_block_device():
        run(["partx", "--update", str(target)], check=False, capture=True)
        node = _wait_partition(target)
        if node is None:
            raise SsiError(f"{target} has no partition 1 after partitioning",
                           hint="check dmesg; the kernel may need partprobe or a reboot")
        yield node, "block device"
        return
    loop = _losetup("--partscan", str(target))
    node, how = _wait_partition(loop, 0.5), "partscan"
    if node is None and run(["partx", "--add", "--nr", "1", str(loop)],
                            check=False, capture=True).returncode == 0:
        node, how = _wait_partition(loop), "partx"
    if node is None:
        _detach(loop, partx=False)
        start = START_SECTOR * SECTOR
        loop = _losetup("--offset", str(start), "--sizelimit", str(_size_of(target) - start),
                        str(target))
        node, how = loop, "offset loop"
    try:
        yield node, how
    finally:
        _detach(loop, partx=how == "partx")


def _detach(loop: Path, *, partx: bool, seconds: float = 5.0) -> None:
    # A device someone still holds open (a prober scanning /dev, a lazy
    # umount) detaches only when released: wait for it, so callers can reuse
    # or delete the image at once.
    deadline = time.monotonic() + seconds
    bound = Path(f"/sys/block/{loop.name}/loop")
    while True:
        if partx:
            run(["partx", "--delete", str(loop)], check=False, capture=True)
        run(["losetup", "--detach", str(loop)], check=False, capture=True)
        if not bound.exists():
            return
        if time.monotonic() > deadline:
            log.warning("%s is still busy; it detaches when its last user closes it", loop)
            return
        time.sleep(0.1)


def _losetup(*args: str) -> Path:
    out = run(["losetup", "--find", "--show", *args], capture=True).stdout.decode().strip()
    return Path(out)


@contextlib.contextmanager
def mounted(device: Path, options: str = "") -> Iterator[Path]:
    """device mounted on a fresh temporary directory (root only)."""
    mnt = Path(tempfile.mkdtemp(prefix="ssi-boot-"))
    try:
        run(["mount", *(["-o", options] if options else []), str(device), str(mnt)],
            capture=True)
        try:
            yield mnt
        finally:
            run(["umount", str(mnt)], capture=True)
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()
