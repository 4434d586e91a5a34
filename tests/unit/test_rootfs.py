"""The shared root's filesystem joins the default module set (mkinitrd_ssi/initrd/rootfs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkinitrd_ssi import cli
from mkinitrd_ssi.initrd import image, rootfs
from mkinitrd_ssi.mkinitrd import main
from tests.unit.fake_ko import fake_ko
from tests.unit.test_mkinitrd import KVER, make_moddir, members

MOUNTINFO = r"""22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 254:17 / /srv/ssi\040root rw,relatime shared:9 - xfs /dev/vdb1 rw,attr2
31 30 0:44 / /srv/ssi\040root/proc rw - proc proc rw
40 22 0:50 / /mnt/nfs rw - nfs4 10.0.0.1:/export rw
"""


@pytest.fixture
def mountinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    monkeypatch.setattr(rootfs, "MOUNTINFO", path)
    return path


def test_mounted_type_is_the_deepest_mount_holding_the_path(mountinfo: Path) -> None:
    assert rootfs.mounted_type(Path("/srv/ssi root")) == "xfs"
    assert rootfs.mounted_type(Path("/srv/ssi root/usr")) == "xfs"
    assert rootfs.mounted_type(Path("/srv/ssi")) == "ext4"  # a prefix, not a parent
    assert rootfs.mounted_type(Path("/srv/ssi root/proc/1")) == "proc"


def test_root_filesystems_where_each_is_written(tmp_path: Path, mountinfo: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/ssi").mkdir(parents=True)
    (root / "etc/fstab").write_text("# <fs> <dir> <type>\nLABEL=ssiroot / btrfs ro 0 1\n"
                                    "tmpfs /tmp tmpfs defaults 0 0\n")
    (root / "etc/ssi/cmdline").write_text("root=LABEL=ssiroot rootfstype=xfs quiet\n")
    found = rootfs.root_filesystems(cli.Root(root))
    assert list(found) == ["xfs", "btrfs", "ext4"]  # cmdline, fstab, the host's mount
    assert "rootfstype=" in found["xfs"] and "fstab" in found["btrfs"]
    # Network and virtual types add nothing: NFS is in the default set.
    (root / "etc/fstab").write_text("10.0.0.1:/export / nfs4 ro 0 0\n")
    (root / "etc/ssi/cmdline").unlink()
    assert list(rootfs.root_filesystems(cli.Root(root))) == ["ext4"]


def test_an_xfs_shared_root_keeps_its_driver_in_a_default_build(
        tmp_path: Path, mountinfo: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SSI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(image.DEFAULT_LEVEL, image.Compression.ZSTD, 3)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/ssitab").write_text("1 10.0.0.11 52:54:00:00:00:01 0 -\n")
    moddir = make_moddir(root)
    (moddir / "kernel/fs/xfs").mkdir(parents=True)
    (moddir / "kernel/fs/xfs/xfs.ko").write_bytes(fake_ko("xfs"))
    with (moddir / "modules.dep").open("a") as f:
        f.write("kernel/fs/xfs/xfs.ko:\n")
    with (moddir / "modules.alias").open("a") as f:
        f.write("alias fs-xfs xfs\n")
    out = root / "boot/initrd-ssi.img"

    def carried() -> str:
        assert main(["--root", str(root), "--kver", KVER, "--no-dhcpd", "-v",
                     "--compress", "none"]) == 0
        return members(out)["etc/ssi/modules"].data.decode()

    assert "xfs.ko" not in carried()  # ext4 on the host, nothing says xfs
    (root / "etc/fstab").write_text("LABEL=ssiroot / xfs ro 0 1\n")
    assert "kernel/fs/xfs/xfs.ko" in carried()
    assert "carrying xfs" in capsys.readouterr().err
