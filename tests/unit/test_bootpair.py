"""bootpair on a plain directory: what it writes, what it never writes, and power cuts.

The crash tests inject a crash (a BaseException no handler catches, like a
power cut) before every write, fsync, rename and unlink of a sync, and check
the directory then boots a complete, hash-verified pair: the old or the new.
A second model replays the recorded operations under power-cut rules (data
not fsynced is lost; directory changes not fsynced may or may not persist)
and checks every state the disk could wake up in.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import xxhash

from linuxrc_agent.bootpair import pair
from linuxrc_agent.bootpair.engine import SyncResult, sync_boot_dir
from linuxrc_agent.bootpair.extlinux import EXTLINUX
from linuxrc_agent.bootpair.fileops import FsOps, hash_file, resolve_in_root
from linuxrc_agent.bootpair.kargs import local_append
from linuxrc_agent.bootpair.manifest import MANIFEST_NAME, Manifest, ManifestEntry
from linuxrc_agent.bootpair.pair import FileId, LocalPair
from linuxrc_agent.nodeenv import SyncStatus
from vm_tests.bootviews import syslinux_entry

APPEND = "root=LABEL=ssiroot console=ttyS0,115200 ro"
KB = 1024


@dataclass
class Tree:
    root: Path  # the shared root
    part: Path  # the mounted boot partition

    @property
    def kernel(self) -> Path:
        return self.root / "boot/vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.root / "boot/initrd.img"

    def publish(self, kernel: bytes | None = None, initrd: bytes | None = None,
                manifest: bool = False) -> None:
        """Install a pair the way a kernel package does: versioned file, symlink to it."""
        if kernel is not None:
            name = f"vmlinuz-{xxhash.xxh3_64_hexdigest(kernel)}"
            (self.root / "boot" / name).write_bytes(kernel)
            self.kernel.unlink(missing_ok=True)
            self.kernel.symlink_to(f"/boot/{name}")  # absolute: must resolve inside root
        if initrd is not None:
            self.initrd.write_bytes(initrd)
        if manifest:
            write_manifest(self)

    def sync(self, append: str = APPEND, **kw: object) -> SyncResult:
        kw.setdefault("retry_delay", 0)
        return sync_boot_dir(self.part, self.kernel, self.initrd, append,
                             root=self.root, **kw)  # type: ignore[arg-type]


def write_manifest(tree: Tree, **override: FileId) -> None:
    entries = {role: ManifestEntry(name, override.get(role) or hash_file(
        resolve_in_root(tree.root / "boot" / name, tree.root)))
        for role, name in (("kernel", "vmlinuz"), ("initrd", "initrd.img"))}
    (tree.root / "boot" / MANIFEST_NAME).write_bytes(
        Manifest(entries["kernel"], entries["initrd"]).to_json())


def blob(tag: str, size: int) -> bytes:
    return (tag.encode() * (size // len(tag) + 1))[:size]


OLD_K, OLD_I = blob("old-kernel ", 300 * KB), blob("old-initrd ", 700 * KB)
NEW_K, NEW_I = blob("new-kernel!", 310 * KB), blob("new-initrd!", 650 * KB)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    (tmp_path / "root/boot").mkdir(parents=True)
    (tmp_path / "part").mkdir()
    t = Tree(tmp_path / "root", tmp_path / "part")
    t.publish(OLD_K, OLD_I)
    return t


def ident(data: bytes) -> FileId:
    return FileId(len(data), xxhash.xxh3_128_hexdigest(data))


def booted_pair(part: Path) -> tuple[FileId, FileId]:
    """What extlinux would boot: the config's pair, each file checked against its recorded hash."""
    data = (part / "extlinux.conf").read_bytes()
    pair = EXTLINUX.parse(data)
    assert pair is not None, f"config not ours or torn:\n{data.decode(errors='replace')}"
    for member in (pair.kernel, pair.initrd):
        assert hash_file(part / member.name) == member.ident, f"{member.name} torn"
    assert f"LINUX /{pair.kernel.name}\n" in data.decode()
    assert f"INITRD /{pair.initrd.name}\n" in data.decode()
    return pair.kernel.ident, pair.initrd.ident


def files(part: Path) -> list[str]:
    """Every file under ssi/, relative to the partition."""
    return sorted(str(p.relative_to(part)) for p in (part / "ssi").rglob("*") if p.is_file())


def append_line(config: str) -> str:
    """The live entry's kernel arguments (APPEND right-aligns them after blanks)."""
    pair = EXTLINUX.parse(config.encode())
    assert pair is not None
    assert re.search(rf"^  APPEND +{re.escape(pair.append)}$", config, re.M)
    return pair.append


def read_noatime(path: Path) -> bytes:
    # A plain read would itself move atime (relatime) and hide what the sync did.
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    with open(fd, "rb") as f:
        return f.read()


def snapshot(path: Path) -> dict[str, tuple[int, int, int, int, bytes]]:
    out = {}
    for p in sorted([path, *path.rglob("*")]):
        st = p.lstat()
        content = read_noatime(p) if p.is_file() else b""
        out[str(p.relative_to(path))] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns,
                                         st.st_atime_ns, content)
    return out


# ------------------------------------------------------------ normal operation


