"""The ramdisk's archive: an in-memory tree, written as a reproducible newc cpio, and read back.

The kernel's initramfs unpacker, GNU cpio and busybox cpio all read "newc"
(magic 070701). Reproducibility comes from here rather than from the inputs:
entries are written in byte order of their paths, owned by root, with mtimes
clamped to one epoch and inode numbers handed out in that order, so the same
contents always give the same bytes, whatever the source files' metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from mkinitrd_ssi.errors import SsiError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 110
_MAX_SIZE = 0xFFFFFFFF
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One archive member. A regular file's bytes come from `data` or, lazily, `source`."""

    path: str
    mode: int
    data: bytes | None = None
    source: Path | None = None
    target: str | None = None
    rdev: tuple[int, int] = (0, 0)
    mtime: int = 0
    # Entries with the same key are hard links to one inode (the host's (st_dev, st_ino)).
    link_key: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        if stat.S_ISLNK(self.mode):
            return len(os.fsencode(self.target or ""))
        if not stat.S_ISREG(self.mode):
            return 0
        if self.data is not None:
            return len(self.data)
        assert self.source is not None
        return self.source.stat().st_size

    def same_content(self, other: Entry) -> bool:
        return (self.mode, self.target, self.rdev) == (other.mode, other.target, other.rdev) \
            and self.read() == other.read()

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.source is not None:
            return self.source.read_bytes()
        return b""


def clean_path(path: str) -> str:
    """The archive's spelling of a path: relative, normalised, no '.' or '..' parts."""
    parts = [p for p in PurePosixPath("/", path).parts[1:] if p not in ("", ".")]
    if not parts or ".." in parts:
        raise SsiError(f"bad ramdisk path {path!r}")
    return "/".join(parts)


