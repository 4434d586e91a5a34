"""lilo.ssi --provision on real devices: a disk image, a partition of a loop-attached
image, --force, devices in use, and dry runs that change nothing.

Root only (loop devices, mount). This host's kernel has no MBR partition
parser: `attach` declares partitions with partx (see test_local_partition.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from linuxrc_agent import mac_match
from linuxrc_agent.probe import partition_table, probe
from mkinitrd_ssi.lilo import main
from mkinitrd_ssi.local.partition import MBR_BIN, attach, mounted

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices"),
              pytest.mark.skipif(shutil.which("losetup") is None, reason="no losetup"),
              pytest.mark.usefixtures("no_loop_leaks")]

MiB = 1 << 20
MBR = next(Path(p) for p in MBR_BIN if Path(p).is_file()).read_bytes()[:440]


def digest(path: Path) -> str:
    return xxhash.xxh3_128_hexdigest(path.read_bytes())


def flags(image: Path) -> list[int]:
    head = image.read_bytes()[:512]
    return [head[446 + 16 * i] for i in range(4)]


def fsck(device: Path) -> None:
    out = subprocess.run(["e2fsck", "-fn", str(device)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture
def two_partitions(tmp_path: Path) -> Path:
    """A 96 MiB image: a dos table (partition 1: 48 MiB, partition 2: the rest, holding
    ext4 LABEL=data), all-zero boot code, no active partition: as fdisk leaves a disk."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(96 * MiB)
    subprocess.run(["sfdisk", "-q", str(image)], check=True,
                   input=b"label: dos\nstart=2048, size=48M, type=83\ntype=83\n")
    table = partition_table(str(image))
    assert table is not None
    second = table.partitions[1]
    data = tmp_path / "data.img"
    with open(data, "wb") as f:
        f.truncate(second.size)
    subprocess.run(["mkfs.ext4", "-q", "-L", "data", str(data)], check=True)
    with open(image, "r+b") as f:
        f.seek(second.start)
        f.write(data.read_bytes())
    return image


@pytest.fixture
def loop(two_partitions: Path) -> Iterator[tuple[Path, Path]]:
    """The image on a loop device, with its partitions: (disk, partition 1)."""
    with attach(two_partitions) as (part, how):
        assert how in ("partscan", "partx"), how  # a real partition, not an offset loop
        disk = Path("/dev") / Path(os.path.realpath(f"/sys/class/block/{part.name}")).parent.name
        # attach() declared partition 1 alone (where the kernel does not scan): both, here.
        subprocess.run(["partx", "--update", str(disk)], check=True)
        yield disk, part


def second_partition(image: Path) -> bytes:
    table = partition_table(str(image))
    assert table is not None
    p = table.partitions[1]
    with open(image, "rb") as f:
        f.seek(p.start)
        return f.read(p.size)