def test_first_sync_installs_the_pair_and_config(tree: Tree) -> None:
    result = tree.sync()
    assert result.status is SyncStatus.UPDATED, result.reason
    assert booted_pair(tree.part) == (ident(OLD_K), ident(OLD_I))
    assert files(tree.part) == sorted([f"ssi/a/vmlinuz-{ident(OLD_K).xxh3_128}",
                                       f"ssi/a/initrd-{ident(OLD_I).xxh3_128}"])
    config = (tree.part / "extlinux.conf").read_text()
    assert append_line(config) == APPEND
    assert "SERIAL 0 115200\n" in config  # console=ttyS0 on the command line
    assert len(config) == EXTLINUX.size and (tree.part / "ssi/b").is_dir()


def test_unchanged_writes_nothing(tree: Tree) -> None:
    assert tree.sync().status is SyncStatus.UPDATED
    before = snapshot(tree.part)
    calls: list[str] = []
    result = tree.sync(before_write=lambda: calls.append("rw"))
    assert result == SyncResult(SyncStatus.UNCHANGED, "")
    assert snapshot(tree.part) == before  # inodes, mtimes, ctimes, atimes, bytes
    assert calls == []  # the agent's remount-rw hook never ran


def test_unchanged_with_manifest_reads_the_local_pair_once(tree: Tree) -> None:
    tree.publish(manifest=True)
    assert tree.sync().status is SyncStatus.UPDATED
    counting = CountingOps()
    assert tree.sync(ops=counting).status is SyncStatus.UNCHANGED
    assert counting.read == len(OLD_K) + len(OLD_I)
    assert counting.mutations == 0


def test_unchanged_without_manifest_compares_sizes_then_hashes(tree: Tree) -> None:
    assert tree.sync().status is SyncStatus.UPDATED
    counting = CountingOps()
    assert tree.sync(ops=counting).status is SyncStatus.UNCHANGED
    # The shared pair (same sizes, so hashed) and the local pair.
    assert counting.read == 2 * (len(OLD_K) + len(OLD_I))


def test_new_kernel_replaces_only_the_kernel(tree: Tree) -> None:
    assert tree.sync().status is SyncStatus.UPDATED
    initrd = f"initrd-{ident(OLD_I).xxh3_128}"
    inode = (tree.part / "ssi/a" / initrd).stat().st_ino
    tree.publish(kernel=NEW_K)
    result = tree.sync()
    assert result.status is SyncStatus.UPDATED
    assert "wrote kernel (317440 bytes) in" in result.reason
    assert booted_pair(tree.part) == (ident(NEW_K), ident(OLD_I))
    assert (tree.part / "ssi/b" / initrd).stat().st_ino == inode  # linked, not copied
    # The old kernel is gone, and the old slot with it.
    assert files(tree.part) == sorted([f"ssi/b/{initrd}", f"ssi/b/vmlinuz-{ident(NEW_K).xxh3_128}"])


def test_same_size_different_content_is_a_change(tree: Tree) -> None:
    assert tree.sync().status is SyncStatus.UPDATED
    other = bytearray(OLD_K)
    other[12345] ^= 1
    tree.publish(kernel=bytes(other))
    assert tree.sync().status is SyncStatus.UPDATED
    assert booted_pair(tree.part)[0] == ident(bytes(other))


def test_new_append_rewrites_the_config_only(tree: Tree) -> None:
    assert tree.sync().status is SyncStatus.UPDATED
    pair_files = {p.name: p.stat().st_ino for p in (tree.part / "ssi").rglob("*") if p.is_file()}
    result = tree.sync(append="root=LABEL=ssiroot quiet")
    assert result.status is SyncStatus.UPDATED
    assert "extlinux config only" in result.reason
    # The same inodes, linked into the other slot: no byte of the pair written.
    assert {p.name: p.stat().st_ino for p in (tree.part / "ssi").rglob("*")
            if p.is_file()} == pair_files
    config = (tree.part / "extlinux.conf").read_text()
    assert append_line(config) == "root=LABEL=ssiroot quiet" and "SERIAL" not in config


def test_corrupt_local_copy_is_rewritten(tree: Tree) -> None:
    assert tree.sync().status is SyncStatus.UPDATED
    local = tree.part / f"ssi/a/initrd-{ident(OLD_I).xxh3_128}"
    data = bytearray(local.read_bytes())
    data[-1] ^= 0xFF
    local.write_bytes(bytes(data))
    result = tree.sync()
    assert result.status is SyncStatus.UPDATED and "wrote initrd" in result.reason
    assert booted_pair(tree.part) == (ident(OLD_K), ident(OLD_I))


def test_foreign_config_is_replaced_and_foreign_files_kept(tree: Tree) -> None:
    (tree.part / "extlinux.conf").write_text("DEFAULT linux\nLABEL linux\n  LINUX /vmlinuz\n")
    (tree.part / "vmlinuz").write_bytes(b"admin's own")
    assert tree.sync().status is SyncStatus.UPDATED
    assert booted_pair(tree.part) == (ident(OLD_K), ident(OLD_I))
    assert (tree.part / "vmlinuz").read_bytes() == b"admin's own"


def test_edited_config_is_not_trusted(tree: Tree) -> None:
    assert tree.sync().status is SyncStatus.UPDATED
    config = tree.part / "extlinux.conf"
    config.write_text(config.read_text().replace("TIMEOUT 0", "TIMEOUT 50"))
    assert tree.sync().status is SyncStatus.UPDATED
    assert "TIMEOUT 0\n" in config.read_text()


def test_config_goes_where_extlinux_was_installed(tree: Tree) -> None:
    (tree.part / "extlinux").mkdir()
    (tree.part / "extlinux/ldlinux.sys").write_bytes(b"x")
    assert tree.sync().status is SyncStatus.UPDATED
    assert EXTLINUX.parse((tree.part / "extlinux/extlinux.conf").read_bytes()) is not None
    assert not (tree.part / "extlinux.conf").exists()


