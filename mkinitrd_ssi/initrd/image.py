"""The ramdisk image: one cpio archive, compressed in segments, each cached.

The kernel's initramfs unpacker takes compressed members laid end to end and
feeds them all to one cpio parser; it only requires that each member end
between two entries (init/initramfs.c: after every entry the state is Reset,
which is what it checks at the end of a member). So the archive is cut, along
its top directories, into a few runs of entries, each compressed on its own
(one zstd frame, one gzip member): a rebuild after an ssitab edit recompresses
only the small run holding /etc and takes the others (the frozen agent, the
libraries, the modules) from a cache keyed by their exact bytes. The
decompressed stream is still one archive with one trailer, so `zstd -dc |
cpio -t` and lsinitramfs see everything. Inode numbers are global and depend
on paths only, so a content edit leaves every other run's bytes unchanged.
"""

from __future__ import annotations

import contextlib
import enum
import gzip
import io
import os
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash
import zstandard

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.initrd import cpio
from mkinitrd_ssi.initrd.cpio import Entry, Member
from mkinitrd_ssi.run import log


class Compression(enum.StrEnum):
    ZSTD = "zstd"
    GZIP = "gzip"
    NONE = "none"


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
# zstd 19 (the strongest whose 8 MB window the kernel accepts), chosen by figures (README,
# Benchmarks; bench_initrd.py --compressions): on the 9-module image 4.9 MB against 5.5 at
# 9 and 7.5 with lz4 -9, for 0.04 s more unpacking in the kernel (icount) than 9; xz
# --x86 would be 4.3 MB but unpacks 1.5 s slower. What it costs is compression time,
# paid once: the agent, libraries and modules are cached segments, an ssitab edit
# recompresses only etc/ (a few KB); a cold build compresses ~15 MB (17 s on 2 cores).
DEFAULT_LEVEL = {Compression.ZSTD: 19, Compression.GZIP: 6}
MAX_LEVEL = {Compression.ZSTD: 19, Compression.GZIP: 9}

# A top directory holding less than this joins its neighbours in one segment: fewer
# frames, and a segment is only worth caching when it is costly to compress.
SEGMENT_MIN = 1 << 20
# What changes from one build to the next (the table, the manifest, the module list):
# always a run of its own.
VOLATILE = "etc"
# zstd's parallel jobs: fixed, so the output does not depend on the core count.
ZSTD_JOB = 1 << 21
CACHE_MAX_AGE = 14 * 86400
_FORMAT = b"ssi-image-2"  # 2: each cached segment starts with its digest


def _key(path: str) -> str:
    """Segment key: the first two path components ("lib/modules", "ssi/agent")."""
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def segments(entries: Iterable[Entry]) -> list[list[Entry]]:
    """Cut the tree, in path order, into runs of whole keys; small keys share a run."""
    ordered = sorted(entries, key=lambda e: os.fsencode(e.path))
    by_key: list[tuple[str, list[Entry], int]] = []
    for e in ordered:
        k = _key(e.path)
        if not by_key or by_key[-1][0] != k:
            by_key.append((k, [], 0))
        key, members, size = by_key[-1]
        members.append(e)
        by_key[-1] = (key, members, size + e.size)
    out: list[list[Entry]] = []
    small: list[Entry] = []
    for key, members, size in by_key:
        if key.split("/")[0] == VOLATILE:
            # Its own run, however small: an ssitab edit then recompresses a few KB, not
            # the modules and libraries that would share a run with it (0.6 MB at -19:
            # 0.3 s of every rebuild, measured).
            if out and out[-1][0].path.split("/")[0] == VOLATILE:
                out[-1] += members
                continue
            if small:
                out.append(small)
                small = []
            out.append(members)
            continue
        if size < SEGMENT_MIN:
            small += members
            continue
        if small:
            out.append(small)
            small = []
        out.append(members)
    if small:
        out.append(small)
    return out


def level_of(how: Compression, level: int | None) -> int:
    """The level to use: the default for `how`, or `level` checked against its range."""
    if how is Compression.NONE:
        return 0
    if level is None:
        return DEFAULT_LEVEL[how]
    if not 1 <= level <= MAX_LEVEL[how]:
        raise SsiError(f"compression level {level} out of range for {how}",
                       hint=f"use 1 to {MAX_LEVEL[how]}")
    return level


def compress(raw: bytes, how: Compression, level: int | None = None) -> bytes:
    level = level_of(how, level)
    if how is Compression.NONE:
        return raw
    if how is Compression.GZIP:
        # mtime=0 and no file name in the header: the same input, the same bytes.
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=level,
                           mtime=0) as gz:
            gz.write(raw)
        return buf.getvalue()
    # With a fixed job size zstd's output is the same for any worker count >= 1 (0
    # differs), so the image does not depend on the build host's cores.
    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=max(1, os.cpu_count() or 1), job_size=ZSTD_JOB,
        write_checksum=1, write_content_size=1)
    return zstandard.ZstdCompressor(compression_params=params).compress(raw)