def test_provision_a_new_image_then_refuse_then_force(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "new.img"
    assert main(["--provision", str(image), "--size", "64", "--label", "n4boot"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"provisioned partition 1 of {image} (new dos table, Syslinux's "
                          f"mbr.bin): ext4 LABEL=n4boot UUID=")
    assert out.endswith(", 63.0 MiB, extlinux installed; next: boot a node from it (its "
                        "agent fills it), or mount partition 1 and run lilo.ssi --local-only "
                        "--boot-dir DIR")
    assert image.read_bytes()[:440] == MBR and flags(image)[0] == 0x80
    fs = probe(str(image), MiB)
    assert fs is not None and (fs.fstype, fs.label) == ("ext4", "n4boot")
    with attach(image) as (part, _how):
        fsck(part)
        with mounted(part, "ro") as mnt:
            assert (mnt / "ldlinux.sys").is_file()

    before = digest(image)
    assert main(["--provision", str(image)]) == 1
    err = capsys.readouterr().err
    assert f"{image} holds a dos partition table (partition 1: ext4 LABEL=n4boot, 63.0 MiB): " \
        "lilo.ssi --provision would destroy it" in err
    assert digest(image) == before

    assert main(["--provision", str(image), "--force", "--fs", "vfat"]) == 0
    assert "vfat LABEL=SSIBOOT" in capsys.readouterr().out
    fs = probe(str(image), MiB)
    assert fs is not None and (fs.fstype, fs.label) == ("vfat", "SSIBOOT")


def test_provision_a_partition_of_a_loop_attached_image(
        two_partitions: Path, loop: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    disk, part = loop
    other = second_partition(two_partitions)
    assert main(["--provision", str(part)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        f"{disk}: put Syslinux's mbr.bin into the boot code (its 440 bytes are all zero)",
        f"{disk}: marked partition 1 active"]
    assert lines[2].startswith(f"provisioned {part}: ext4 LABEL=ssiboot UUID=")
    assert lines[2].endswith(", 48.0 MiB, extlinux installed; next: lilo.ssi --local-only "
                             "fills it now, or reboot: the agent fills it")
    assert len(lines) == 3
    fsck(part)
    with mounted(part, "ro") as mnt:
        assert sorted(p.name for p in mnt.iterdir()) == ["ldlinux.c32", "ldlinux.sys",
                                                         "lost+found"]
    with open(disk, "rb") as f:
        head = f.read(512)
    assert head[:440] == MBR and [head[446 + 16 * i] for i in range(4)] == [0x80, 0, 0, 0]
    assert second_partition(two_partitions) == other  # the disk's other partition: untouched

    # Again: it holds ext4 now. Refused, then --force; another boot loader's code stays,
    # and the active flag moves from partition 2 to 1.
    assert main(["--provision", str(part)]) == 1
    assert f"{part} holds ext4 LABEL=ssiboot: lilo.ssi --provision would destroy it" \
        in capsys.readouterr().err
    code = bytes(range(1, 256)) + bytes(range(1, 186))
    with open(disk, "r+b") as f:
        f.write(code)
        f.seek(446)
        f.write(b"\0")
        f.seek(446 + 16)
        f.write(b"\x80")
    assert main(["--provision", str(part), "--force", "--fs", "vfat", "--label", "n4"]) == 0
    out = capsys.readouterr().out
    assert f"{disk}: boot code left as it is (not all zero: another boot loader" in out
    assert f"{disk}: marked partition 1 active (partition 2 no longer)" in out
    assert f"provisioned {part}: vfat LABEL=N4 UUID=" in out
    with open(disk, "rb") as f:
        head = f.read(512)
    assert head[:440] == code and [head[446 + 16 * i] for i in range(4)] == [0x80, 0, 0, 0]
    listing = subprocess.run(["mdir", "-a", "-i", str(part), "::/"], capture_output=True,
                             text=True, check=True).stdout
    assert "ldlinux  sys" in listing
    out = subprocess.run(["fsck.vfat", "-n", str(part)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # The FAT boot sector says where the partition starts: ldlinux.sys is found by it.
    with open(part, "rb") as f:
        assert int.from_bytes(f.read(32)[28:32], "little") == 2048
    assert second_partition(two_partitions) == other


def test_provision_a_whole_disk_and_say_when_ssitab_does_not_name_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A block device that is a whole disk (a loop device here, /dev/sdb on a node)."""
    nics = mac_match.local_nics()
    if not nics:
        pytest.skip("this machine has no Ethernet NIC to be a node by")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/ssitab").write_text(f"4  10.77.0.14/24  {nics[0].mac}  1  LABEL=n4boot\n")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    disk = Path(subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                               capture_output=True, text=True).stdout.strip())
    try:
        assert main(["--root", str(tmp_path), "--provision", str(disk), "--label", "other"]) == 0
        lines = capsys.readouterr().out.splitlines()
        part = next(Path(line.split()[1]) for line in lines if line.startswith("provisioned"))
        assert lines[0].startswith(f"provisioned {part} (partition 1 of {disk}, new dos table, "
                                   "Syslinux's mbr.bin): ext4 LABEL=other UUID=")
        assert lines[0].endswith("next: lilo.ssi --local-only fills it now, or reboot: the "
                                 "agent fills it")
        assert lines[1] == ("note: node 4's bootdev in ssitab is LABEL=n4boot, which is not "
                            "this partition: make it LABEL=other, or its agent will not find it")
        fsck(part)
        # Its default label is the node's own: no note then.
        assert main(["--root", str(tmp_path), "--provision", str(disk), "--force"]) == 0
        out = capsys.readouterr().out
        assert "ext4 LABEL=n4boot UUID=" in out and "note:" not in out
    finally:
        subprocess.run(["partx", "--delete", str(disk)], check=False, capture_output=True)
        subprocess.run(["losetup", "--detach", str(disk)], check=True)
    assert image.read_bytes()[:440] == MBR and flags(image) == [0x80, 0, 0, 0]


def test_a_device_in_use_is_refused_even_with_force(
        two_partitions: Path, loop: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    disk, part = loop
    before = digest(two_partitions)
    second = Path(f"{part}"[:-1] + "2")
    with mounted(second, "ro") as mnt:
        for target in (second, disk, two_partitions):
            assert main(["--provision", str(target), "--force"]) == 1
            err = capsys.readouterr().err
            assert f"{second} is mounted on {mnt}" in err, err
            assert "--force or not" in err
    # Mounted or not, an image attached to a loop device is in use.
    assert main(["--provision", str(two_partitions), "--force"]) == 1
    assert f"is attached to {disk}" in capsys.readouterr().err
    assert digest(two_partitions) == before


def test_dry_run_changes_nothing(two_partitions: Path, loop: tuple[Path, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    disk, part = loop
    before = digest(two_partitions)
    assert main(["--provision", str(part), "-n"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"would make ext4 LABEL=ssiboot on {part} (48.0 MiB) and install extlinux on it",
        f"{disk}: would put Syslinux's mbr.bin into the boot code (its 440 bytes are all zero)",
        f"{disk}: would mark partition 1 active"]
    assert main(["--provision", str(disk), "-n", "--force"]) == 0
    out, err = capsys.readouterr()
    assert "would write a new dos partition table" in out
    assert "holds a dos partition table (partition 1: no filesystem, 48.0 MiB; partition 2: " \
        "ext4 LABEL=data, 47.0 MiB): it would be destroyed (--force)" in err
    assert digest(two_partitions) == before


def test_provision_an_esp(
        tmp_path: Path, two_partitions: Path, loop: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    # A whole image: type ef, FAT, EFI/BOOT; no mbr.bin (UEFI reads none).
    image = tmp_path / "esp.img"
    assert main(["--provision", str(image), "--size", "64", "--fs", "esp"]) == 0
    out = capsys.readouterr().out
    assert f"provisioned partition 1 of {image} (new dos table, EFI System Partition): vfat " \
        "LABEL=SSIBOOT UUID=" in out and "EFI/BOOT made, shim and GRUB at the first sync" in out
    assert not any(image.read_bytes()[:440])
    assert "type=ef" in subprocess.run(["sfdisk", "-d", str(image)], capture_output=True,
                                       text=True, check=True).stdout
    listing = subprocess.run(["mdir", "-i", f"{image}@@1M", "::/EFI"], capture_output=True,
                             text=True, check=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    assert "BOOT" in listing.stdout
    # An existing partition: its type becomes ef, the rest of the disk stays.
    disk, part = loop
    other = second_partition(two_partitions)
    assert main(["--provision", str(part), "--fs", "esp", "--label", "n4esp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"{disk}: gave partition 1 type ef, the EFI System Partition's; boot "
                        "code and flags left as they are (UEFI reads neither)")
    assert "type=ef" in subprocess.run(["sfdisk", "-d", str(disk)], capture_output=True,
                                       text=True, check=True).stdout.splitlines()[-2]
    assert "BOOT" in subprocess.run(["mdir", "-i", str(part), "::/EFI"], capture_output=True,
                                    text=True, check=True,
                                    env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout
    assert second_partition(two_partitions) == other