def test_leftovers_of_an_interrupted_sync_are_removed_by_the_next_sync(tree: Tree) -> None:
    assert tree.sync().status is SyncStatus.UPDATED
    (tree.part / "ssi/.tmp-1-kernel").write_bytes(b"half a kern")
    (tree.part / f"ssi/initrd-{'0' * 32}").write_bytes(b"renamed, never committed")
    (tree.part / ".extlinux.conf.tmp-1").write_bytes(b"DEFAULT")
    (tree.part / "ssi/b/.tmp-1-initrd").write_bytes(b"half an initrd, in the free slot")
    before = snapshot(tree.part)
    assert tree.sync().status is SyncStatus.UNCHANGED  # no write, not even a cleanup
    assert snapshot(tree.part) == before
    tree.publish(kernel=NEW_K)
    result = tree.sync()
    assert result.status is SyncStatus.UPDATED
    assert "removed 4 leftover file(s)" in result.reason
    assert sorted(p.name for p in tree.part.iterdir()) == ["extlinux.conf", "ssi"]
    assert sorted(p.name for p in (tree.part / "ssi").iterdir()) == ["a", "b"]
    assert files(tree.part) == sorted(f"ssi/b/{n}" for n in (
        f"vmlinuz-{ident(NEW_K).xxh3_128}", f"initrd-{ident(OLD_I).xxh3_128}"))


def test_before_write_runs_once_before_the_first_write(tree: Tree) -> None:
    seen: list[bool] = []
    result = tree.sync(before_write=lambda: seen.append((tree.part / "ssi").exists()))
    assert result.status is SyncStatus.UPDATED and seen == [False]


def test_before_write_failure_is_a_failure(tree: Tree) -> None:
    def refuse() -> None:
        raise OSError(errno.EROFS, "Read-only file system")
    result = tree.sync(before_write=refuse)
    assert result.status is SyncStatus.FAILED and "Read-only" in result.reason
    assert list(tree.part.iterdir()) == []


def test_bad_append_fails_without_writing(tree: Tree) -> None:
    for bad in ("root=x\nDEFAULT evil", "x" * 2048):
        assert tree.sync(append=bad).status is SyncStatus.FAILED
    assert list(tree.part.iterdir()) == []


def test_no_kernel_on_the_shared_root_skips(tree: Tree) -> None:
    tree.kernel.unlink()
    result = tree.sync()
    assert result.status is SyncStatus.SKIPPED and "no kernel" in result.reason


def test_boot_dir_missing_fails(tree: Tree) -> None:
    result = sync_boot_dir(tree.part / "nope", tree.kernel, tree.initrd, APPEND)
    assert result.status is SyncStatus.FAILED


# ------------------------------------------------------------ manifest


def test_manifest_match_updates(tree: Tree) -> None:
    tree.publish(NEW_K, NEW_I, manifest=True)
    assert tree.sync().status is SyncStatus.UPDATED
    assert booted_pair(tree.part) == (ident(NEW_K), ident(NEW_I))


def test_kernel_replaced_without_manifest_update_skips_and_writes_nothing(tree: Tree) -> None:
    tree.publish(manifest=True)
    assert tree.sync().status is SyncStatus.UPDATED
    tree.publish(NEW_K, NEW_I, manifest=True)
    tree.publish(kernel=blob("hotfix", 123 * KB))  # manifest not updated: mid-update
    before = snapshot(tree.part)
    calls: list[str] = []
    result = tree.sync(attempts=3, before_write=lambda: calls.append("rw"))
    assert result.status is SyncStatus.SKIPPED
    assert "125952 bytes" in result.reason and "try 3 of 3" in result.reason
    assert snapshot(tree.part) == before and calls == []  # the copy never started


def test_stale_manifest_matching_the_local_pair_is_unchanged(tree: Tree) -> None:
    tree.publish(manifest=True)
    assert tree.sync().status is SyncStatus.UPDATED
    tree.publish(NEW_K, NEW_I)  # manifest still names the local pair: a complete publish
    assert tree.sync().status is SyncStatus.UNCHANGED


def test_same_size_mismatch_is_caught_while_copying(tree: Tree) -> None:
    tree.publish(manifest=True)
    assert tree.sync().status is SyncStatus.UPDATED
    stale = bytearray(NEW_K)
    tree.publish(kernel=NEW_K, initrd=NEW_I, manifest=True)
    stale[0] ^= 1
    tree.publish(kernel=bytes(stale))  # same size as the manifest says, other bytes
    result = tree.sync(attempts=2)
    assert result.status is SyncStatus.SKIPPED and "does not match" in result.reason
    assert booted_pair(tree.part) == (ident(OLD_K), ident(OLD_I))
    assert len(files(tree.part)) == 2  # the rejected copy is gone


