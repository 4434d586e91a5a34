"""switch_root: hand PID 1 over from the ramdisk to the shared root's init.

The steps of util-linux's switch_root, for the same reasons:
1. move /dev /proc /sys /run into the new root (MS_MOVE keeps their contents,
   /run/ssi/node.env among them);
2. delete the ramdisk's files, which would otherwise pin its memory for
   the life of the node (an initramfs cannot be unmounted), staying on the
   initramfs itself: never cross into a mount, above all not the new root;
3. make the new root `/` (MS_MOVE onto /, chroot .), and exec init with a
   clean environment.

Everything that can fail is checked before step 2: after it there is no
ramdisk left to fall back to, not even the rescue shell.
"""

from __future__ import annotations

import os
import stat
import time
from typing import NoReturn

from linuxrc_agent import console, proc, rescue
from linuxrc_agent.mounts import is_mountpoint
from linuxrc_agent.syscalls import (
    MNT_DETACH,
    MS_MOVE,
    RAMFS_MAGIC,
    TMPFS_MAGIC,
    fs_magic,
    mount,
    umount2,
)

MOVED = ("/dev", "/proc", "/sys", "/run")
# What the kernel tries when init= fails, as the last resort after the point of no return.
FALLBACK_INITS = ("/sbin/init", "/etc/init", "/bin/init", "/bin/sh")
_MAX_LINKS = 40


def find_in_root(root: str, path: str) -> str | None:
    """`path` as seen from inside `root` (symlinks resolved relative to `root`), as a host path.

    Needed before chroot: /sbin/init is often an absolute symlink
    (/lib/systemd/systemd), which from the ramdisk would point into the ramdisk.
    Returns None when a component is missing or the links loop.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        host = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(host)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def check_init(root: str, init: str) -> str | None:
    """Why `init` cannot be exec'd in `root`, or None when it can."""
    host = find_in_root(root, init)
    if host is None:
        return f"{init} does not exist in {root} (or is a dangling symlink)"
    if not os.path.isfile(host):
        return f"{init} in {root} is not a regular file"
    if not os.access(host, os.X_OK):
        return f"{init} in {root} is not executable"
    return None


def delete_tree(dir_fd: int, dev: int) -> int:
    """Remove everything below the open directory `dir_fd` that lives on device `dev`.

    Mount points (another st_dev) and what is under them are left alone.
    Returns the number of entries removed.
    """
    removed = 0
    with os.scandir(dir_fd) as entries:
        for entry in list(entries):
            try:
                st = entry.stat(follow_symlinks=False)
                if st.st_dev != dev:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                  dir_fd=dir_fd)
                    try:
                        removed += delete_tree(sub, dev)
                    finally:
                        os.close(sub)
                    os.rmdir(entry.name, dir_fd=dir_fd)
                else:
                    os.unlink(entry.name, dir_fd=dir_fd)
                removed += 1
            except OSError:
                pass  # a busy mount point, a file vanishing: keep freeing the rest
    return removed


def move_api_mounts(newroot: str) -> list[str]:
    """MS_MOVE /dev /proc /sys /run under `newroot`; returns notes for the debug log."""
    notes = []
    new_dev = os.stat(newroot).st_dev
    for path in MOVED:
        if not is_mountpoint(path):
            continue
        target = newroot + path
        try:
            ok = os.stat(target).st_dev == new_dev and os.path.isdir(target)
        except OSError:
            ok = False
        if ok:
            mount(path, target, None, MS_MOVE)
            notes.append(f"moved {path}")
        else:
            # The new root has no such directory: detach, as util-linux does.
            umount2(path, MNT_DETACH)
            notes.append(f"{target} missing: detached {path}")
    return notes


def switch_root(newroot: str, init: str, args: list[str]) -> None:
    """Make `newroot` the root and exec `init`. Returns only by raising, before any harm.

    Raises OSError or RuntimeError when a check fails (the ramdisk is still
    whole then); once the ramdisk is deleted it never returns.
    """
    if not is_mountpoint(newroot):
        raise RuntimeError(f"{newroot} is not a mount point")
    problem = check_init(newroot, init)
    if problem is not None:
        raise RuntimeError(problem)
    if fs_magic("/") not in (RAMFS_MAGIC, TMPFS_MAGIC):
        raise RuntimeError("/ is not an initramfs (ramfs or tmpfs): not deleting it")
    for note in move_api_mounts(newroot):
        console.debug(f"switch_root: {note}")
    os.chdir(newroot)
    old_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    started = time.monotonic()
    removed = delete_tree(old_root, os.fstat(old_root).st_dev)
    os.close(old_root)
    console.debug(f"switch_root: freed the ramdisk ({removed} entries, "
                  f"{time.monotonic() - started:.3f} s)")
    # The point of no return is behind us: from here on nothing may raise.
    try:
        mount(".", "/", None, MS_MOVE)
        os.chroot(".")
        os.chdir("/")
    except OSError as e:
        _stuck(f"cannot make {newroot} the root: {e}")
    proc.reset_signals()
    env = proc.clean_env()
    for candidate in dict.fromkeys((init, *FALLBACK_INITS)):
        try:
            os.execve(candidate, [candidate, *args], env)
        except OSError as e:
            console.fatal(f"exec {candidate} failed: {e.strerror}")
    _stuck("no init could be started in the new root")


def _stuck(why: str) -> NoReturn:
    """After the ramdisk is gone there is no shell to offer: say so and reboot."""
    console.fatal(f"{why}; the ramdisk is already freed, so no rescue shell: "
                  "check the shared root")
    rescue.reboot_after()
    raise AssertionError("unreachable")  # reboot_after never returns
