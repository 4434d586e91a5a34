"""Device nodes in /dev, for kernels without devtmpfs (or a /dev that lacks one).

The numbers come from the kernel itself (/proc/partitions, /sys/class/*/dev),
never from a table of guesses, except the handful of fixed character devices
every early userspace needs.
"""

from __future__ import annotations

import os
import stat

# name: (mode, major, minor) -- the numbers are fixed by Documentation/admin-guide/devices.txt.
ESSENTIAL = {
    "console": (stat.S_IFCHR | 0o600, 5, 1),
    "tty": (stat.S_IFCHR | 0o666, 5, 0),
    "null": (stat.S_IFCHR | 0o666, 1, 3),
    "zero": (stat.S_IFCHR | 0o666, 1, 5),
    "full": (stat.S_IFCHR | 0o666, 1, 7),
    "random": (stat.S_IFCHR | 0o666, 1, 8),
    "urandom": (stat.S_IFCHR | 0o666, 1, 9),
    "kmsg": (stat.S_IFCHR | 0o644, 1, 11),
}


def ensure_node(path: str, mode: int, major: int, minor: int) -> bool:
    """Create the node unless a node with that type and number is there; True if created.

    A wrong node (a stale file, other numbers) is replaced: opening it would
    reach the wrong device.
    """
    want = os.makedev(major, minor)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_IFMT(st.st_mode) == stat.S_IFMT(mode) and st.st_rdev == want:
            return False
        os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mknod(path, mode, want)
    return True


def ensure_essential(dev: str = "/dev") -> list[str]:
    """The fixed character devices; returns the names created."""
    made = []
    for name, (mode, major, minor) in ESSENTIAL.items():
        if ensure_node(f"{dev}/{name}", mode, major, minor):
            made.append(name)
    return made


def ensure_from_sysfs(name: str, sys_class: str = "/sys/class/tty", dev: str = "/dev",
                      block: bool = False) -> str | None:
    """Create /dev/NAME from /sys/class/CLASS/NAME/dev ("major:minor"); its path, or None."""
    try:
        with open(f"{sys_class}/{name}/dev") as f:
            major, minor = (int(x) for x in f.read().strip().split(":"))
    except (OSError, ValueError):
        return None
    path = f"{dev}/{name.replace('!', '/')}"
    kind = stat.S_IFBLK if block else stat.S_IFCHR
    try:
        ensure_node(path, kind | 0o600, major, minor)
    except OSError:
        return None
    return path