def test_publish_completing_during_the_retry_is_picked_up(
        tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    tree.publish(NEW_K, NEW_I)
    write_manifest(tree, kernel=ident(OLD_K))  # lilo.ssi has not finished yet
    monkeypatch.setattr("linuxrc_agent.bootpair.engine.time.sleep", lambda _s: write_manifest(tree))
    result = tree.sync(attempts=3)
    assert result.status is SyncStatus.UPDATED, result.reason
    assert booted_pair(tree.part) == (ident(NEW_K), ident(NEW_I))


def test_garbled_manifest_skips(tree: Tree) -> None:
    (tree.root / "boot" / MANIFEST_NAME).write_text('{"format": 1, "kernel": ')
    result = tree.sync()
    assert result.status is SyncStatus.SKIPPED and "unreadable" in result.reason


def test_manifest_of_other_files_is_ignored(tree: Tree) -> None:
    m = Manifest(ManifestEntry("vmlinuz-test", ident(b"k")), ManifestEntry("initrd.img",
                                                                          ident(OLD_I)))
    (tree.root / "boot" / MANIFEST_NAME).write_bytes(m.to_json())
    result = tree.sync()
    assert result.status is SyncStatus.UPDATED and "ignored" in result.reason


def test_manifest_round_trip_and_rejects() -> None:
    m = Manifest(ManifestEntry("vmlinuz", ident(b"k")), ManifestEntry("initrd.img", ident(b"i")))
    assert Manifest.parse(m.to_json()) == m
    extended = m.to_json().replace(b'"format": 1,', b'"format": 1, "append": "quiet",')
    assert Manifest.parse(extended) == m
    for bad in (b"[]", b'{"format": 2}', b'{"format": 1, "kernel": {"name": "v", "size": -1, '
                b'"xxh3_128": "00"}}', b"\xff"):
        with pytest.raises(ValueError):
            Manifest.parse(bad)


def test_source_changing_while_copied_without_manifest_retries(tree: Tree) -> None:
    class Growing(FsOps):
        grown = False

        def write(self, fd: int, data: memoryview) -> int:
            if not self.grown:
                self.grown = True
                with open(tree.initrd, "ab") as f:
                    f.write(b"more")
            return super().write(fd, data)

    result = tree.sync(ops=Growing(), attempts=2)
    # Try 1 sees the initrd grow under it (kernel is copied first, but its
    # write triggers the growth); try 2 copies the grown file.
    assert result.status is SyncStatus.UPDATED, result.reason
    assert booted_pair(tree.part) == (ident(OLD_K), ident(OLD_I + b"more"))


# ------------------------------------------------------------ errors


class CountingOps(FsOps):
    def __init__(self) -> None:
        self.read = 0
        self.mutations = 0
        self.in_place = 0

    def readinto(self, fd: int, buf: bytearray) -> int:
        n = super().readinto(fd, buf)
        self.read += n
        return n

    def open_new(self, path: Path) -> int:
        self.mutations += 1
        return super().open_new(path)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        self.in_place += 1
        return super().pwrite(fd, data, offset)


class FullDisk(FsOps):
    """ENOSPC once `room` bytes are written, like a small partition."""

    def __init__(self, room: int, err: int = errno.ENOSPC) -> None:
        self.room, self.err = room, err

    def write(self, fd: int, data: memoryview) -> int:
        if len(data) > self.room:
            raise OSError(self.err, os.strerror(self.err))
        self.room -= len(data)
        return super().write(fd, data)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_write_error_fails_and_keeps_the_old_pair(tree: Tree, err: int) -> None:
    assert tree.sync().status is SyncStatus.UPDATED
    tree.publish(NEW_K, NEW_I)
    result = tree.sync(ops=FullDisk(len(NEW_K) + 100 * KB, err))
    assert result.status is SyncStatus.FAILED
    assert os.strerror(err) in result.reason
    if err == errno.ENOSPC:
        assert "MiB free" in result.reason and "needs" in result.reason
    assert booted_pair(tree.part) == (ident(OLD_K), ident(OLD_I))
    assert len(files(tree.part)) == 2  # temp and new kernel cleaned up
    assert tree.sync().status is SyncStatus.UPDATED  # room again: it recovers
    assert booted_pair(tree.part) == (ident(NEW_K), ident(NEW_I))


def test_fsync_eio_fails_and_keeps_the_old_pair(tree: Tree) -> None:
    assert tree.sync().status is SyncStatus.UPDATED
    tree.publish(NEW_K, NEW_I)

    class BadFsync(FsOps):
        def fsync(self, fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    result = tree.sync(ops=BadFsync())
    assert result.status is SyncStatus.FAILED and "Input/output error" in result.reason
    assert booted_pair(tree.part) == (ident(OLD_K), ident(OLD_I))


def test_read_back_mismatch_fails_before_commit(tree: Tree) -> None:
    assert tree.sync().status is SyncStatus.UPDATED
    tree.publish(NEW_K, NEW_I)

    class BitFlip(FsOps):
        def write(self, fd: int, data: memoryview) -> int:
            bad = bytearray(data)
            bad[0] ^= 1
            return super().write(fd, memoryview(bad))

    result = tree.sync(ops=BitFlip())
    assert result.status is SyncStatus.FAILED and "read-back differs" in result.reason
    assert booted_pair(tree.part) == (ident(OLD_K), ident(OLD_I))


# ------------------------------------------------------------ power cuts


class PowerCut(BaseException):
    """Not an Exception: nothing in the sync may catch it, as nothing runs after a power cut."""


@dataclass
class Recorder(FsOps):
    """Records every change with its data; optionally 'loses power' before change number `cut`."""

    part: Path
    cut: int = -1
    trace: list[tuple[str, str, Any]] = field(default_factory=list)
    fds: dict[int, str] = field(default_factory=dict)

    def _step(self, op: str, path: str, arg: Any = b"") -> None:
        if len(self.trace) == self.cut:
            raise PowerCut(f"before {op} {path}")
        self.trace.append((op, path, arg))

    def _rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.part))

    def open_new(self, path: Path) -> int:
        self._step("create", self._rel(path))
        fd = super().open_new(path)
        self.fds[fd] = self._rel(path)
        return fd

    def write(self, fd: int, data: memoryview) -> int:
        self._step("write", self.fds[fd], bytes(data))
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._step("fsync", self.fds[fd])
        super().fsync(fd)

    def close(self, fd: int) -> None:
        self.fds.pop(fd)
        super().close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        self._step("rename", self._rel(src), self._rel(dst))
        super().rename(src, dst)

    def unlink(self, path: Path) -> None:
        self._step("unlink", self._rel(path))
        super().unlink(path)

    def mkdir(self, path: Path) -> None:
        self._step("mkdir", self._rel(path))
        super().mkdir(path)

    def fsync_dir(self, path: Path) -> None:
        self._step("fsync_dir", self._rel(path))
        super().fsync_dir(path)

    def link(self, src: Path, dst: Path) -> None:
        self._step("link", self._rel(src), self._rel(dst))
        super().link(src, dst)

    def open_existing(self, path: Path) -> int:
        fd = super().open_existing(path)  # opening changes nothing
        self.fds[fd] = self._rel(path)
        return fd

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        self._step("pwrite", self.fds[fd], (offset, bytes(data)))
        return super().pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        self._step("fdatasync", self.fds[fd])
        super().fdatasync(fd)

    def checkpoint(self, path: Path) -> str:
        self._step("checkpoint", self._rel(path))
        return super().checkpoint(path)


