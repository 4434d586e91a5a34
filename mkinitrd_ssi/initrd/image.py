"""The ramdisk image: one cpio archive, compressed in segments, each cached.

The kernel's initramfs unpacker takes compressed members laid end to end and
feeds them all to one cpio parser; it only requires that each member end
between two entries (init/initramfs.c: after every entry the state is Reset,
which is what it checks at the end of a member). So the archive is cut into a
few runs of entries by what changes them, each compressed on its own (one zstd
frame, one gzip member): /etc (the table, the manifest: every rebuild), the
kernel's modules and firmware (a kernel update), and the rest (the frozen
agent, its libraries, busybox). A rebuild after an ssitab edit recompresses
only the small run holding /etc and takes the others from a cache keyed by
their exact bytes. The decompressed stream is still one archive with one
trailer, so `zstd -dc | cpio -t` and lsinitramfs see everything. Inode numbers
are global and depend on paths only, so a content edit leaves every other
run's bytes unchanged.
"""

from __future__ import annotations

import contextlib
import enum
import io
import os
import time
import zlib
from collections.abc import Iterable, Sequence
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
# zstd 22 ("ultra"), chosen by figures (README, Benchmarks; bench_initrd.py
# --compressions): on the 9-module image 4.75 MB against 4.81 at 19 (whose 8 MB window
# kept the agent's copy of libz from matching the library directory's), 5.5 at 9 and
# 7.5 with lz4 -9; xz --x86 would be 4.3 MB but unpacks 1.5 s slower. Its window is no
# burden on the node: a frame whose size is known (write_content_size) declares a window
# of at most its own size, and the kernel allocates that, not 2^27 (lib/
# decompress_unzstd.c takes any window up to 2^ZSTD_WINDOWLOG_MAX, then vmallocs it);
# the largest run is ~14 MB. What it costs is compression time, paid once: the runs are
# cached, and an ssitab edit recompresses only etc/ (a few KB).
DEFAULT_LEVEL = {Compression.ZSTD: 22, Compression.GZIP: 6}
MAX_LEVEL = {Compression.ZSTD: 22, Compression.GZIP: 9}

# What changes from one build to the next (the table, the manifest, the module list):
# always a run of its own.
VOLATILE = "etc"
# What a kernel update changes: a run of its own, so that it does not recompress the
# agent and libraries.
KERNEL = ("lib/modules", "lib/firmware")
# zstd's parallel jobs: fixed, so the output does not depend on the core count.
ZSTD_JOB = 1 << 21
CACHE_MAX_AGE = 14 * 86400
# 3: the runs of segments(); a segment is cached only once it has been seen to
# decompress to its bytes (put()), so a cached one needs no such check again.
_FORMAT = b"ssi-image-3"


def _run(path: str) -> str:
    """Which run a path belongs to: VOLATILE, "kernel" or "rest"."""
    if path.split("/")[0] == VOLATILE:
        return VOLATILE
    if any(path == k or path.startswith(k + "/") for k in KERNEL):
        return "kernel"
    return "rest"


def segments(entries: Iterable[Entry]) -> list[list[Entry]]:
    """Cut the tree, in path order, into runs of entries that change together.

    Not one run per top directory: the agent (libpython, libz, its bytecode) and
    the libraries (glibc, libz again) compress 66 KB smaller in one zstd -22 frame
    than apart (measured, README "Where our bytes go")."""
    ordered = sorted(entries, key=lambda e: os.fsencode(e.path))
    out: list[list[Entry]] = []
    last = None
    for e in ordered:
        run = _run(e.path)
        if run != last:
            out.append([])
            last = run
        out[-1].append(e)
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
        import gzip

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
    segs = segments(newc.ordered)
    raws = run_bytes(newc, segs)
    found = [cache.get(raw, how, level) for raw in raws]
    todo = [i for i, data in enumerate(found) if data is None]
    for i, data in zip(todo, _compress_all([raws[i] for i in todo], how, level), strict=True):
        if decompress_segment(data, how) != raws[i]:
            raise SsiError(f"a {how} -{level} segment does not decompress to its bytes")
        cache.put(raws[i], how, level, data)
        found[i] = data
    check_runs(segs, raws)
    log.info("image: %d segment(s), %d from cache, %d compressed (%s -%d)", len(raws),
             len(raws) - len(todo), len(todo), how, level)
    return b"".join(d for d in found if d is not None)


def _compress_all(raws: list[bytes], how: Compression, level: int) -> list[bytes]:
    if len(raws) <= 1:  # a rebuild: etc/ alone, no pool to start
        return [compress(raw, how, level) for raw in raws]
    from concurrent.futures import ThreadPoolExecutor

    # zstd and zlib release the GIL: the segments compress side by side.
    with ThreadPoolExecutor(max_workers=min(len(raws), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda raw: compress(raw, how, level), raws))


def run_bytes(newc: cpio.Newc, segs: Sequence[Sequence[Entry]]) -> list[bytes]:
    """Each run as its part of the one archive (the last with the trailer)."""
    raws = []
    for i, seg in enumerate(segs):
        buf = io.BytesIO()
        newc.write(seg, buf)
        if i == len(segs) - 1:
            newc.write_trailer(buf)
        raws.append(buf.getvalue())
    return raws


def check_runs(segs: Sequence[Sequence[Entry]], raws: Sequence[bytes]) -> None:
    """Each run's bytes hold exactly its entries, whole, and only the last the trailer:
    what the kernel needs of each compressed member. Headers alone are read."""
    for i, (seg, raw) in enumerate(zip(segs, raws, strict=True)):
        paths, end, trailer = cpio.scan(raw)
        if paths != [e.path for e in seg] or end != len(raw) \
                or trailer != (i == len(raws) - 1):
            raise SsiError(f"segment {i} of the image does not read back as built")


def decompress_segment(data: bytes, how: Compression) -> bytes:
    """One whole segment as compress() made it (its size in its header)."""
    try:
        if how is Compression.GZIP:
            return zlib.decompress(data, wbits=31)
        return zstandard.ZstdDecompressor().decompress(data)
    except (zlib.error, zstandard.ZstdError) as e:
        raise SsiError(f"corrupt {how} segment: {e}") from None


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
