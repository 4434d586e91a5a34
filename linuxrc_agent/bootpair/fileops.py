"""File operations of a sync: the changes (FsOps, the fault-injection seam) and the reads.

Every change to the partition goes through an FsOps, and so do the reads of
copies being hashed: tests subclass it to cut the power or fail at any step
(tests/unit/test_bootpair_*.py). Reads open with O_NOATIME so that an
unchanged check writes nothing.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import xxhash

from linuxrc_agent import atomic
from linuxrc_agent.bootpair.pair import FileId

CHUNK = 1 << 20


class FsOps(atomic.Ops):
    """atomic.Ops (create, write, fsync, rename, unlink, fsync a directory) plus
    what a sync needs beyond a whole-file replacement."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o755)

    def readinto(self, fd: int, buf: bytearray) -> int:
        return os.readv(fd, [buf])


def open_read(path: Path) -> int:
    """Open for reading without touching atime: an unchanged check writes nothing."""
    flags = os.O_RDONLY | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        # O_NOATIME needs ownership or CAP_FOWNER; without it the caller's
        # read-only mount is what keeps the disk untouched.
        return os.open(path, flags)


def hash_fd(fd: int, ops: FsOps, buf: bytearray) -> FileId:
    digest = xxhash.xxh3_128()
    size = 0
    view = memoryview(buf)
    while n := ops.readinto(fd, buf):
        digest.update(view[:n])
        size += n
    return FileId(size, digest.hexdigest())


def hash_file(path: Path, ops: FsOps | None = None) -> FileId:
    fd = open_read(path)
    try:
        return hash_fd(fd, ops or FsOps(), bytearray(CHUNK))
    finally:
        os.close(fd)


def read_small(path: Path, limit: int = 1 << 20) -> bytes | None:
    """A config or manifest (None: no such file); past limit it is no file of
    ours, and reading on only costs."""
    try:
        fd = open_read(path)
    except FileNotFoundError:
        return None
    try:
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def resolve_in_root(path: Path, root: Path) -> Path:
    """path with its symlinks followed as if root were /.

    The shared root's /boot/vmlinuz -> /boot/vmlinuz-X, mounted on /newroot,
    means /newroot/boot/vmlinuz-X, not the ramdisk's /boot/vmlinuz-X.
    """
    try:
        rest = list(path.relative_to(root).parts)
    except ValueError:
        return path
    out, hops = root, 0
    while rest:
        part = rest.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            out = out.parent if out != root else root
            continue
        candidate = out / part
        if not candidate.is_symlink():
            out = candidate
            continue
        hops += 1
        if hops > 40:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
        target = os.readlink(candidate)
        if target.startswith("/"):
            out = root
        rest = list(Path(target).parts) + rest
        if rest and rest[0] == "/":
            rest.pop(0)
    return out