def _setup_old(tmp_path: Path, name: str, first: bool) -> Tree:
    base = tmp_path / name
    (base / "root/boot").mkdir(parents=True)
    (base / "part").mkdir()
    t = Tree(base / "root", base / "part")
    t.publish(OLD_K, OLD_I)
    if not first:
        assert t.sync().status is SyncStatus.UPDATED
        (t.part / "ssi/.tmp-1-initrd").write_bytes(b"leftover")  # cleaned up: more steps
    t.publish(NEW_K, NEW_I)
    return t


@pytest.mark.parametrize("first", [False, True], ids=["old-to-new", "empty-to-new"])
def test_power_cut_before_every_step_leaves_a_bootable_pair(tmp_path: Path, first: bool) -> None:
    full = Recorder(_setup_old(tmp_path, "full", first).part)
    t = Tree(full.part.parent / "root", full.part)
    assert t.sync(ops=full).status is SyncStatus.UPDATED
    steps = len(full.trace)
    assert steps > 10
    old, new = (ident(OLD_K), ident(OLD_I)), (ident(NEW_K), ident(NEW_I))
    seen = set()
    for cut in range(steps):
        t = _setup_old(tmp_path, f"cut{cut}", first)
        with pytest.raises(PowerCut):
            t.sync(ops=Recorder(t.part, cut=cut))
        if first and not (t.part / "extlinux.conf").exists():
            seen.add("none")  # nothing committed yet: the partition was never bootable
        else:
            pair = booted_pair(t.part)
            assert pair in (old, new), f"cut before step {cut}: mixed pair"
            seen.add("old" if pair == old else "new")
        # Power back: the next boot finishes the job ...
        assert t.sync().status in (SyncStatus.UPDATED, SyncStatus.UNCHANGED)
        assert booted_pair(t.part) == new
        # ... and the next update leaves no debris (an unchanged boot writes
        # nothing, not even a cleanup).
        t.publish(kernel=OLD_K)
        assert t.sync().status is SyncStatus.UPDATED
        assert len(files(t.part)) == 2
        assert sorted(p.name for p in t.part.iterdir()) == ["extlinux.conf", "ssi"]
    assert seen == ({"none", "new"} if first else {"old", "new"})


def referenced_files_intact(part: Path) -> set[str]:
    """The two files the config boots (as syslinux reads it) exist and hash to their names."""
    entry, _odd = syslinux_entry((part / "extlinux.conf").read_text())
    assert entry is not None
    names = {entry.kernel.lstrip("/"), entry.initrd.lstrip("/")}
    assert len(names) == 2
    for name in names:
        assert hash_file(part / name).xxh3_128 == name.rsplit("-", 1)[1], f"{name} torn"
    return names


def test_power_cut_with_an_admin_edited_config_keeps_what_it_names(tmp_path: Path) -> None:
    """An edited config is not ours, but until the commit it is what boots: its files stay."""
    def setup(name: str) -> Tree:
        t = _setup_old(tmp_path, name, False)
        config = t.part / "extlinux.conf"
        config.write_text(config.read_text().replace("TIMEOUT 0", "TIMEOUT 50"))
        return t

    full = Recorder(setup("full").part)
    assert Tree(full.part.parent / "root", full.part).sync(ops=full).status \
        is SyncStatus.UPDATED
    for cut in range(len(full.trace)):
        t = setup(f"cut{cut}")
        old_names = referenced_files_intact(t.part)
        with pytest.raises(PowerCut):
            t.sync(ops=Recorder(t.part, cut=cut))
        # The edited config boots slot a: the new pair goes into slot b.
        assert referenced_files_intact(t.part) in (old_names, {
            pair.member_name("kernel", ident(NEW_K).xxh3_128, "b"),
            pair.member_name("initrd", ident(NEW_I).xxh3_128, "b")})