class Archive:
    """The ramdisk's tree: path -> Entry, with parent directories made as needed."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        # Which part of the build added each entry (the image's manifest keeps it).
        self.origins: dict[str, str] = {}
        self._origin = "generated"

    @contextlib.contextmanager
    def origin(self, name: str) -> Iterator[None]:
        """Record `name` as the origin of every entry added inside the block."""
        outer, self._origin = self._origin, name
        try:
            yield
        finally:
            self._origin = outer

    def __contains__(self, path: str) -> bool:
        return clean_path(path) in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: Entry) -> bool:
        """Add entry; an identical one already there is fine, a different one an error.

        Returns False when it was already there.
        """
        path = clean_path(entry.path)
        entry = dataclasses.replace(entry, path=path)
        old = self.entries.get(path)
        if old is not None:
            if stat.S_ISDIR(old.mode) and stat.S_ISDIR(entry.mode):
                return False
            if old.same_content(entry):
                return False
            raise SsiError(f"two different files want /{path} in the ramdisk")
        parent = path.rpartition("/")[0]
        if parent:
            self.dir(parent)
        self.entries[path] = entry
        self.origins[path] = self._origin
        return True

    def remove(self, path: str) -> None:
        path = clean_path(path)
        del self.entries[path]
        del self.origins[path]

    def dir(self, path: str, mode: int = 0o755) -> None:
        path = clean_path(path)
        old = self.entries.get(path)
        if old is not None:
            if not stat.S_ISDIR(old.mode):
                raise SsiError(f"/{path} is both a directory and a file in the ramdisk")
            return
        self.add(Entry(path, stat.S_IFDIR | mode))

    def file(self, path: str, source: Path, mode: int | None = None) -> bool:
        st = source.stat()
        perm = stat.S_IMODE(st.st_mode) if mode is None else mode
        key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        return self.add(Entry(path, stat.S_IFREG | perm, source=source,
                              mtime=int(st.st_mtime), link_key=key))

    def data(self, path: str, content: bytes, mode: int = 0o644) -> bool:
        return self.add(Entry(path, stat.S_IFREG | mode, data=content))

    def symlink(self, path: str, target: str) -> bool:
        return self.add(Entry(path, stat.S_IFLNK | 0o777, target=target))

    def device(self, path: str, kind: int, major: int, minor: int, mode: int) -> bool:
        return self.add(Entry(path, kind | mode, rdev=(major, minor)))

    def put(self, path: str, source: Path, mode: int | None = None) -> bool:
        """A host file or symlink (kept as a symlink) at path."""
        if source.is_symlink():
            return self.symlink(path, os.readlink(source))
        if source.is_file():
            return self.file(path, source, mode)
        raise SsiError(f"{source}: not a regular file, directory or symlink")

    def tree(self, source: Path, dest: str) -> None:
        """Copy a directory tree (symlinks kept as symlinks) under dest."""
        if dest.strip("/"):
            self.dir(dest, stat.S_IMODE(source.stat().st_mode))
        for rel, src in walk(source):
            if src.is_dir() and not src.is_symlink():
                self.dir(f"{dest}/{rel}", stat.S_IMODE(src.stat().st_mode))
            else:
                self.put(f"{dest}/{rel}", src)

    def write(self, out: BinaryIO, epoch: int = 0) -> int:
        return write_newc(self.entries.values(), out, epoch)


def walk(source: Path) -> Iterator[tuple[str, Path]]:
    """Every directory, file and symlink under source, parents first, names sorted:
    (path relative to source, host path). Symlinks to directories are not followed."""
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        base = Path(dirpath)
        rel = base.relative_to(source)
        for name in sorted(dirnames + filenames):
            yield str(rel / name), base / name


def _header(ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int],
            namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * (-n & 3)


class Newc:
    """A tree laid out as one newc archive: path order, inode numbers and link counts
    fixed up front, so that any run of its entries can be written on its own (the image
    compresses runs separately) and all runs together form the one archive."""

    def __init__(self, entries: Iterable[Entry], epoch: int = 0) -> None:
        self.epoch = epoch
        self.ordered = sorted(entries, key=lambda e: os.fsencode(e.path))
        groups: dict[tuple[int, int], list[Entry]] = {}
        for e in self.ordered:
            if e.link_key is not None and stat.S_ISREG(e.mode):
                groups.setdefault(e.link_key, []).append(e)
        self.subdirs: dict[str, int] = {}
        for e in self.ordered:
            if stat.S_ISDIR(e.mode):
                parent = e.path.rpartition("/")[0]
                self.subdirs[parent] = self.subdirs.get(parent, 0) + 1
        # Inodes are numbered in path order, so they depend on nothing but the tree.
        self.inode: dict[str, int] = {}
        self.nlink: dict[str, int] = {}
        self.data_on: set[str] = set()
        for e in self.ordered:
            if e.path in self.inode:
                continue
            members = groups.get(e.link_key, [e]) if e.link_key is not None else [e]
            for m in members:
                self.inode[m.path] = len(self.data_on) + 1
                self.nlink[m.path] = len(members)
            # GNU cpio's convention, which the kernel follows too: data on the last link.
            self.data_on.add(members[-1].path)

    def write(self, entries: Iterable[Entry], out: BinaryIO) -> int:
        """Write some of the entries (in the order given); returns bytes written."""
        written = 0
        for e in entries:
            name = os.fsencode(e.path) + b"\0"
            size = e.size if e.path in self.data_on or not stat.S_ISREG(e.mode) else 0
            if size > _MAX_SIZE:
                raise SsiError(f"/{e.path}: too large for a newc archive ({size} bytes)")
            links = 2 + self.subdirs.get(e.path, 0) if stat.S_ISDIR(e.mode) \
                else self.nlink[e.path]
            head = _header(self.inode[e.path], e.mode, links,
                           max(0, min(e.mtime, self.epoch)), size, e.rdev, len(name)) + name
            out.write(head + _pad(len(head)))
            written += len(head) + len(_pad(len(head)))
            if size:
                written += _write_body(e, size, out)
        return written

    def write_trailer(self, out: BinaryIO) -> int:
        tail = _header(0, 0, 1, 0, 0, (0, 0), len(TRAILER) + 1) + TRAILER.encode() + b"\0"
        out.write(tail + _pad(len(tail)))
        return len(tail) + len(_pad(len(tail)))


def write_newc(entries: Iterable[Entry], out: BinaryIO, epoch: int = 0) -> int:
    """Write entries (any order) as one newc archive with its trailer; returns bytes written."""
    newc = Newc(entries, epoch)
    return newc.write(newc.ordered, out) + newc.write_trailer(out)


def _write_body(e: Entry, size: int, out: BinaryIO) -> int:
    if stat.S_ISLNK(e.mode):
        body = os.fsencode(e.target or "")
        out.write(body)
    elif e.data is not None:
        body = e.data
        out.write(body)
    else:
        assert e.source is not None
        done = 0
        with open(e.source, "rb") as f:
            while chunk := f.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
        if done != size:
            raise SsiError(f"{e.source} changed size while the ramdisk was written")
    out.write(_pad(size))
    return size + len(_pad(size))


# --- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    path: str
    mode: int
    size: int
    nlink: int
    ino: int
    mtime: int
    uid: int
    gid: int
    rdev: tuple[int, int]
    target: str | None
    data: bytes


def read_archive(raw: bytes, pos: int = 0) -> tuple[list[Member], int]:
    """Parse one archive starting at pos, up to and including its trailer."""
    members, pos, trailer = read_entries(raw, pos)
    if not trailer:
        raise SsiError("archive ends without its TRAILER!!! entry")
    return members, pos


def read_entries(raw: bytes, pos: int = 0) -> tuple[list[Member], int, bool]:
    """Parse entries from pos up to a trailer (included) or the end of raw, which must
    then fall on an entry boundary. Returns (members, end position, trailer seen)."""
    heads, end, trailer = _headers(raw, pos)
    members: list[Member] = []
    for f, name, body in heads:
        ino, mode, uid, gid, nlink, mtime, size = f[:7]
        data = raw[body:body + size]
        target = os.fsdecode(data) if stat.S_ISLNK(mode) else None
        members.append(Member(name, mode, size, nlink, ino, mtime, uid, gid, (f[9], f[10]),
                              target, data))
    return members, end, trailer


def scan(raw: bytes | memoryview, pos: int = 0) -> tuple[list[str], int, bool]:
    """read_entries without the contents: (paths, end position, trailer seen). What the
    builder checks its own output with, at the cost of the headers alone."""
    heads, end, trailer = _headers(raw, pos)
    return [name for _, name, _ in heads], end, trailer


def _headers(raw: bytes | memoryview, pos: int) -> tuple[list[tuple[list[int], str, int]],
                                                         int, bool]:
    """The headers from pos, as (the 13 numeric fields, name, offset of the contents), up
    to a trailer or the end of raw; then where that was, and whether it was a trailer."""
    out: list[tuple[list[int], str, int]] = []
    while pos < len(raw):
        head = bytes(raw[pos:pos + _HEADER_LEN])
        if len(head) < _HEADER_LEN or head[:6] not in (b"070701", b"070702"):
            raise SsiError(f"not a newc cpio header at byte {pos}")
        try:
            f = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise SsiError(f"corrupt cpio header at byte {pos}") from None
        size, namesize = f[6], f[11]
        name_end = pos + _HEADER_LEN + namesize
        name = os.fsdecode(bytes(raw[pos + _HEADER_LEN:name_end - 1]))
        body = name_end + (-(name_end) & 3)
        if body + size > len(raw):
            raise SsiError(f"{name}: archive truncated")
        pos = body + size + (-size & 3)
        if name == TRAILER:
            return out, pos, True
        out.append((f, name, body))
    return out, pos, False
