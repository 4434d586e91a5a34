"""File operations of a sync: the changes (FsOps, the fault-injection seam) and the reads.

Every change to the partition goes through an FsOps, and so do the reads of
copies being hashed: tests subclass it to cut the power or fail at any step
(tests/unit/test_bootpair.py). Reads open with O_NOATIME so that an
unchanged check writes nothing.

`checkpoint` is what makes the protocol safe for a reader that replays no
journal (docs/architecture.md, "The local boot partition: commit protocol"):
after it, every change so far is at its home location on the disk, not
only in the journal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import xxhash

from linuxrc_agent import atomic, syscalls
from linuxrc_agent.bootpair.pair import FileId

CHUNK = 1 << 20
# <linux/fs.h>, <uapi/linux/ext4.h> (x86_64 encodings).
FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)
EXT4_IOC_CHECKPOINT = 0x4004662B  # _IOW('f', 43, __u32); Linux 5.13+


class FsOps(atomic.Ops):
    """atomic.Ops (create, write, fsync, rename, unlink, fsync a directory) plus
    what a sync needs beyond a whole-file replacement."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o755)

    def readinto(self, fd: int, buf: bytearray) -> int:
        return os.readv(fd, [buf])

    def link(self, src: Path, dst: Path) -> None:
        os.link(src, dst)

    def open_existing(self, path: Path) -> int:
        """For writing in place: no O_CREAT, no O_TRUNC (the file keeps its blocks)."""
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def checkpoint(self, path: Path) -> str:
        return checkpoint(path)


def checkpoint(path: Path) -> str:
    """Make every change to the filesystem holding path durable at its home location.

    fsync makes a change durable in ext4's journal; a bootloader reads the
    blocks where they live and replays no journal. ext4: EXT4_IOC_CHECKPOINT
    (jbd2 writes every journaled block home, flushes, marks the journal
    empty), or on kernels before 5.13 a freeze and thaw, which does the same.
    FAT and the rest keep no journal: syncfs writes everything back (FAT
    writes a renamed file's size and first cluster into its new directory
    entry only then), and an fsync flushes the disk's cache, which FAT's
    syncfs does not (measured: vm_tests/crashstates.py found the commit
    sector durable before those entries). Returns how, for the record.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if syscalls.fs_magic(str(path)) == syscalls.EXT4_SUPER_MAGIC:
            try:
                fcntl.ioctl(fd, EXT4_IOC_CHECKPOINT, struct.pack("I", 0))
                return "checkpoint"
            except OSError as e:
                if e.errno not in (errno.ENODEV, errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                if e.errno != errno.ENODEV:  # ENODEV: no journal, so nothing to checkpoint
                    with frozen(fd):
                        return "freeze"
        syscalls.syncfs(fd)
        try:
            os.fsync(fd)
        except OSError as e:
            if e.errno != errno.EINVAL:  # a filesystem that cannot fsync a directory
                raise
        return "syncfs"
    finally:
        os.close(fd)


@contextlib.contextmanager
def frozen(fd: int) -> Iterator[None]:
    """The filesystem of fd frozen (FIFREEZE: ext4 checkpoints its journal), thawed on exit.

    Only for a filesystem we know (ext4): a frozen filesystem blocks every
    writer until it is thawed.
    """
    fcntl.ioctl(fd, FIFREEZE, 0)
    try:
        yield
    finally:
        fcntl.ioctl(fd, FITHAW, 0)


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


def hash_file(path: Path, ops: FsOps | None = None, buf: bytearray | None = None) -> FileId:
    fd = open_read(path)
    try:
        return hash_fd(fd, ops or FsOps(), buf if buf is not None else bytearray(CHUNK))
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
