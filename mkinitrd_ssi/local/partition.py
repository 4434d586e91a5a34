"""Admin side of the local boot partition: `lilo.ssi --local-only`, the manifest, provisioning.

- `local_only` syncs a mounted boot partition through the agent's own code
  (linuxrc_agent.bootpair), so a running node and a booting node agree.
- `publish_manifest` is what lilo.ssi writes after it installs the default
  pair; nodes copy a pair only when it matches.
- `provision` makes a disk (or a disk image) bootable by extlinux: MBR with
  Syslinux's mbr.bin, one bootable partition, a filesystem, ldlinux.sys.
  It needs root (loop devices, mount) except for vfat images, which mtools
  and `syslinux --offset` handle unmounted.
- `provision_partition` does the same for an existing partition of a disk
  that has other partitions: a filesystem and ldlinux.sys on it, and on its
  disk only what the BIOS needs to reach it (`disk_boot_plan`): mbr.bin where
  the boot code is blank, the active flag. `lilo.ssi --provision` is the
  command over both (provision_command.py).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from linuxrc_agent import firmware
from linuxrc_agent.bootpair.engine import SyncResult
from linuxrc_agent.bootpair.esp import sync_boot_partition
from linuxrc_agent.bootpair.fileops import hash_file
from linuxrc_agent.bootpair.kargs import local_append
from linuxrc_agent.bootpair.manifest import MANIFEST_NAME, Manifest, ManifestEntry
from linuxrc_agent.probe import partition_table
from mkinitrd_ssi.atomic import replace_if_changed
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.run import log, run

MBR_BIN = ("/usr/lib/EXTLINUX/mbr.bin", "/usr/lib/syslinux/mbr/mbr.bin")
SECTOR = 512
START_SECTOR = 2048  # 1 MiB: the alignment every partitioning tool uses today
# MBR partition types: Linux, FAT32 with LBA (what firmware expects of FAT), and
# the EFI System Partition (FAT too; UEFI firmware boots from it, no MBR code needed).
PART_TYPES = {"ext4": "83", "vfat": "c", "esp": "ef"}
ESP_GPT_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
FILESYSTEMS = tuple(PART_TYPES)
# syslinux 6.03+ reads ext4's 64bit feature (checked with Debian's 6.04 under
# QEMU), older ones do not; a boot partition never needs 64-bit block numbers.
EXT4_FEATURES = "^64bit"


def local_only(boot_dir: Path, kernel: Path, initrd: Path, append: str,
               *, root: Path | None = None, loader_root: Path | None = None) -> SyncResult:
    """Sync a mounted boot partition with kernel + initrd, exactly as the agent does at boot
    (an ESP too: shim and GRUB from loader_root, the shared root, default /).

    append goes through local_append like the agent's /proc/cmdline, so the
    config lilo.ssi writes is the one the next boot finds unchanged.
    """
    return sync_boot_partition(boot_dir, kernel, initrd, local_append(append), root=root,
                               uefi=firmware.kind() == "uefi", loader_root=loader_root)


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
    partition: Path | None = None  # its block device, when it outlives provisioning


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
            partition_bytes(target, size_mib << 20)  # too small: create nothing
            with open(target, "ab") as f:
                f.truncate(size_mib << 20)
        elif not target.is_file():
            raise SsiError(f"{target}: no such disk image", hint="pass size_mib to create it")
    elif is_partition(target):
        raise SsiError(f"{target} is a partition", hint="provision the whole disk, e.g. /dev/sdb")
    size = partition_bytes(target, size_of(target))
    run(["sfdisk", "--quiet", "--wipe", "always", str(target)],
        input=f"label: dos\nstart={START_SECTOR}, type={PART_TYPES[fs]}, bootable\n".encode(),
        capture=True)
    if fs != "esp":
        _write_at(target, [(0, boot_code())])
    start = START_SECTOR * SECTOR
    partition = None
    if fs in ("vfat", "esp") and not is_block and (os.geteuid() != 0
                                                   or not _kernel_has("vfat")):
        # Without root (no loop devices), or on a host without the vfat module,
        # a FAT image cannot be mounted; mtools and syslinux work on the
        # unmounted image instead.
        _mkfs_vfat_offset(target, label, size)
        if fs == "esp":
            _esp_dirs(f"{target}@@{start}")
        else:
            run(["syslinux", "--install", "--offset", str(start), str(target)], capture=True)
        how = "mtools"
    else:
        with attach(target) as (part, how):
            if fs == "esp":
                _mkfs(part, fs, label, ext4_features)
                _esp_dirs(str(part))
            else:
                _mkfs_extlinux(part, fs, label, ext4_features)
            partition = part if is_block else None
    log.info("provisioned %s: %s %s at %d MiB, %d MiB, via %s", target, fs, label, start >> 20,
             size >> 20, how)
    return Provisioned(target, fs, label, start, size, how, partition)


def partition_bytes(target: Path, disk_bytes: int) -> int:
    """The size of the one partition provision() makes on a disk of disk_bytes."""
    return _checked_size(target, disk_bytes // SECTOR * SECTOR - START_SECTOR * SECTOR)


def _checked_size(target: Path, size: int) -> int:
    if size < (8 << 20):
        raise SsiError(f"{target}: {max(size, 0) / (1 << 20):.1f} MiB is too small for a boot "
                       f"partition",
                       hint="a kernel and ramdisk pair needs twice its size; 512 MiB is ample")
    return size


def _mkfs_extlinux(part: Path, fs: str, label: str, ext4_features: str) -> None:
    _mkfs(part, fs, label, ext4_features)
    with mounted(part) as mnt:
        run(["extlinux", "--install", str(mnt)], capture=True)


def boot_code() -> bytes:
    """Syslinux's mbr.bin: the 440 bytes of boot code that start the active partition."""
    for candidate in MBR_BIN:
        if os.path.isfile(candidate):
            return Path(candidate).read_bytes()[:440]
    raise SsiError("Syslinux's mbr.bin not found", hint="apt-get install syslinux-common")


