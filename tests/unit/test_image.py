"""Image segments, compression and the segment cache: reproducible, readable, cpio-clean."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import zstandard

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.initrd import cpio, image
from mkinitrd_ssi.initrd.cpio import Archive, Entry, read_archive, read_entries
from mkinitrd_ssi.initrd.image import Compression, SegmentCache


@pytest.fixture(autouse=True)
def fast_zstd(monkeypatch: pytest.MonkeyPatch) -> None:
    """What these tests check holds at any level; the lowest is the fastest."""
    monkeypatch.setitem(image.DEFAULT_LEVEL, Compression.ZSTD, 3)
    monkeypatch.setattr(image, "ZSTD_JOB", 1 << 19)  # zstd's smallest job


def make_archive(seed: int = 0, etc: bytes = b"table\n") -> Archive:
    """Two big top directories and a few small ones, with compressible but varied data."""
    arc = Archive()
    blob = b"".join(i.to_bytes(4, "little") * 3 for i in range(seed, seed + 10_000))
    arc.data("ssi/agent/lib.so", blob, 0o755)
    arc.data("lib/modules/k/a.ko", blob[::-1])
    arc.data("lib/x86_64-linux-gnu/libc.so.6", b"libc" * 1000)
    arc.data("etc/ssitab", etc)
    arc.symlink("init", "linuxrc")
    arc.device("dev/null", stat.S_IFCHR, 1, 3, 0o666)
    arc.dir("proc")
    return arc


def entries(arc: Archive) -> list[Entry]:
    return list(arc.entries.values())


def test_segments_cover_the_tree_in_order_runs_by_what_changes_them() -> None:
    arc = make_archive()
    arc.data("lib/firmware/x.bin", b"fw")
    segs = image.segments(entries(arc))
    flat = [e.path for seg in segs for e in seg]
    assert flat == sorted(arc.entries, key=os.fsencode)
    tops = [sorted({"/".join(e.path.split("/")[:2]) for e in seg}) for seg in segs]
    # etc (the table, the manifest) alone, however small: an ssitab edit recompresses
    # only it; the kernel's modules and firmware together (a kernel update); the
    # libraries and the agent in one run (they compress better together).
    assert tops == [["dev", "dev/null"], ["etc", "etc/ssitab"], ["init", "lib"],
                    ["lib/firmware", "lib/modules"],
                    ["lib/x86_64-linux-gnu", "proc", "ssi", "ssi/agent"]]


@pytest.mark.parametrize("how", [Compression.ZSTD, Compression.GZIP])
def test_members_end_between_entries_and_together_form_one_archive(how: Compression) -> None:
    """What the kernel needs: each compressed member ends where an entry ends (its
    parser is then in state Reset); all of them make one archive with one trailer."""
    arc = make_archive()
    data = image.build(entries(arc), how, 0)
    rest, outs = data, []
    while rest:
        out, rest = image._decompress_one(rest, how)
        members, end, trailer = read_entries(out)
        assert end == len(out) and members
        outs.append((out, trailer))
    assert len(outs) == len(image.segments(entries(arc))) > 1
    assert [t for _, t in outs] == [False] * (len(outs) - 1) + [True]
    members, end = read_archive(b"".join(o for o, _ in outs))
    assert [m.path for m in members] == sorted(arc.entries, key=os.fsencode)
    assert {m.path for m in image.read_image(data)} == set(arc.entries)


@pytest.mark.skipif(shutil.which("cpio") is None or shutil.which("zstd") is None,
                    reason="GNU cpio or zstd not installed")
def test_gnu_cpio_lists_a_zstd_image_whole() -> None:
    arc = make_archive()
    data = image.build(entries(arc), Compression.ZSTD, 0)
    raw = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    out = subprocess.run(["cpio", "-t", "--quiet"], input=raw, capture_output=True,
                         check=True).stdout.decode().split()
    assert out == sorted(arc.entries, key=os.fsencode)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_uncompressed_image_is_one_archive_gnu_cpio_reads_whole() -> None:
    arc = make_archive()
    data = image.build(entries(arc), Compression.NONE, 0)
    out = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True,
                         check=True).stdout.decode().split()
    assert out == sorted(arc.entries, key=os.fsencode)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd not installed")
def test_zstd_cli_decompresses_the_image() -> None:
    data = image.build(entries(make_archive()), Compression.ZSTD, 0)
    subprocess.run(["zstd", "-t", "-q"], input=data, check=True)


@pytest.mark.parametrize("how", list(Compression))
def test_two_builds_are_byte_identical(how: Compression) -> None:
    assert image.build(entries(make_archive()), how, 0) == \
        image.build(entries(make_archive()), how, 0)


def test_zstd_output_does_not_depend_on_the_core_count(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = b"".join(i.to_bytes(4, "little") for i in range(400_000))  # three zstd jobs
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    one = image.compress(raw, Compression.ZSTD)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert image.compress(raw, Compression.ZSTD) == one
    assert zstandard.ZstdDecompressor().decompress(one) == raw


def test_gzip_header_has_no_time_or_name() -> None:
    data = image.compress(b"x" * 100, Compression.GZIP)
    assert data[4:8] == b"\0\0\0\0" and not data[3] & 0x08  # MTIME 0, no FNAME flag
    assert gzip.decompress(data) == b"x" * 100


def test_cache_reuses_unchanged_segments_and_gives_the_same_bytes(tmp_path: Path) -> None:
    cache = SegmentCache(tmp_path / "seg")
    first = image.build(entries(make_archive()), Compression.ZSTD, 0, cache)
    assert (cache.hits, cache.misses) == (0, len(list((tmp_path / "seg").iterdir())))
    edited = make_archive(etc=b"table with one more node\n")
    cache2 = SegmentCache(tmp_path / "seg")
    warm = image.build(entries(edited), Compression.ZSTD, 0, cache2)
    assert cache2.misses == 1 and cache2.hits == len(image.segments(entries(edited))) - 1
    assert warm == image.build(entries(edited), Compression.ZSTD, 0)  # cache changes nothing
    assert warm != first


def test_a_damaged_cached_segment_is_rebuilt_not_shipped(tmp_path: Path) -> None:
    cache = SegmentCache(tmp_path / "seg")
    clean = image.build(entries(make_archive()), Compression.ZSTD, 0, cache)
    for path in (tmp_path / "seg").iterdir():  # a bad block in every cached segment
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    again = SegmentCache(tmp_path / "seg")
    assert image.build(entries(make_archive()), Compression.ZSTD, 0, again) == clean
    assert again.hits == 0 and again.misses == len(list((tmp_path / "seg").iterdir()))
    warm = SegmentCache(tmp_path / "seg")  # and the rebuilt ones are good again
    assert image.build(entries(make_archive()), Compression.ZSTD, 0, warm) == clean
    assert warm.misses == 0


def test_a_segment_that_does_not_decompress_to_its_bytes_is_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = image.compress
    monkeypatch.setattr(image, "compress", lambda raw, how, level=None:
                        real(raw.replace(b"table", b"tab1e"), how, level))
    cache = SegmentCache(tmp_path / "seg")
    with pytest.raises(SsiError, match="does not decompress to its bytes"):
        image.build(entries(make_archive()), Compression.ZSTD, 0, cache)
    monkeypatch.setattr(image, "compress", real)  # and the bad segment was not cached:
    assert image.build(entries(make_archive()), Compression.ZSTD, 0, cache) == \
        image.build(entries(make_archive()), Compression.ZSTD, 0)


def test_runs_are_checked_entry_by_entry() -> None:
    arc = make_archive()
    segs = image.segments(entries(arc))
    raws = image.run_bytes(cpio.Newc(entries(arc), 0), segs)
    image.check_runs(segs, raws)
    with pytest.raises(SsiError, match="segment 0 of the image"):
        image.check_runs(segs, [raws[1], *raws[1:]])
    with pytest.raises(SsiError, match="segment 1 of the image"):  # no trailer at the end
        image.check_runs(segs[:2], raws[:2])


def test_prune_drops_only_old_segments(tmp_path: Path) -> None:
    d = tmp_path / "seg"
    d.mkdir()
    old, new = d / "old.zstd", d / "new.zstd"
    old.write_bytes(b"1")
    new.write_bytes(b"2")
    os.utime(old, (0, 0))
    SegmentCache(d).prune()
    assert not old.exists() and new.exists()


def test_read_image_takes_a_raw_archive_before_a_compressed_one() -> None:
    """As Debian's early-microcode images are laid out."""
    early = Archive()
    early.data("kernel/x86/microcode/GenuineIntel.bin", b"ucode")
    buf = io.BytesIO()
    early.write(buf)
    data = buf.getvalue() + b"\0" * 512 + image.build(entries(make_archive()),
                                                        Compression.ZSTD, 0)
    paths = [m.path for m in image.read_image(data)]
    assert paths[:4] == ["kernel", "kernel/x86", "kernel/x86/microcode",
                         "kernel/x86/microcode/GenuineIntel.bin"]
    assert "etc/ssitab" in paths


def test_read_image_rejects_what_is_not_an_image() -> None:
    with pytest.raises(SsiError, match="unknown data"):
        image.read_image(b"PK\x03\x04 zip file")
    with pytest.raises(SsiError, match="corrupt"):
        image.read_image(image.ZSTD_MAGIC + b"\xff" * 20)


def test_levels_are_checked_and_part_of_the_cache_key(tmp_path: Path) -> None:
    with pytest.raises(SsiError, match="level 23 out of range for zstd"):
        image.build(entries(make_archive()), Compression.ZSTD, 0, level=23)
    with pytest.raises(SsiError, match="level 10 out of range for gzip"):
        image.compress(b"x", Compression.GZIP, 10)
    cache = SegmentCache(tmp_path)
    one = image.build(entries(make_archive()), Compression.ZSTD, 0, cache, level=1)
    two = image.build(entries(make_archive()), Compression.ZSTD, 0, cache, level=5)
    assert one != two and cache.hits == 0
