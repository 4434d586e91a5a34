"""The shared root's own filesystem, so that a ramdisk built with defaults can mount it.

The default module set (kmod.DEFAULT_MODULES) leaves out filesystems that are
rarely a cluster's root (xfs: 0.7 MB of image). A cluster whose root is one of
them must still boot when its ramdisk is rebuilt on defaults, so mkinitrd.ssi
adds the type wherever the root's type is written down on the admin side:

- `rootfstype=` in the cluster's kernel arguments (ROOT/etc/ssi/cmdline);
- the `/` line of ROOT/etc/fstab (the shared root's own table);
- the filesystem ROOT itself lies on (/proc/self/mountinfo): the shared root
  tree mounted on the admin host, or the host's root when ROOT is /.

Each is asked for as the kernel asks (`fs-TYPE`, modules.alias), and is not
required: a type built into the kernel, or one with no module, adds nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from linuxrc_agent import cmdline
from mkinitrd_ssi import cli

# Types no block device holds: nothing for the default set to add (NFS is in it).
_NOT_BLOCK = frozenset({"auto", "none", "swap", "nfs", "nfs4", "cifs", "smb3", "tmpfs", "ramfs",
                        "rootfs", "overlay", "autofs", "9p", "virtiofs", "proc", "sysfs"})
MOUNTINFO = Path("/proc/self/mountinfo")


def root_filesystems(root: cli.Root) -> dict[str, str]:
    """{filesystem type: where it was found} for the shared root, block types only."""
    found: dict[str, str] = {}

    def note(fstype: str, where: str) -> None:
        if fstype and fstype not in _NOT_BLOCK and not fstype.startswith("fuse"):
            found.setdefault(fstype, where)

    path = root(cli.CMDLINE_FILE)
    try:
        words = cmdline.tokenize(path.read_text()).kernel
    except (OSError, UnicodeDecodeError):
        words = ()
    for word in words:
        if word.key == "rootfstype" and word.value:
            note(word.value, f"rootfstype= in {path}")
    fstab = root("/etc/fstab")
    for fstype in fstab_types(fstab, "/"):
        note(fstype, str(fstab))
    mounted = mounted_type(Path(os.path.realpath(root("/"))))
    if mounted is not None:
        note(mounted, f"{root('/')} is on it")
    return found


def fstab_types(fstab: Path, mountpoint: str) -> list[str]:
    """The types fstab gives mountpoint (comma lists split), [] without such a line."""
    try:
        text = fstab.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not fields[0].startswith("#") and fields[1] == mountpoint:
            return fields[2].split(",")
    return []


def mounted_type(path: Path, mountinfo: Path | None = None) -> str | None:
    """The type of the filesystem path lies on: the deepest mount holding it (the last
    mounted, where one hides another)."""
    try:
        lines = (mountinfo or MOUNTINFO).read_text(errors="replace").splitlines()
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        point = unescape_mount_field(fields[4])
        if path == Path(point) or Path(point) in path.parents:
            depth = len(Path(point).parts)
            if best is None or depth >= best[0]:
                best = (depth, tail.split()[0])
    return best[1] if best else None


def unescape_mount_field(field: str) -> str:
    # /proc/self/mounts, mountinfo and /proc/swaps write blanks and backslashes as octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