class SegmentCache:
    """Compressed segments on disk, named by a hash of their uncompressed bytes.

    Each file starts with the xxh3_128 of the compressed bytes after it: a
    segment damaged on disk (a bad block, a half-copied cache) is found before
    reuse and rebuilt, never shipped in an image.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.hits = 0
        self.misses = 0

    def _path(self, raw: bytes, how: Compression, level: int) -> Path | None:
        if self.directory is None:
            return None
        h = xxhash.xxh3_128(_FORMAT)
        h.update(f"{how}:{level}:{ZSTD_JOB}".encode())
        h.update(raw)
        return self.directory / f"{h.hexdigest()}.{how}"

    def get(self, raw: bytes, how: Compression, level: int) -> bytes | None:
        path = self._path(raw, how, level)
        if path is None:
            return None
        try:
            stored = path.read_bytes()
        except OSError:
            return None
        digest, data = stored[:16], stored[16:]
        if xxhash.xxh3_128_digest(data) != digest:
            log.warning("cached segment %s is damaged: rebuilt", path)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # marks it in use, for prune()
        self.hits += 1
        return data

    def put(self, raw: bytes, how: Compression, level: int, data: bytes) -> None:
        self.misses += 1
        path = self._path(raw, how, level)
        if path is None:
            return
        # Renamed into place, not fsynced: a cache file a power cut left torn fails its
        # digest in get() and is made again, and the fsyncs were a third of a rebuild.
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(xxhash.xxh3_128_digest(data) + data)
            os.replace(tmp, path)
        except OSError as e:
            log.info("cannot cache a compressed segment in %s: %s", path.parent, e.strerror)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def prune(self) -> None:
        if self.directory is not None:
            prune(self.directory)


def prune(directory: Path, max_age: float = CACHE_MAX_AGE) -> None:
    """Remove the files of a cache directory not used (mtime touched) for max_age seconds."""
    if not directory.is_dir():
        return
    limit = time.time() - max_age
    for path in directory.iterdir():
        try:
            if path.is_file() and path.stat().st_mtime < limit:
                path.unlink()
        except OSError:
            pass


def build(entries: Sequence[Entry], how: Compression, epoch: int,
          cache: SegmentCache | None = None, level: int | None = None) -> bytes:
    """The whole image: one archive for none, compressed cached segments otherwise."""
    level = level_of(how, level)
    newc = cpio.Newc(entries, epoch)
    if how is Compression.NONE:
        buf = io.BytesIO()
        newc.write(newc.ordered, buf)
        newc.write_trailer(buf)
        return buf.getvalue()
    cache = cache or SegmentCache(None)
    raws: list[bytes] = []
    segs = segments(newc.ordered)
    for i, seg in enumerate(segs):
        buf = io.BytesIO()
        newc.write(seg, buf)
        if i == len(segs) - 1:
            newc.write_trailer(buf)
        raws.append(buf.getvalue())
    found = [cache.get(raw, how, level) for raw in raws]
    todo = [i for i, data in enumerate(found) if data is None]
    # zstd and zlib release the GIL: the segments compress side by side.
    with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1))) as pool:
        work = pool.map(lambda i: compress(raws[i], how, level), todo)
        for i, data in zip(todo, work, strict=True):
            cache.put(raws[i], how, level, data)
            found[i] = data
    log.info("image: %d segment(s), %d from cache, %d compressed (%s -%d)", len(raws),
             len(raws) - len(todo), len(todo), how, level)
    return b"".join(d for d in found if d is not None)


# --- reading -----------------------------------------------------------------------------


def detect(data: bytes) -> Compression | None:
    if data.startswith(ZSTD_MAGIC):
        return Compression.ZSTD
    if data.startswith(GZIP_MAGIC):
        return Compression.GZIP
    if data.startswith(cpio.MAGIC[:5]):
        return Compression.NONE
    return None


def _decompress_one(data: bytes, how: Compression) -> tuple[bytes, bytes]:
    """Decompress the first zstd frame or gzip member of data; return (output, the rest)."""
    try:
        if how is Compression.GZIP:
            d = zlib.decompressobj(wbits=31)
            return d.decompress(data), d.unused_data
        dz = zstandard.ZstdDecompressor().decompressobj()
        return dz.decompress(data), dz.unused_data
    except (zlib.error, zstandard.ZstdError) as e:
        raise SsiError(f"corrupt {how} data in the image: {e}") from None


def read_image(data: bytes) -> list[Member]:
    """Every member of an image, read as the kernel does: archives and compressed
    streams laid end to end (an uncompressed microcode archive first, say), where a
    run of compressed members is one byte stream, whatever its frame boundaries."""
    members: list[Member] = []
    rest = data.lstrip(b"\0")
    while rest:
        how = detect(rest)
        if how is None:
            raise SsiError(f"unknown data at byte {len(data) - len(rest)} of the image",
                           hint="not a ramdisk, or compressed in a way mkinitrd.ssi does not read")
        if how is Compression.NONE:
            part, end = cpio.read_archive(rest)
            members += part
            rest = rest[end:].lstrip(b"\0")
            continue
        parts: list[bytes] = []
        while rest and detect(rest) is how:
            out, rest = _decompress_one(rest, how)
            parts.append(out)
            rest = rest.lstrip(b"\0")
        raw = b"".join(parts)
        pos = 0
        while pos < len(raw):
            part, pos = cpio.read_archive(raw, pos)
            members += part
            while pos < len(raw) and raw[pos] == 0:
                pos += 1
    return members
