"""A real boot partition in a disk image: provision, sync, fsck, and boot it under QEMU.

Root only (loop devices, mount). This host's kernel has no MBR partition
parser and no vfat: `attach` falls back to partx, and FAT images are made
and filled with mtools (the sync itself runs on ext4 here; under QEMU the
agent mounts FAT with the Debian kernel's vfat module).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import xxhash

from linuxrc_agent.bootpair.engine import sync_boot_dir
from linuxrc_agent.bootpair.extlinux import EXTLINUX
from linuxrc_agent.bootpair.fileops import hash_file
from linuxrc_agent.nodeenv import SyncStatus
from mkinitrd_ssi.initrd.cpio import Archive
from mkinitrd_ssi.lilo import main as lilo_ssi
from mkinitrd_ssi.local.partition import MBR_BIN, attach, local_only, mounted, provision

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices"),
              pytest.mark.skipif(shutil.which("losetup") is None, reason="no losetup"),
              pytest.mark.usefixtures("no_loop_leaks")]

APPEND = "console=ttyS0,115200 panic=-1"
MIB = 1 << 20


def image_digest(image: Path) -> str:
    return xxhash.xxh3_128_hexdigest(image.read_bytes())


def fsck_clean(image: Path, fs: str = "ext4") -> None:
    if fs == "ext4":
        with attach(image) as (part, _how):
            out = subprocess.run(["e2fsck", "-fn", str(part)], capture_output=True, text=True)
    else:
        # fsck.vfat takes no offset: check a copy of the partition's bytes.
        alone = image.with_suffix(".part")
        alone.write_bytes(image.read_bytes()[MIB:])
        out = subprocess.run(["fsck.vfat", "-n", str(alone)], capture_output=True, text=True)
        alone.unlink()
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    return root


def put_pair(root: Path, kernel: bytes, initrd: bytes) -> tuple[Path, Path]:
    (root / "boot/vmlinuz").write_bytes(kernel)
    (root / "boot/initrd.img").write_bytes(initrd)
    return root / "boot/vmlinuz", root / "boot/initrd.img"


def check_pair(boot_dir: Path, kernel: Path, initrd: Path) -> None:
    pair = EXTLINUX.parse((boot_dir / "extlinux.conf").read_bytes())
    assert pair is not None
    assert hash_file(boot_dir / pair.kernel.name) == pair.kernel.ident == hash_file(kernel)
    assert hash_file(boot_dir / pair.initrd.name) == pair.initrd.ident == hash_file(initrd)
    # The pair in its slot and nothing else there, the other slot empty.
    slot = Path(pair.kernel.name).parent
    assert sorted(p.name for p in (boot_dir / "ssi").iterdir()) == ["a", "b"]
    assert sorted(p.name for p in (boot_dir / slot).iterdir()) == sorted(
        [Path(pair.kernel.name).name, Path(pair.initrd.name).name])
    assert not any((boot_dir / "ssi" / ({"a", "b"} - {slot.name}).pop()).iterdir())


@pytest.mark.parametrize("fs", ["ext4", "vfat"])
def test_provision_makes_an_mbr_disk_extlinux_boots(tmp_path: Path, fs: str) -> None:
    image = tmp_path / "disk.img"
    done = provision(image, fs=fs, size_mib=64)
    raw = image.read_bytes()[:512]
    mbr = next(Path(p) for p in MBR_BIN if Path(p).is_file()).read_bytes()[:440]
    assert raw[:440] == mbr
    assert raw[510:512] == b"\x55\xaa"
    entry = raw[446:462]
    assert entry[0] == 0x80  # the bootable flag mbr.bin looks for
    assert entry[4] == (0x83 if fs == "ext4" else 0x0C)
    assert int.from_bytes(entry[8:12], "little") * 512 == done.start == MIB
    if fs == "ext4":
        with attach(image) as (part, _how), mounted(part, "ro") as mnt:
            assert (mnt / "ldlinux.sys").is_file() and (mnt / "ldlinux.c32").is_file()
        fsck_clean(image)
    else:
        listing = subprocess.run(["mdir", "-a", "-i", f"{image}@@{done.start}", "::/"],
                                 check=True, capture_output=True, text=True).stdout
        assert "ldlinux  sys" in listing and "ldlinux  c32" in listing
        fsck_clean(image, fs)


@pytest.mark.parametrize("features", ["^64bit", ""], ids=["ext4-no64bit", "ext4-default"])
def test_sync_unchanged_update_on_a_real_ext4(tmp_path: Path, shared: Path, features: str) -> None:
    image = tmp_path / "disk.img"
    provision(image, size_mib=64, ext4_features=features)
    k, i = put_pair(shared, os.urandom(3 * MIB), os.urandom(9 * MIB))
    with attach(image) as (part, _how), mounted(part) as mnt:
        result = sync_boot_dir(mnt, k, i, APPEND)
        assert result.status is SyncStatus.UPDATED, result.reason
    fsck_clean(image)

    # A boot that finds the pair unchanged, mounted read-only as the agent does
    # (remounting only if it must write): the image stays byte-identical.
    before = image_digest(image)

    def must_not_write() -> None:
        raise AssertionError("an unchanged sync asked to write")

    with attach(image) as (part, _how), mounted(part, "ro") as mnt:
        result = sync_boot_dir(mnt, k, i, APPEND, before_write=must_not_write)
        assert result.status is SyncStatus.UNCHANGED, result.reason
    assert image_digest(image) == before

    k, i = put_pair(shared, os.urandom(4 * MIB), os.urandom(8 * MIB))
    with attach(image) as (part, _how), mounted(part) as mnt:
        result = local_only(mnt, k, i, APPEND)
        assert result.status is SyncStatus.UPDATED, result.reason
        check_pair(mnt, k, i)
    fsck_clean(image)


def test_full_partition_fails_and_keeps_the_old_pair(tmp_path: Path, shared: Path) -> None:
    image = tmp_path / "disk.img"
    provision(image, size_mib=24)
    k, i = put_pair(shared, os.urandom(6 * MIB), os.urandom(4 * MIB))
    with attach(image) as (part, _how), mounted(part) as mnt:
        assert sync_boot_dir(mnt, k, i, APPEND).status is SyncStatus.UPDATED
        config = (mnt / "extlinux.conf").read_bytes()
        old_k, old_i = shared / "old-k", shared / "old-i"
        shutil.copyfile(k, old_k)
        shutil.copyfile(i, old_i)
        k, i = put_pair(shared, os.urandom(7 * MIB), os.urandom(7 * MIB))
        result = sync_boot_dir(mnt, k, i, APPEND)
        assert result.status is SyncStatus.FAILED
        assert "No space left on device" in result.reason and "MiB free" in result.reason
        assert (mnt / "extlinux.conf").read_bytes() == config
        check_pair(mnt, old_k, old_i)  # and nothing else in ssi/: temp files removed
    fsck_clean(image)


# ---------------------------------------------------------------- QEMU


def make_initrd(path: Path, marker: str, pad: int) -> Path:
    """A busybox ramdisk whose /init prints marker and the command line, then powers off."""
    a = Archive()
    for d in ("bin", "dev", "proc"):
        a.dir(d)
    a.file("bin/busybox", Path("/bin/busybox"), 0o755)
    a.device("dev/console", stat.S_IFCHR, 5, 1, 0o600)
    a.data("init", (
        "#!/bin/busybox sh\n"
        "/bin/busybox mount -t proc proc /proc\n"
        f'echo "SSI-LOCAL-BOOT {marker}"\n'
        'echo "CMDLINE: $(/bin/busybox cat /proc/cmdline)"\n'
        "/bin/busybox poweroff -f\n").encode(), 0o755)
    # Bulk, so extlinux reads a multi-extent file as a real ramdisk makes it.
    a.data("pad", os.urandom(pad))
    with open(path, "wb") as f:
        a.write(f)
    return path


@pytest.fixture(scope="module")
def vmlinuz() -> Path:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed (make deps)")
    from vm_tests.kernel import kernel

    return kernel().vmlinuz


def boot_disk(image: Path, log: Path) -> str:
    with open(log, "wb") as out:
        subprocess.run(["qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-nographic",
                        "-no-reboot", "-drive", f"file={image},format=raw"],
                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                       timeout=180, check=False)
    return log.read_bytes().decode(errors="replace").replace("\r", "")


@pytest.mark.vm
@pytest.mark.parametrize("fs,features", [("ext4", "^64bit"), ("ext4", ""), ("vfat", "")],
                         ids=["ext4-no64bit", "ext4-default", "vfat"])
def test_disk_alone_boots_the_synced_pair(tmp_path: Path, shared: Path, vmlinuz: Path,
                                          fs: str, features: str) -> None:
    image = tmp_path / "disk.img"
    provision(image, fs=fs, size_mib=128, ext4_features=features)
    shutil.copyfile(vmlinuz, shared / "boot/vmlinuz")
    k, i = shared / "boot/vmlinuz", shared / "boot/initrd.img"

    def sync_twice(boot_dir: Path) -> None:
        # The first pair, then an update: the disk must boot the second.
        make_initrd(i, "gen1", 4 * MIB)
        assert local_only(boot_dir, k, i, APPEND).status is SyncStatus.UPDATED
        make_initrd(i, "gen2", 24 * MIB)
        assert local_only(boot_dir, k, i, APPEND).status is SyncStatus.UPDATED
        check_pair(boot_dir, k, i)

    if fs == "ext4":
        with attach(image) as (part, _how), mounted(part) as mnt:
            sync_twice(mnt)
        fsck_clean(image)
    else:
        tree = tmp_path / "fat"
        tree.mkdir()
        sync_twice(tree)
        subprocess.run(["mcopy", "-s", "-i", f"{image}@@{MIB}", str(tree / "extlinux.conf"),
                        str(tree / "ssi"), "::/"], check=True)
        fsck_clean(image, fs)
    console = boot_disk(image, tmp_path / "console.log")
    pair = EXTLINUX.parse(
        (tmp_path / "fat/extlinux.conf").read_bytes() if fs == "vfat" else _config(image))
    assert pair is not None
    assert "SSI-LOCAL-BOOT gen2" in console, console[-3000:]
    assert f"BOOT_IMAGE=/{pair.kernel.name} " in console
    assert f"initrd=/{pair.initrd.name}" in console


@pytest.mark.vm
def test_a_partition_provisioned_by_lilo_ssi_boots(
        tmp_path: Path, shared: Path, vmlinuz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """lilo.ssi --provision on partition 1 of a disk as fdisk leaves it (boot code all
    zero, nothing active, another partition after it), lilo.ssi --local-only --boot-dir
    fills it, and the BIOS boots it: mbr.bin, the active flag and extlinux are all the
    command's doing."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(160 * MIB)
    subprocess.run(["sfdisk", "-q", str(image)], check=True,
                   input=b"label: dos\nstart=2048, size=128M, type=83\ntype=83\n")
    shutil.copyfile(vmlinuz, shared / "boot/vmlinuz")
    k, i = shared / "boot/vmlinuz", make_initrd(shared / "boot/initrd.img", "provisioned",
                                                 4 * MIB)
    (shared / "etc/ssi").mkdir(parents=True)
    (shared / "etc/ssi/cmdline").write_text(f"root=/dev/vda2 {APPEND}\n")
    with attach(image) as (part, how):
        assert how in ("partscan", "partx"), how  # a partition of a disk, not an offset loop
        assert lilo_ssi(["--provision", str(part)]) == 0
        with mounted(part) as mnt:
            assert lilo_ssi(["--root", str(shared), "--local-only", "--boot-dir", str(mnt)]) == 0
            check_pair(mnt, k, i)
    out = capsys.readouterr().out
    assert "put Syslinux's mbr.bin into the boot code" in out
    assert "marked partition 1 active" in out and ": updated (" in out
    fsck_clean(image)
    console = boot_disk(image, tmp_path / "console.log")
    assert "SSI-LOCAL-BOOT provisioned" in console, console[-3000:]
    assert "root=/dev/vda2 console=ttyS0,115200 panic=-1" in console


def _config(image: Path) -> bytes:
    with attach(image) as (part, _how), mounted(part, "ro") as mnt:
        return (mnt / "extlinux.conf").read_bytes()