def _write_at(target: Path, pieces: list[tuple[int, bytes]]) -> None:
    # Only these bytes: the partition table around the boot code stays as it is.
    with open(target, "r+b") as f:
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class DiskBoot:
    """What the BIOS needs on a partition's disk to reach extlinux on it (or, for an
    EFI System Partition, UEFI: the partition's type, nothing else)."""

    disk: Path
    number: int  # the partition's, as the kernel numbers it
    table: str  # "dos", "gpt", or "" when the agent's probe reads none
    write_mbr: bool  # a dos disk whose boot code is all zero: mbr.bin goes there
    activate: bool  # a dos primary partition that is not yet the one active partition
    was_active: tuple[int, ...]  # partitions that lose their active flag
    esp: bool = False  # give the partition the ESP type instead of the above

    def steps(self, dry_run: bool = False) -> list[str]:
        """What apply() does or leaves, one line each, for the admin to read."""
        def verb(now: str, then: str) -> str:
            return f"would {now}" if dry_run else then

        disk, n = self.disk, self.number
        if self.esp:
            what = {"dos": "type ef", "gpt": f"type {ESP_GPT_TYPE}"}.get(self.table)
            if what is None:
                return [f"{disk}: no partition table the agent reads: partition {n}'s type "
                        "left as it is (UEFI firmware boots an EFI System Partition)"]
            return [f"{disk}: {verb('give', 'gave')} partition {n} {what}, the EFI System "
                    "Partition's; boot code and flags left as they are (UEFI reads neither)"]
        if self.table != "dos":
            what = "a GPT disk" if self.table == "gpt" else "no partition table the agent reads"
            return [f"{disk}: {what}: boot code and partition flags left as they are (BIOS "
                    f"boot from GPT needs Syslinux's gptmbr.bin and sfdisk --part-attrs {disk} "
                    f"{n} LegacyBIOSBootable)"]
        lines = [f"{disk}: " + (verb("put", "put") + " Syslinux's mbr.bin into the boot code "
                                "(its 440 bytes are all zero)" if self.write_mbr else
                                "boot code left as it is (not all zero: another boot loader, "
                                f"which must start partition {n})")]
        if n > 4:
            lines.append(f"{disk}: partition {n} is a logical partition: mbr.bin starts only "
                         f"an active primary one; chain to it from another boot loader")
        elif self.activate:
            lost = ", ".join(str(i) for i in self.was_active)
            lines.append(f"{disk}: {verb('mark', 'marked')} partition {n} active"
                         + (f" (partition {lost} no longer)" if lost else ""))
        else:
            lines.append(f"{disk}: partition {n} is already the active one")
        return lines

    def apply(self) -> None:
        if self.esp:
            kind = {"dos": PART_TYPES["esp"], "gpt": ESP_GPT_TYPE}.get(self.table)
            if kind is not None:
                # The kernel needs no news of a type: telling it would re-read the table of
                # a disk in use (and drop partitions partx declared).
                run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--part-type",
                     str(self.disk), str(self.number), kind], capture=True)
            return
        pieces = [(0, boot_code())] if self.write_mbr else []
        if self.activate:
            pieces += [(446 + 16 * (i - 1), b"\x80" if i == self.number else b"\0")
                       for i in (self.number, *self.was_active)]
        if pieces:
            _write_at(self.disk, pieces)


