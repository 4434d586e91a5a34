"""Mounts and device nodes: option strings, idempotent API mounts, the no-devtmpfs fallback."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from linuxrc_agent import devnodes, mounts, syscalls
from linuxrc_agent.mounts import ApiMount, is_mountpoint, mounted, parse_options
from linuxrc_agent.syscalls import MS_NOATIME, MS_NODEV, MS_NOSUID, MS_RDONLY


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mount and mknod need root")


@pytest.mark.parametrize(("text", "flags", "expected"), [
    ("", MS_RDONLY, (MS_RDONLY, "")),
    ("noatime", MS_RDONLY, (MS_RDONLY | MS_NOATIME, "")),
    ("rw,noatime,data=journal", MS_RDONLY, (MS_NOATIME, "data=journal")),
    ("ro,nosuid,nodev,discard,,commit=5", 0, (MS_RDONLY | MS_NOSUID | MS_NODEV,
                                               "discard,commit=5")),
    ("defaults", 0, (0, "")),
    ("atime,noatime,atime", 0, (0, "")),
])
def test_parse_options(text: str, flags: int, expected: tuple[int, str]) -> None:
    assert parse_options(text, flags) == expected


def test_is_mountpoint(tmp_path: Path) -> None:
    assert is_mountpoint("/")
    assert is_mountpoint("/proc")
    assert not is_mountpoint(str(tmp_path))
    assert not is_mountpoint(str(tmp_path / "nonexistent"))


def test_supported_filesystems(tmp_path: Path) -> None:
    f = tmp_path / "filesystems"
    f.write_text("nodev\tsysfs\nnodev\ttmpfs\n\text4\n")
    assert mounts.supported_filesystems(str(f)) == {"sysfs", "tmpfs", "ext4"}
    assert mounts.supported_filesystems(str(tmp_path / "none")) == set()
    assert "proc" in mounts.supported_filesystems()


def test_api_mounts_are_idempotent(tmp_path: Path) -> None:
    need_root()
    api = (ApiMount("tmpfs", str(tmp_path / "run"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),)
    try:
        assert mounts.mount_api(api) == [f"mounted tmpfs on {tmp_path}/run"]
        assert mounts.mount_api(api) == [f"{tmp_path}/run already mounted"]
        assert is_mountpoint(str(tmp_path / "run"))
    finally:
        syscalls.umount2(str(tmp_path / "run"))


def test_dev_without_devtmpfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_root()
    real_mount = syscalls.mount

    def no_devtmpfs(source: str | None, target: str, fstype: str | None = None,
                    flags: int = 0, data: str | None = None) -> None:
        if fstype == "devtmpfs":
            raise OSError(errno.ENODEV, "No such device")
        real_mount(source, target, fstype, flags, data)

    monkeypatch.setattr(mounts, "mount", no_devtmpfs)
    dev = tmp_path / "dev"
    try:
        notes = mounts.mount_api((ApiMount("devtmpfs", str(dev), "devtmpfs", MS_NOSUID,
                                           "mode=0755"),))
        assert "no devtmpfs" in notes[0]
        st = os.stat(dev / "console")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(5, 1)
        assert sorted(os.listdir(dev)) == sorted(devnodes.ESSENTIAL)
    finally:
        syscalls.umount2(str(dev))


def test_other_mount_errors_propagate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kw: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(mounts, "mount", refuse)
    with pytest.raises(OSError):
        mounts.mount_api((ApiMount("proc", str(tmp_path / "proc"), "proc", 0),))


def test_mounted_context(tmp_path: Path) -> None:
    need_root()
    target = tmp_path / "mnt"
    with mounted("tmpfs", str(target), "tmpfs") as where:
        assert is_mountpoint(where)
        (target / "f").write_text("x")
    assert not is_mountpoint(str(target))
    assert not (target / "f").exists()


def test_ensure_node(tmp_path: Path) -> None:
    need_root()
    path = str(tmp_path / "sub" / "null")
    assert devnodes.ensure_node(path, stat.S_IFCHR | 0o666, 1, 3)
    assert not devnodes.ensure_node(path, stat.S_IFCHR | 0o666, 1, 3)  # already right
    Path(tmp_path / "stale").write_text("not a node")
    assert devnodes.ensure_node(str(tmp_path / "stale"), stat.S_IFBLK | 0o600, 254, 0)
    assert stat.S_ISBLK(os.stat(tmp_path / "stale").st_mode)


def test_ensure_from_sysfs(tmp_path: Path) -> None:
    need_root()
    tty = tmp_path / "sys" / "ttyS0"
    tty.mkdir(parents=True)
    (tty / "dev").write_text("4:64\n")
    path = devnodes.ensure_from_sysfs("ttyS0", str(tmp_path / "sys"), str(tmp_path / "dev"))
    assert path == f"{tmp_path}/dev/ttyS0"
    assert os.stat(path).st_rdev == os.makedev(4, 64)
    assert devnodes.ensure_from_sysfs("nosuch", str(tmp_path / "sys"), str(tmp_path)) is None