def test_members_renamed_before_a_cut_are_reused(tmp_path: Path) -> None:
    t = _setup_old(tmp_path, "reuse", False)
    write_manifest(t)
    commit = next(i for i, step in enumerate(_full_trace(tmp_path)) if step[0] == "pwrite"
                  and step[1] == "extlinux.conf" and step[2][0] == 0)
    with pytest.raises(PowerCut):
        t.sync(ops=Recorder(t.part, cut=commit))
    assert booted_pair(t.part) == (ident(OLD_K), ident(OLD_I))
    counting = CountingOps()
    result = t.sync(ops=counting)
    assert result.status is SyncStatus.UPDATED and "config only" in result.reason
    assert counting.mutations == 0  # nothing created: the pair was complete in its slot
    assert counting.in_place == 2  # the config's free region, then its head
    assert booted_pair(t.part) == (ident(NEW_K), ident(NEW_I))


def _full_trace(tmp_path: Path) -> list[tuple[str, str, Any]]:
    t = _setup_old(tmp_path, "trace", False)
    write_manifest(t)
    rec = Recorder(t.part)
    assert t.sync(ops=rec).status is SyncStatus.UPDATED
    return rec.trace


def _on_disk(part: Path) -> tuple[dict[str, bytes], set[str]]:
    """The partition's files (relative name: bytes) and its directories, for the model."""
    return ({str(p.relative_to(part)): p.read_bytes() for p in part.rglob("*") if p.is_file()},
            {str(p.relative_to(part)) for p in part.rglob("*") if p.is_dir()})


def _durable_states(initial: tuple[dict[str, bytes], set[str]],
                    trace: list[tuple[str, str, Any]]) -> list[dict[str, bytes]]:
    """Every state a disk may wake up in after a power cut at the end of `trace`.

    Pessimistic rules, as Linux reads the disk (journal replayed): a file's
    data survives only up to its last fsync or fdatasync; the name changes in
    a directory since its last fsync survive as any prefix of them (each
    directory on its own, so across directories in any order); a checkpoint
    makes everything durable. (The bootloader's view, blocks at their home
    locations, is enumerated for real by vm_tests/crashstates.py.)
    """
    durable_ns: dict[str, int] = {}
    live_ns: dict[str, int] = {}
    durable_data: dict[int, bytes] = {}
    live_data: dict[int, bytes] = {}
    pending: dict[str, list[tuple[str, str, str]]] = {}
    dirs = {"", *initial[1]}
    next_id = itertools.count()
    for name, data in initial[0].items():
        obj = next(next_id)
        durable_ns[name] = live_ns[name] = obj
        durable_data[obj] = live_data[obj] = data
        dirs.add(str(Path(name).parent) if "/" in name else "")
    for op, path, arg in trace:
        parent = str(Path(path).parent) if "/" in path else ""
        if op == "create":
            obj = next(next_id)
            live_ns[path] = obj
            live_data[obj] = b""
            pending.setdefault(parent, []).append(("link", path, str(obj)))
        elif op == "write":
            assert isinstance(arg, bytes)
            live_data[live_ns[path]] += arg
        elif op in ("fsync", "fdatasync"):
            durable_data[live_ns[path]] = live_data[live_ns[path]]
        elif op == "pwrite":
            offset, data = arg
            old = live_data[live_ns[path]]
            live_data[live_ns[path]] = old[:offset] + data + old[offset + len(data):]
        elif op == "link":
            live_ns[arg] = live_ns[path]
            pending.setdefault(str(Path(arg).parent) if "/" in arg else "", []).append(
                ("link", arg, str(live_ns[path])))
        elif op == "checkpoint":
            for queue in pending.values():
                durable_ns, dirs = _apply(durable_ns, dirs, queue)
            pending.clear()
            durable_data.update(live_data)
        elif op == "rename":
            assert isinstance(arg, str)
            live_ns[arg] = live_ns.pop(path)
            pending.setdefault(parent, []).append(("rename", path, arg))
        elif op == "unlink":
            del live_ns[path]
            pending.setdefault(parent, []).append(("unlink", path, ""))
        elif op == "mkdir":
            pending.setdefault(parent, []).append(("mkdir", path, ""))
        elif op == "fsync_dir":
            key = "" if path == "." else path
            durable_ns, dirs = _apply(durable_ns, dirs, pending.pop(key, []))
    states = []
    queues = list(pending.values())
    for cut in itertools.product(*(range(len(q) + 1) for q in queues)):
        ns, ds = durable_ns, dirs
        for q, n in zip(queues, cut, strict=True):
            ns, ds = _apply(ns, ds, q[:n])
        states.append({name: durable_data.get(obj, b"") for name, obj in ns.items()
                       if str(Path(name).parent) in ds or "/" not in name})
    return states


def _apply(ns: dict[str, int], dirs: set[str], ops: list[tuple[str, str, str]],
           ) -> tuple[dict[str, int], set[str]]:
    ns, dirs = dict(ns), set(dirs)
    for op, a, b in ops:
        if op == "link":
            ns[a] = int(b)
        elif op == "rename":
            ns[b] = ns.pop(a)
        elif op == "unlink":
            del ns[a]
        elif op == "mkdir":
            dirs.add(a)
    return ns, dirs


def _boots(state: dict[str, bytes]) -> tuple[FileId, FileId] | None:
    config = state.get("extlinux.conf")
    if config is None:
        return None
    pair = EXTLINUX.parse(config)
    assert pair is not None, "torn config"
    for member in (pair.kernel, pair.initrd):
        assert member.name in state, f"config names {member.name}, which is lost"
        assert ident(state[member.name]) == member.ident, f"{member.name} torn"
    return pair.kernel.ident, pair.initrd.ident


