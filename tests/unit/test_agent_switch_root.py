"""switch_root's checks and the ramdisk deletion, on temp trees (the exec itself runs in QEMU)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from linuxrc_agent import switch_root as switch_root_mod
from linuxrc_agent.switch_root import check_init, delete_tree, find_in_root, switch_root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "newroot"
    (r / "lib" / "systemd").mkdir(parents=True)
    (r / "sbin").mkdir()
    (r / "bin").mkdir()
    systemd = r / "lib" / "systemd" / "systemd"
    systemd.write_text("#!/bin/sh\n")
    systemd.chmod(0o755)
    (r / "sbin" / "init").symlink_to("/lib/systemd/systemd")  # absolute, as Debian has it
    (r / "sbin" / "rel").symlink_to("../lib/systemd/systemd")
    (r / "sbin" / "up").symlink_to("../../../../../../lib/systemd/systemd")
    (r / "sbin" / "loop").symlink_to("loop")
    (r / "sbin" / "host").symlink_to("/bin/true")  # exists on the host, not in the root
    (r / "bin" / "plain").write_text("data")
    return r


def test_find_in_root_keeps_absolute_links_inside(root: Path) -> None:
    target = str(root / "lib" / "systemd" / "systemd")
    assert find_in_root(str(root), "/sbin/init") == target
    assert find_in_root(str(root), "/sbin/rel") == target
    assert find_in_root(str(root), "/sbin/up") == target  # .. stops at the root
    assert find_in_root(str(root), "/sbin/../sbin/./init") == target
    assert find_in_root(str(root), "/sbin/loop") is None
    assert find_in_root(str(root), "/sbin/host") is None
    assert find_in_root(str(root), "/nowhere") is None


def test_check_init(root: Path) -> None:
    assert check_init(str(root), "/sbin/init") is None
    assert "does not exist" in (check_init(str(root), "/sbin/host") or "")
    assert "not a regular file" in (check_init(str(root), "/sbin") or "")
    assert "not executable" in (check_init(str(root), "/bin/plain") or "")


def test_delete_tree_removes_everything(tmp_path: Path) -> None:
    top = tmp_path / "ramdisk"
    (top / "a" / "b" / "c").mkdir(parents=True)
    (top / "a" / "b" / "c" / "f").write_text("x")
    (top / "file").write_text("y")
    (top / "link").symlink_to("/etc")  # removed, not followed
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        removed = delete_tree(fd, os.fstat(fd).st_dev)
    finally:
        os.close(fd)
    assert removed == 6
    assert os.listdir(top) == []
    assert os.path.isdir("/etc")


@pytest.fixture
def mounted_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "ramdisk" / "newroot"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_delete_tree_never_crosses_into_a_mount(mounted_tmpfs: Path) -> None:
    (mounted_tmpfs / "precious").write_text("the shared root")
    top = mounted_tmpfs.parent
    (top / "linuxrc").write_text("agent")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        delete_tree(fd, os.fstat(fd).st_dev)
    finally:
        os.close(fd)
    assert os.listdir(top) == ["newroot"]
    assert (mounted_tmpfs / "precious").read_text() == "the shared root"


def test_switch_root_refuses_before_any_harm(root: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not a mount point"):
        switch_root(str(root), "/sbin/init", [])
    assert (root / "sbin" / "init").is_symlink()  # nothing touched


def test_switch_root_refuses_a_root_that_is_not_an_initramfs(
        mounted_tmpfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever this host's / is (a container's may well be a tmpfs), the test sees ext4:
    # a real switch_root here would move the host's /dev and /proc.
    monkeypatch.setattr(switch_root_mod, "fs_magic", lambda path: 0xEF53)
    (mounted_tmpfs / "sbin").mkdir()
    init = mounted_tmpfs / "sbin" / "init"
    init.write_text("#!/bin/sh\n")
    init.chmod(0o755)
    with pytest.raises(RuntimeError, match="not an initramfs"):
        switch_root(str(mounted_tmpfs), "/sbin/init", [])
    assert init.exists()
    with pytest.raises(RuntimeError, match="does not exist"):
        switch_root(str(mounted_tmpfs), "/sbin/nope", [])
