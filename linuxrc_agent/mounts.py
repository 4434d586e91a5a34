"""Mounts: the API filesystems PID 1 needs, temporary mounts, and mount option strings.

Everything here is idempotent: mounting what is already mounted is a no-op,
so a stage retried after the rescue shell (where the admin may have mounted
things by hand) does not stack mounts.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import NamedTuple

from linuxrc_agent import devnodes
from linuxrc_agent.syscalls import (
    MNT_DETACH,
    MS_DIRSYNC,
    MS_LAZYTIME,
    MS_MANDLOCK,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_NOSYMFOLLOW,
    MS_RDONLY,
    MS_RELATIME,
    MS_SILENT,
    MS_STRICTATIME,
    MS_SYNCHRONOUS,
    mount,
    umount2,
)


class ApiMount(NamedTuple):
    source: str
    target: str
    fstype: str
    flags: int
    data: str | None = None


API_MOUNTS = (
    ApiMount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    ApiMount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    ApiMount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
    ApiMount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
)

# Options that are mount(2) flags, not filesystem data: `rootflags=noatime`
# must work as it does with mount(8), although the kernel passes rootflags
# to the filesystem verbatim. (set, clear)
_FLAG_OPTIONS = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0), "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0), "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0), "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0), "mand": (MS_MANDLOCK, 0), "nomand": (0, MS_MANDLOCK),
    "noatime": (MS_NOATIME, 0), "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0), "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0), "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0), "lazytime": (MS_LAZYTIME, 0),
    "nolazytime": (0, MS_LAZYTIME), "silent": (MS_SILENT, 0), "loud": (0, MS_SILENT),
    "nosymfollow": (MS_NOSYMFOLLOW, 0), "defaults": (0, 0),
}


def parse_options(text: str, flags: int = 0) -> tuple[int, str]:
    """Split `noatime,ro,data=journal` into mount(2) flags and the filesystem's data string."""
    data = []
    for option in text.split(","):
        if not option:
            continue
        if option in _FLAG_OPTIONS:
            set_, clear = _FLAG_OPTIONS[option]
            flags = (flags | set_) & ~clear
        else:
            data.append(option)
    return flags, ",".join(data)


def is_mountpoint(path: str) -> bool:
    """True when `path` is the root of a mount (works before /proc is mounted)."""
    try:
        st = os.stat(path)
        parent = os.stat(os.path.join(path, ".."))
    except OSError:
        return False
    return st.st_dev != parent.st_dev or st.st_ino == parent.st_ino


def mount_api(api: tuple[ApiMount, ...] = API_MOUNTS) -> list[str]:
    """Mount /proc, /sys, /dev, /run unless mounted; returns notes for the debug log.

    Without devtmpfs (a kernel built without it) /dev becomes a tmpfs with the
    essential nodes; block nodes follow from /proc/partitions later.
    """
    notes = []
    for m in api:
        os.makedirs(m.target, mode=0o755, exist_ok=True)
        if is_mountpoint(m.target):
            notes.append(f"{m.target} already mounted")
            continue
        try:
            mount(m.source, m.target, m.fstype, m.flags, m.data)
            notes.append(f"mounted {m.fstype} on {m.target}")
        except OSError as e:
            if m.fstype != "devtmpfs" or e.errno != errno.ENODEV:
                raise
            mount("tmpfs", m.target, "tmpfs", m.flags, m.data)
            made = devnodes.ensure_essential(m.target)
            notes.append(f"no devtmpfs in this kernel: tmpfs on {m.target} with "
                         f"{', '.join(made) or 'no'} nodes")
    return notes


@contextlib.contextmanager
def mounted(source: str, target: str, fstype: str, flags: int = 0,
            data: str | None = None) -> Iterator[str]:
    """Mount for the duration of a `with` block (e.g. a local boot partition during sync)."""
    os.makedirs(target, mode=0o755, exist_ok=True)
    mount(source, target, fstype, flags, data)
    try:
        yield target
    finally:
        try:
            umount2(target)
        except OSError:
            # Busy (an open file we leaked): detach, so the next mount is not stacked.
            umount2(target, MNT_DETACH)


def supported_filesystems(path: str = "/proc/filesystems") -> set[str]:
    """Filesystem types the running kernel has now (built in or loaded)."""
    try:
        with open(path) as f:
            return {line.split()[-1] for line in f if line.strip()}
    except OSError:
        return set()