@pytest.mark.parametrize("first", [False, True], ids=["old-to-new", "empty-to-new"])
def test_every_durable_state_after_a_power_cut_boots_old_or_new(tmp_path: Path,
                                                                first: bool) -> None:
    t = _setup_old(tmp_path, "model", first)
    initial = _on_disk(t.part)
    rec = Recorder(t.part)
    assert t.sync(ops=rec).status is SyncStatus.UPDATED
    old, new = (ident(OLD_K), ident(OLD_I)), (ident(NEW_K), ident(NEW_I))
    checked = 0
    for end in range(len(rec.trace) + 1):
        for state in _durable_states(initial, rec.trace[:end]):
            pair = _boots(state)
            assert pair in ((None, new) if first else (old, new)), f"after step {end}"
            checked += 1
    # The end state is durable in every outcome: the new pair.
    assert all(_boots(s) == new for s in _durable_states(initial, rec.trace))
    assert checked > len(rec.trace)


@pytest.mark.parametrize(("dropped", "caught"), [
    # Without the slot directory's fsync and the checkpoints, the head names files
    # whose directory entries may be lost.
    (lambda step: step[0] == "checkpoint" or step == ("fsync_dir", "ssi/b", b""), "lost"),
    # Without the members' fsyncs and the checkpoints, the head names files whose
    # data may be lost.
    (lambda step: step[0] in ("checkpoint", "fsync"), "torn"),
], ids=["no-slot-fsync", "no-data-fsync"])
def test_the_model_catches_a_missing_fsync(tmp_path: Path, dropped: Callable[[Any], bool],
                                           caught: str) -> None:
    """The model is not vacuous: a protocol without these steps before the commit is caught."""
    t = _setup_old(tmp_path, "model", False)
    initial = _on_disk(t.part)
    rec = Recorder(t.part)
    assert t.sync(ops=rec).status is SyncStatus.UPDATED
    commit = next(i for i, s in enumerate(rec.trace) if s[0] == "pwrite" and s[1] ==
                  "extlinux.conf" and s[2][0] == 0)
    broken = [s for i, s in enumerate(rec.trace) if i >= commit or not dropped(s)]
    assert len(broken) < len(rec.trace)
    with pytest.raises(AssertionError, match=caught):
        for end in range(len(broken) + 1):
            for state in _durable_states(initial, broken[:end]):
                _boots(state)


# ------------------------------------------------------------ helpers


def test_local_append_drops_what_loaders_add() -> None:
    cmdline = ('BOOT_IMAGE=/ssi/vmlinuz-x initrd=/ssi/initrd-x root=LABEL=r ssi.break '
               'console=ttyS0 BOOTIF=01-52-54-00-12-34-01 ssi.bootif=52:54:00:12:34:01 '
               'ssi.break=mount x="a b" ssi.debug\n')
    assert local_append(cmdline) == 'root=LABEL=r console=ttyS0 x="a b" ssi.debug'


def test_resolve_in_root(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-6").write_bytes(b"k")
    (tmp_path / "vmlinuz").symlink_to("boot/vmlinuz-6")
    (tmp_path / "boot/vmlinuz").symlink_to("/vmlinuz")
    (tmp_path / "boot/up").symlink_to("../../../../boot/vmlinuz-6")
    assert resolve_in_root(tmp_path / "boot/vmlinuz", tmp_path) == tmp_path / "boot/vmlinuz-6"
    assert resolve_in_root(tmp_path / "boot/up", tmp_path) == tmp_path / "boot/vmlinuz-6"
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(OSError):
        resolve_in_root(tmp_path / "loop", tmp_path)


def test_extlinux_serial_follows_the_last_console() -> None:
    k = pair.PairMember(pair.member_name("kernel", "a" * 32), FileId(1, "a" * 32))
    i = pair.PairMember(pair.member_name("initrd", "b" * 32), FileId(2, "b" * 32))
    cases: dict[str, str | None] = {
        "console=ttyS1,38400n8": "SERIAL 1 38400",
        "console=ttyS0": "SERIAL 0 9600",
        "console=ttyS0,115200 console=tty0": None,
        "quiet": None,
    }
    for append, want in cases.items():
        text = EXTLINUX.render(LocalPair(k, i, append)).decode()
        assert (want in text) if want else ("SERIAL" not in text)
        assert EXTLINUX.parse(text.encode()) == LocalPair(k, i, append)


# ------------------------------------------------------------ the slot layout


def test_an_update_rewrites_the_config_in_place_and_commits_in_one_sector(tree: Tree) -> None:
    """The protocol as a bootloader needs it (docs/architecture.md, commit protocol)."""
    assert tree.sync().status is SyncStatus.UPDATED
    config = tree.part / "extlinux.conf"
    before = config.stat()
    live_a = set(files(tree.part))
    tree.publish(NEW_K, NEW_I)
    rec = Recorder(tree.part)
    assert tree.sync(ops=rec).status is SyncStatus.UPDATED
    after = config.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size) == \
        (before.st_ino, EXTLINUX.size)
    commit = [i for i, s in enumerate(rec.trace) if s[0] == "pwrite" and s[2][0] == 0]
    assert len(commit) == 1 and len(rec.trace[commit[0]][2][1]) == 512  # one sector
    c = commit[0]
    steps = [s[0] for s in rec.trace]
    # The free region written and synced, then everything checkpointed, then the head.
    region = next(i for i, s in enumerate(rec.trace) if s[0] == "pwrite")
    assert rec.trace[region][2][0] == EXTLINUX.offset("b")
    assert steps[region + 1] == "fdatasync" and steps[c - 1] == "checkpoint"
    assert steps[c + 1] == "fdatasync" and "checkpoint" in steps[c + 1:]
    # Before the commit nothing a bootloader reads changes: not the live slot, not the
    # config's directory entry, not the head or the live region.
    for op, path, arg in rec.trace[:c]:
        assert not path.startswith("ssi/a/") or op == "link", (op, path)
        assert op not in ("create", "rename", "unlink") or path.startswith("ssi/b/"), (op, path)
        if op == "pwrite":
            assert arg[0] >= EXTLINUX.offset("b")
    # After it, the old slot is emptied.
    assert not any(f in files(tree.part) for f in live_a)
    assert all(f.startswith("ssi/b/") for f in files(tree.part))
    tree.publish(kernel=OLD_K)
    assert tree.sync().status is SyncStatus.UPDATED
    assert all(f.startswith("ssi/a/") for f in files(tree.part))  # and back


