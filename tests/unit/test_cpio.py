"""The newc writer against GNU cpio: listing, extraction, hard links, reproducibility."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.initrd.cpio import (
    Archive,
    Entry,
    Newc,
    clean_path,
    read_archive,
    walk,
    write_newc,
)

pytestmark = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")


def sample_tree(base: Path, mtime: int) -> Path:
    """A small source tree with a hard link pair, a symlink and an executable."""
    src = base / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 3)
    (src / "sub" / "deeper" / "empty").write_bytes(b"")
    exe = src / "run.sh"
    exe.write_bytes(b"#!/bin/sh\necho hi\n")
    exe.chmod(0o755)
    os.link(src / "a.txt", src / "sub" / "a-link.txt")
    (src / "sub" / "to-a").symlink_to("../a.txt")
    for p in [*src.rglob("*"), src]:
        os.utime(p, (mtime, mtime), follow_symlinks=False)
    return src


def archive_of(src: Path) -> Archive:
    arc = Archive()
    arc.tree(src, "data")
    arc.device("dev/console", stat.S_IFCHR, 5, 1, 0o600)
    arc.data("etc/hello", b"hello\n")
    return arc


def raw(arc: Archive, epoch: int = 0) -> bytes:
    buf = io.BytesIO()
    n = arc.write(buf, epoch)
    assert n == len(buf.getvalue())
    return buf.getvalue()


def test_gnu_cpio_lists_every_entry_in_sorted_order(tmp_path: Path) -> None:
    arc = archive_of(sample_tree(tmp_path, 1_000_000))
    out = subprocess.run(["cpio", "-t", "--quiet"], input=raw(arc), capture_output=True,
                         check=True).stdout.decode().splitlines()
    assert out == sorted(arc.entries, key=os.fsencode)
    assert "data/sub/to-a" in out and "dev/console" in out and "etc" in out


def test_gnu_cpio_verbose_listing_shows_owner_modes_and_device(tmp_path: Path) -> None:
    arc = archive_of(sample_tree(tmp_path, 1_000_000))
    out = subprocess.run(["cpio", "-tv", "--quiet", "--numeric-uid-gid"], input=raw(arc),
                         capture_output=True, check=True).stdout.decode().splitlines()
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in out}
    assert lines["dev/console"].startswith("crw-------") and "5,   1" in lines["dev/console"]
    assert lines["data/run.sh"].startswith("-rwxr-xr-x")
    assert all(line.split()[2:4] == ["0", "0"] for line in out)  # uid/gid 0
    assert "-> ../a.txt" in lines["data/sub/to-a"]


def test_gnu_cpio_extracts_the_same_tree(tmp_path: Path) -> None:
    src = sample_tree(tmp_path, 1_000_000)
    arc = Archive()
    arc.tree(src, "data")
    dest = tmp_path / "out"
    dest.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=raw(arc),
                   cwd=dest, check=True)
    got = dest / "data"
    for p in src.rglob("*"):
        q = got / p.relative_to(src)
        if p.is_symlink():
            assert os.readlink(q) == os.readlink(p)
        elif p.is_file():
            assert q.read_bytes() == p.read_bytes()
            assert stat.S_IMODE(q.stat().st_mode) == stat.S_IMODE(p.stat().st_mode)
            assert q.stat().st_mtime == 0  # clamped to the default epoch
        else:
            assert q.is_dir()
    # The hard link pair stays one inode with its content (data rides on the last link).
    a, link = got / "a.txt", got / "sub" / "a-link.txt"
    assert a.stat().st_ino == link.stat().st_ino and link.read_bytes() == b"alpha\n"


def test_same_contents_give_the_same_bytes_whatever_the_metadata(tmp_path: Path) -> None:
    one = archive_of(sample_tree(tmp_path / "one", 1_000_000))
    two = archive_of(sample_tree(tmp_path / "two", 2_000_000))
    assert raw(one) == raw(two)
    assert raw(one, epoch=1_500_000) != raw(two, epoch=1_500_000)  # clamp, not override


def test_mtime_is_clamped_to_the_epoch(tmp_path: Path) -> None:
    src = sample_tree(tmp_path, 1_000)
    arc = Archive()
    arc.tree(src, "d")
    members, _ = read_archive(raw(arc, epoch=500))
    assert {m.mtime for m in members if stat.S_ISREG(m.mode)} == {500}
    members, _ = read_archive(raw(arc, epoch=5_000))
    assert {m.mtime for m in members if stat.S_ISREG(m.mode)} == {1_000}


def test_inodes_are_renumbered_in_path_order_and_hardlinks_share_one(tmp_path: Path) -> None:
    arc = archive_of(sample_tree(tmp_path, 1_000_000))
    members, end = read_archive(raw(arc))
    assert end == len(raw(arc))
    by_path = {m.path: m for m in members}
    a, link = by_path["data/a.txt"], by_path["data/sub/a-link.txt"]
    assert a.ino == link.ino and a.nlink == link.nlink == 2
    assert (a.size, link.size) == (0, 6)  # sorted: data/a.txt first, data on the last link
    others = [m.ino for m in members if m.path not in ("data/a.txt", "data/sub/a-link.txt")]
    assert len(set(others)) == len(others) and a.ino not in others
    assert [m.ino for m in members if m.path != "data/sub/a-link.txt"] == sorted(
        m.ino for m in members if m.path != "data/sub/a-link.txt")


def test_a_hardlink_group_half_outside_the_archive_is_a_plain_file(tmp_path: Path) -> None:
    src = sample_tree(tmp_path, 0)
    arc = Archive()
    arc.file("only/a.txt", src / "a.txt")  # its other link is not in this archive
    members, _ = read_archive(raw(arc))
    (m,) = [m for m in members if m.path == "only/a.txt"]
    assert (m.nlink, m.data) == (1, b"alpha\n")


def test_parents_are_created_and_paths_cleaned() -> None:
    arc = Archive()
    arc.data("/x/y//z/./f", b"1")
    assert set(arc.entries) == {"x", "x/y", "x/y/z", "x/y/z/f"}
    assert stat.S_ISDIR(arc.entries["x/y"].mode)
    for bad in ("../etc/passwd", "a/../../b", "/", ""):
        with pytest.raises(SsiError):
            clean_path(bad)


def test_conflicting_paths_are_errors_identical_ones_are_not() -> None:
    arc = Archive()
    assert arc.data("etc/a", b"1")
    assert not arc.data("etc/a", b"1")
    with pytest.raises(SsiError, match="/etc/a"):
        arc.data("etc/a", b"2")
    with pytest.raises(SsiError):
        arc.dir("etc/a")
    with pytest.raises(SsiError):
        arc.symlink("etc/a", "b")


def test_origins_are_recorded_per_entry(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "motd").write_text("hi\n")
    (tmp_path / "etc" / "issue").symlink_to("motd")
    assert list(walk(tmp_path)) == [("etc", tmp_path / "etc"),
                                    ("etc/issue", tmp_path / "etc/issue"),
                                    ("etc/motd", tmp_path / "etc/motd")]
    arc = Archive()
    arc.dir("dev")
    with arc.origin("skel"):
        arc.tree(tmp_path, "/")
        with arc.origin("admin"):
            arc.put("usr/x", tmp_path / "etc/motd")
        arc.data("etc/passwd", b"root\n")
    assert arc.origins == {"dev": "generated", "etc": "skel", "etc/issue": "skel",
                           "etc/motd": "skel", "usr": "admin", "usr/x": "admin",
                           "etc/passwd": "skel"}
    assert arc.entries["etc/issue"].target == "motd"
    arc.remove("/etc/motd")
    assert "etc/motd" not in arc and "etc/motd" not in arc.origins
    with pytest.raises(SsiError, match="not a regular file"):
        arc.put("null", Path("/dev/null"))


def test_reader_round_trips_every_kind() -> None:
    entries = [Entry("f", stat.S_IFREG | 0o640, data=b"abc", mtime=7),
               Entry("l", stat.S_IFLNK | 0o777, target="f"),
               Entry("d", stat.S_IFDIR | 0o700),
               Entry("n", stat.S_IFCHR | 0o666, rdev=(1, 3))]
    buf = io.BytesIO()
    write_newc(entries, buf, epoch=10)
    members, _ = read_archive(buf.getvalue())
    got = {m.path: m for m in members}
    assert got["f"].data == b"abc" and got["f"].mtime == 7 and got["f"].mode == stat.S_IFREG | 0o640
    assert got["l"].target == "f"
    assert got["d"].nlink == 2
    assert got["n"].rdev == (1, 3)


def test_a_file_changing_size_while_written_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"12345")
    entry = Entry("f", stat.S_IFREG | 0o644, source=f)
    arc = Archive()
    arc.add(entry)
    real_size = Entry.size

    def stale_size(self: Entry) -> int:
        return real_size.fget(self) + 1  # type: ignore[attr-defined,no-any-return]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Entry, "size", property(stale_size))
        with pytest.raises(SsiError, match="changed size"):
            arc.write(io.BytesIO())


def test_runs_written_apart_make_the_same_archive(tmp_path: Path) -> None:
    arc = archive_of(sample_tree(tmp_path, 1_000_000))
    newc = Newc(arc.entries.values())
    buf = io.BytesIO()
    for i in range(0, len(newc.ordered), 3):  # any cut between entries
        newc.write(newc.ordered[i:i + 3], buf)
    newc.write_trailer(buf)
    assert buf.getvalue() == raw(arc)
