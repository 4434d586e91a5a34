"""Whole-file replacement that a crash cannot tear: the one primitive every writer uses.

A fresh temp file beside the target, written whole and fsynced, renamed over
the target, then the directory fsynced. After a crash a reader that mounts
the filesystem (and so replays its journal) sees the old file or the new one,
never part of one, and once `replace` returns the new file is durable.

A reader that replays nothing (a bootloader) is another matter: the rename
is atomic in the journal, not in the directory and inode blocks it reaches
later. The local boot partition's commit is built for that reader
(linuxrc_agent.bootpair, docs/architecture.md "The local boot partition:
commit protocol"); it still uses this primitive where a journal-replaying
reader is enough.

Standard library only and cheap to import: PID 1 writes /run/ssi/node.env
with it, the admin tools their outputs (mkinitrd_ssi.atomic adds diffs,
backups and error wording on top).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from collections.abc import Callable, Iterator

StrPath = str | os.PathLike[str]

# Several temp files of one process may coexist (a target and its .bak).
_serial = itertools.count()


class Ops:
    """Every call that changes a filesystem, in one place.

    The fault-injection seam: tests subclass it (through
    bootpair.fileops.FsOps) to cut the power or fail before any step and to
    check the order of writes, fsyncs and renames.
    """

    def open_new(self, path: StrPath) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: StrPath, dst: StrPath) -> None:
        os.replace(src, dst)  # rename(2), replacing dst

    def unlink(self, path: StrPath) -> None:
        os.unlink(path)

    def fsync_dir(self, path: StrPath) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        except OSError as e:
            # A few filesystems cannot fsync a directory; their renames are
            # then as durable as they get.
            if e.errno != errno.EINVAL:
                raise
        finally:
            os.close(fd)


OPS = Ops()


def temp_name(target_name: str) -> str:
    """The name of a temp file for target_name: hidden, beside it, ending in .tmp."""
    return f".{target_name}.{os.getpid()}-{next(_serial)}.tmp"


def is_temp_of(name: str, target_name: str) -> bool:
    """True for a leftover temp file of target_name (also the older `.NAME.tmp-PID` form)."""
    return name.startswith(f".{target_name}.")


def write_all(ops: Ops, fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += ops.write(fd, view[done:])


def _create(ops: Ops, path: str, mode: int | None) -> int:
    try:
        fd = ops.open_new(path)
    except FileExistsError:
        # Our pid and serial: a leftover of a dead process that had our pid
        # (PID 1 has it at every boot). unlink does not follow a planted symlink.
        ops.unlink(path)
        fd = ops.open_new(path)
    if mode is not None:
        try:
            os.fchmod(fd, mode)  # exact, whatever the umask
        except BaseException:
            ops.close(fd)
            raise
    return fd


def _commit(ops: Ops, tmp: str, target: str) -> None:
    ops.rename(tmp, target)
    ops.fsync_dir(os.path.dirname(target) or ".")


def replace(target: StrPath, data: bytes | memoryview, *, mode: int | None = None,
            ops: Ops = OPS, tmp_dir: StrPath | None = None,
            before_rename: Callable[[], None] | None = None) -> None:
    """Make target hold exactly data, atomically and durably.

    tmp_dir: where the temp file is written (default: beside target; it must
    be on target's filesystem). The boot partition's first sync keeps it out
    of the directory that names what boots. before_rename: runs once the temp
    file is durable, before it replaces target (that sync checkpoints there).

    mode None: 0644 less the umask (a filesystem that cannot chmod, as vfat,
    is never asked to). On an error the temp file is removed and target is
    untouched. A power cut (simulated by a BaseException that is not an
    Exception) runs no clean-up, as a real one would not: the next writer
    of the directory removes the leftover (is_temp_of).
    """
    target = os.fspath(target)
    where = os.path.dirname(target) if tmp_dir is None else os.fspath(tmp_dir)
    tmp = os.path.join(where, temp_name(os.path.basename(target)))
    fd = _create(ops, tmp, mode)
    try:
        try:
            write_all(ops, fd, data)
            ops.fsync(fd)
        finally:
            ops.close(fd)
        if before_rename is not None:
            before_rename()
        _commit(ops, tmp, target)
    except Exception:
        if os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                ops.unlink(tmp)
        raise


@contextlib.contextmanager
def staged(target: StrPath, *, mode: int | None = None, ops: Ops = OPS) -> Iterator[str]:
    """Yield the path of a fresh empty temp file beside target; on a clean exit
    fsync it and rename it over target, as `replace` does.

    For writers that need a path rather than bytes (a tool writing the file,
    a checker run on it before it replaces anything).
    """
    target = os.fspath(target)
    tmp = os.path.join(os.path.dirname(target), temp_name(os.path.basename(target)))
    ops.close(_create(ops, tmp, None))
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)  # after the writer: a tool may have replaced the file
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ops.fsync(fd)
        finally:
            os.close(fd)
        _commit(ops, tmp, target)
    finally:
        if os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                ops.unlink(tmp)