def test_a_region_torn_at_any_sector_leaves_the_live_entry_as_it_was() -> None:
    """What a power cut during step 3 can leave: the free region, part old, part new."""
    def member(role: str, data: bytes, slot: str) -> pair.PairMember:
        return pair.PairMember(pair.member_name(role, ident(data).xxh3_128, slot), ident(data))

    live = LocalPair(member("kernel", OLD_K, "a"), member("initrd", OLD_I, "a"), APPEND)
    before = bytearray(EXTLINUX.render(live, "a"))
    start = EXTLINUX.offset("b")
    stale = EXTLINUX.region("b", LocalPair(member("kernel", b"k" * 99, "b"),
                                           member("initrd", b"i" * 7, "b"), "quiet"))
    before[start:start + len(stale)] = stale
    new = EXTLINUX.region("b", LocalPair(member("kernel", NEW_K, "b"), member("initrd", NEW_I, "b"),
                                         "root=LABEL=x " + "y=" + "z" * 1900))
    sectors = len(new) // 512
    for mask in range(1, 1 << sectors):
        mixed = bytearray(before)
        for s in range(sectors):
            if mask >> s & 1:
                mixed[start + s * 512:start + (s + 1) * 512] = new[s * 512:(s + 1) * 512]
        assert EXTLINUX.layout(bytes(mixed)) == pair.Layout("a", live), mask
        entry, odd = syslinux_entry(bytes(mixed).decode())
        assert odd == [] and entry is not None
        assert (entry.kernel.lstrip("/"), entry.initrd.lstrip("/"), entry.append) == \
            (live.kernel.name, live.initrd.name, APPEND)


def test_a_partition_of_the_older_layout_is_migrated_reusing_its_files(tree: Tree) -> None:
    from vm_tests.crashstates import legacy_config

    (tree.part / "ssi").mkdir()
    k, i = ident(OLD_K), ident(OLD_I)
    (tree.part / f"ssi/vmlinuz-{k.xxh3_128}").write_bytes(OLD_K)
    (tree.part / f"ssi/initrd-{i.xxh3_128}").write_bytes(OLD_I)
    (tree.part / "extlinux.conf").write_bytes(
        legacy_config(k.xxh3_128, i.xxh3_128, (k.size, i.size), APPEND))
    rec = Recorder(tree.part)
    result = tree.sync(ops=rec)
    assert result.status is SyncStatus.UPDATED and "config only" in result.reason  # linked
    assert booted_pair(tree.part) == (k, i)
    assert files(tree.part) == sorted([f"ssi/a/vmlinuz-{k.xxh3_128}",
                                       f"ssi/a/initrd-{i.xxh3_128}"])
    # The new config was written in the spare slot, checkpointed, then renamed over the old.
    rename = next(s for s in rec.trace if s[0] == "rename" and s[2] == "extlinux.conf")
    assert rename[1].startswith("ssi/b/.extlinux.conf.")
    steps = [s[0] for s in rec.trace]
    assert steps[steps.index("rename", steps.index("link")) - 1] == "checkpoint"
    assert tree.sync().status is SyncStatus.UNCHANGED


def test_without_hard_links_an_unchanged_member_is_copied_from_the_live_slot(tree: Tree) -> None:
    class Fat(FsOps):  # FAT: link(2) fails with EPERM
        def link(self, src: Path, dst: Path) -> None:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    assert tree.sync(ops=Fat()).status is SyncStatus.UPDATED
    tree.publish(kernel=NEW_K)
    result = tree.sync(ops=Fat())
    assert result.status is SyncStatus.UPDATED, result.reason
    assert "wrote kernel" in result.reason and "initrd copied from ssi/a/" in result.reason
    assert booted_pair(tree.part) == (ident(NEW_K), ident(OLD_I))
    assert all(f.startswith("ssi/b/") for f in files(tree.part))


def test_local_config_locks_the_prompt_unless_the_cluster_allows_editing() -> None:
    from linuxrc_agent.bootpair.extlinux import EXTLINUX

    locked = EXTLINUX.head("a", "root=LABEL=r console=ttyS0")
    assert b"NOESCAPE 1\nALLOWOPTIONS 0\n" in locked and len(locked) == EXTLINUX.head_size
    editable = EXTLINUX.head("a", "root=LABEL=r ssi.loader_edit")
    assert b"NOESCAPE" not in editable and b"ALLOWOPTIONS" not in editable