def partition_of(part: Path) -> tuple[Path, int, int]:
    """The disk of a partition's block device, its number and its first sector (sysfs)."""
    sysdir = Path("/sys/class/block") / part.resolve().name
    try:
        number = int((sysdir / "partition").read_text())
        start = int((sysdir / "start").read_text())
    except (OSError, ValueError):
        raise SsiError(f"{part} is not a partition (no {sysdir}/partition)") from None
    return Path("/dev") / sysdir.resolve().parent.name, number, start


def disk_boot_plan(part: Path, esp: bool = False) -> DiskBoot:
    disk, number, _start = partition_of(part)
    table = partition_table(str(disk))
    kind = table.kind if table is not None else ""
    with open(disk, "rb") as f:
        head = f.read(SECTOR)
    flags = [head[446 + 16 * i] for i in range(4)]
    was_active = tuple(i + 1 for i, flag in enumerate(flags) if flag == 0x80 and i + 1 != number)
    primary = kind == "dos" and number <= 4
    if esp:
        return DiskBoot(disk, number, kind, write_mbr=False, activate=False, was_active=(),
                        esp=True)
    return DiskBoot(disk, number, kind, write_mbr=kind == "dos" and not any(head[:440]),
                    activate=primary and (flags[number - 1] != 0x80 or bool(was_active)),
                    was_active=was_active if primary else ())


def provision_partition(part: Path, *, fs: str = "ext4", label: str = "ssiboot",
                        ext4_features: str = EXT4_FEATURES) -> tuple[Provisioned, DiskBoot]:
    """A filesystem and extlinux on an existing partition, and what its disk
    needs for the BIOS to reach it (DiskBoot). Everything on the partition is
    lost; the disk's other partitions are not touched."""
    if fs not in PART_TYPES:
        raise SsiError(f"unknown filesystem {fs!r}", hint=f"use one of {', '.join(FILESYSTEMS)}")
    _disk, _number, start = partition_of(part)
    size = _checked_size(part, size_of(part))
    plan = disk_boot_plan(part, esp=fs == "esp")
    if fs == "esp":
        run(["mkfs.vfat", "-n", _fat_label(label), "-h", str(start), str(part)], capture=True)
        _esp_dirs(str(part))
        how = "mtools"
    elif fs == "vfat":
        # The boot sector must say where the partition starts (hidden sectors):
        # ldlinux.sys is found by absolute sector. mtools installs it unmounted,
        # so no vfat module is needed here.
        run(["mkfs.vfat", "-n", _fat_label(label), "-h", str(start), str(part)], capture=True)
        run(["syslinux", "--install", str(part)], capture=True)
        how = "mtools"
    else:
        _mkfs_extlinux(part, fs, label, ext4_features)
        how = "block device"
    plan.apply()
    log.info("provisioned %s: %s %s, %d MiB, via %s", part, fs, label, size >> 20, how)
    return Provisioned(part, fs, label, start * SECTOR, size, how, part), plan


def _mkfs(part: Path, fs: str, label: str, ext4_features: str) -> None:
    if fs == "ext4":
        features = ["-O", ext4_features] if ext4_features else []
        run(["mkfs.ext4", "-q", "-F", *features, "-L", label, str(part)], capture=True)
    else:
        run(["mkfs.vfat", "-n", _fat_label(label), str(part)], capture=True)


def _esp_dirs(image: str) -> None:
    """EFI/BOOT on an unmounted FAT filesystem (image[@@offset]): it marks the partition
    as an ESP for the sync (bootpair.esp.is_esp), whichever firmware runs it."""
    run(["mmd", "-i", image, "::/EFI", "::/EFI/BOOT"], capture=True,
        env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))


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


def size_of(target: Path) -> int:
    with open(target, "rb") as f:
        return f.seek(0, os.SEEK_END)


def is_partition(dev: Path) -> bool:
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
        loop = _losetup("--offset", str(start), "--sizelimit", str(size_of(target) - start),
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
