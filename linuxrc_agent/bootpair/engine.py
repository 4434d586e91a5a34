"""The commit engine: keep a boot partition's pair identical to the shared root's default pair.

Runs inside the boot agent (PID 1, imported only for nodes with the local
boot flag) and in `lilo.ssi --local-only`: standard library and xxhash only,
no subprocess. It works on a directory; the caller mounts the partition
(read-only first: see `before_write`). Bootloader-agnostic: the config's
place, size and text come from a Bootloader (bootpair.extlinux, ...).

On-disk layout of the partition (boot_dir):

    extlinux.conf             fixed size: a head sector naming the live slot (the
                              commit point), then one region per slot naming its pair
    ssi/a/, ssi/b/            the two slots: vmlinuz-<xxh3_128>, initrd-<xxh3_128>
    ssi/<slot>/.tmp-<pid>-*   being written; never named by a config
    ldlinux.sys, ldlinux.c32  extlinux itself (installed by provisioning, never touched here)

extlinux.conf sits in the directory holding ldlinux.sys (extlinux searches its
install directory first), at the partition's root when provisioned by
`mkinitrd_ssi.local.partition.provision`.

Commit protocol: a power cut at any instant leaves the old pair or the new,
as Linux reads the partition (journal replayed) and as a bootloader reads it
(no replay). The argument is in docs/architecture.md, "The local boot
partition: commit protocol"; in short:

 1. the free slot (the one the head does not name) is emptied, but for
    members an interrupted sync left there intact;
 2. each member goes into the free slot: linked from the live slot when it
    is unchanged (FAT: copied), else copied from the shared root, fsynced,
    dropped from the page cache, read back and compared by xxh3_128 with the
    stream copied and the manifest, renamed to ssi/<slot>/<role>-<hash>;
    the slot directory fsynced;
 3. the free slot's region of the config is overwritten in place (same
    length, no allocation) and fdatasynced: it is not booted;
 4. checkpoint: everything so far is written to its home location
    (fileops.checkpoint), so a reader that replays nothing sees it too;
 5. the commit: the head sector is overwritten in place to name the free
    slot, one 512-byte write, fdatasynced;
 6. the old slot is emptied, and a checkpoint again.

Nothing a bootloader reads before step 5 changes (the live slot, its
directory, its region, the head); after it, the new slot is complete at its
home location since step 4. A partition without the layout (never synced,
or synced by an ssi-boot before the slots) gets it at its first sync: the
pair goes into a slot and is checkpointed, then the new config is renamed
over the old one while the old one is held open (so its blocks stay where a
bootloader finds them until the rename is checkpointed too).

The shared root's manifest (bootpair.manifest) lists each member's name,
size and xxh3_128. With it, the unchanged check compares the manifest with
the hashes recorded in the config and reads only the two local files, once,
to confirm they are intact; a sync copies a pair only if what it copied
matches the manifest (else the shared root is mid-update: retry briefly,
then SKIPPED).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from linuxrc_agent import atomic
from linuxrc_agent.bootpair import kargs
from linuxrc_agent.bootpair.extlinux import EXTLINUX
from linuxrc_agent.bootpair.fileops import (
    CHUNK,
    FsOps,
    hash_fd,
    hash_file,
    open_read,
    read_small,
    resolve_in_root,
)
from linuxrc_agent.bootpair.manifest import MANIFEST_NAME, Manifest
from linuxrc_agent.bootpair.pair import (
    ROLES,
    SLOTS,
    SSI_DIR,
    Bootloader,
    FileId,
    Layout,
    LocalPair,
    PairMember,
    member_name,
    other,
)
from linuxrc_agent.nodeenv import SyncStatus

_TMP_PREFIX = ".tmp-"
# link(2) refused: FAT has no hard links (EPERM), or another filesystem's rules.
_NO_LINK = frozenset({errno.EPERM, errno.EXDEV, errno.EMLINK, errno.EOPNOTSUPP})


@dataclass(frozen=True)
class SyncResult:
    status: SyncStatus
    reason: str = ""


class _Retry(Exception):
    """The shared root does not hold a consistent pair right now (mid-update)."""


class _Sync:
    def __init__(self, boot_dir: Path, sources: dict[str, Path], append: str,
                 manifest_path: Path, manifest_names: dict[str, str],
                 bootloader: Bootloader, ops: FsOps,
                 before_write: Callable[[], None] | None,
                 progress: Callable[[str], None]) -> None:
        self.boot_dir = boot_dir
        self.progress = progress
        self.ssi_dir = boot_dir / SSI_DIR
        self.sources = sources
        self.append = append
        self.manifest_path = manifest_path
        self.manifest_names = manifest_names
        self.loader = bootloader
        self.ops = ops
        self.before_write = before_write
        self.config = bootloader.config_path(boot_dir)
        self.buf = bytearray(CHUNK)
        self.notes: list[str] = []
        self.intact: dict[PairMember, bool] = {}

    # -- reading

    def read_config(self) -> tuple[bytes | None, Layout | None]:
        data = read_small(self.config)
        return data, None if data is None else self.loader.layout(data)

    def read_manifest(self) -> Manifest | None:
        data = read_small(self.manifest_path)
        if data is None:
            return None
        try:
            manifest = Manifest.parse(data)
        except (ValueError, RecursionError) as e:
            raise _Retry(f"{self.manifest_path} is unreadable ({e})") from None
        for role in ROLES:
            if manifest.entry(role).name != self.manifest_names[role]:
                self.notes.append(f"{self.manifest_path} describes "
                                  f"{manifest.entry(role).name}, not {self.sources[role]}: "
                                  "ignored")
                return None
        return manifest

    def local_intact(self, member: PairMember) -> bool:
        """One read of the local file (once per sync): is it exactly what its name says?"""
        if member not in self.intact:
            self.intact[member] = self._hashes_to(self.boot_dir / member.name, member.ident)
        return self.intact[member]

    def _hashes_to(self, path: Path, ident: FileId) -> bool:
        try:
            fd = open_read(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            if os.fstat(fd).st_size != ident.size:
                return False
            return hash_fd(fd, self.ops, self.buf) == ident
        finally:
            os.close(fd)

    def wanted(self, manifest: Manifest | None,
               local: dict[str, set[int]]) -> dict[str, FileId | None]:
        """The shared pair's identity where it is known without copying (None: the copy tells).

        Without a manifest a source is hashed only when a local copy of its size
        (local: sizes by role) could spare copying it.
        """
        if manifest is not None:
            return {r: manifest.entry(r).ident for r in ROLES}
        out: dict[str, FileId | None] = {}
        for role in ROLES:
            if os.stat(self.sources[role]).st_size in local[role]:
                out[role] = hash_file(self.sources[role], self.ops, self.buf)
            else:
                out[role] = None
        return out

    def local_sizes(self, current: LocalPair | None, names: set[str]) -> dict[str, set[int]]:
        """Sizes of the local copies by role: the live pair's, or the files a config names."""
        out: dict[str, set[int]] = {r: set() for r in ROLES}
        if current is not None:
            for role in ROLES:
                out[role].add(current.member(role).ident.size)
            return out
        for name in names:
            base = name.rsplit("/", 1)[-1]
            for role in ROLES:
                if base.startswith(member_name(role, "").rsplit("/", 1)[-1]):
                    with contextlib.suppress(OSError):
                        out[role].add(os.stat(self.boot_dir / name).st_size)
        return out

    def check_sizes(self, manifest: Manifest, roles: list[str], attempt_note: str) -> None:
        """Catch most of a mid-update shared root by stat alone, before writing anything."""
        for role in roles:
            size = os.stat(self.sources[role]).st_size
            if size != manifest.entry(role).ident.size:
                raise _Retry(f"{self.sources[role]} is {size} bytes, {self.manifest_path} says "
                             f"{manifest.entry(role).ident.size}{attempt_note}")

    def find_local(self, role: str, ident: FileId | None, names: set[str]) -> PairMember | None:
        """An intact local copy of the wanted member among names (live, or an older layout's)."""
        if ident is None:
            return None
        for name in sorted(names):
            base = name.rsplit("/", 1)[-1]
            if base == member_name(role, ident.xxh3_128).rsplit("/", 1)[-1]:
                member = PairMember(name, ident)
                if self.local_intact(member):
                    return member
        return None

    # -- writing

    def make_writable(self) -> None:
        if self.before_write is not None:
            self.before_write()
        for directory in (self.ssi_dir, *(self.ssi_dir / s for s in SLOTS)):
            if not directory.is_dir():
                self.ops.mkdir(directory)
                self.ops.fsync_dir(directory.parent)

    def clean(self, directory: Path, keep: set[str], only: Callable[[str], bool] | None = None,
              ) -> int:
        """Remove the files of directory (relative names not in keep); fsync it if any went."""
        prefix = str(directory.relative_to(self.boot_dir))
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return 0
        doomed = [Path(e.path) for e in entries
                  if (only is None or only(e.name)) and f"{prefix}/{e.name}" not in keep
                  and e.name not in keep and not e.is_dir(follow_symlinks=False)]
        for path in doomed:
            self.ops.unlink(path)
        if doomed:
            self.ops.fsync_dir(directory)
        return len(doomed)

    def clean_debris(self, keep: set[str]) -> int:
        """Files directly in ssi/ (an older layout's, temps) and the config's temp files."""
        return self.clean(self.ssi_dir, keep) + self.clean(
            self.config.parent, keep, lambda name: atomic.is_temp_of(name, self.config.name))

    def copy(self, role: str, src: Path, slot: str, expect: FileId | None,
             attempt_note: str) -> PairMember:
        """Copy src into the slot, verified; return it under its final name.

        expect is the manifest's word; without one, the source must not change
        while it is read, or the copy could be torn.
        """
        tmp = self.ssi_dir / slot / f"{_TMP_PREFIX}{os.getpid()}-{role}"
        sfd = open_read(src)
        try:
            before = os.fstat(sfd)
            dfd = self.ops.open_new(tmp)
            try:
                digest = xxhash.xxh3_128()
                size = 0
                view = memoryview(self.buf)
                while n := self.ops.readinto(sfd, self.buf):
                    digest.update(view[:n])
                    size += n
                    atomic.write_all(self.ops, dfd, view[:n])
                self.ops.fsync(dfd)
            finally:
                self.ops.close(dfd)
            after = os.fstat(sfd)
        finally:
            os.close(sfd)
        got = FileId(size, digest.hexdigest())
        if expect is not None and got != expect:
            raise _Retry(f"{src} does not match {self.manifest_path}{attempt_note}")
        if expect is None and (_changed(before, after) or _changed(after, os.stat(src))):
            raise _Retry(f"{src} changed while it was copied{attempt_note}")
        self.verify(tmp, got)
        name = member_name(role, got.xxh3_128, slot)
        self.ops.rename(tmp, self.boot_dir / name)
        return PairMember(name, got)

    def place_local(self, role: str, local: PairMember, slot: str,
                    attempt_note: str) -> PairMember:
        """The intact local member in the slot too: a hard link (no data written), or a copy."""
        name = member_name(role, local.ident.xxh3_128, slot)
        try:
            self.ops.link(self.boot_dir / local.name, self.boot_dir / name)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            self.notes.append(f"{role} copied from {local.name}")
            return self.copy(role, self.boot_dir / local.name, slot, local.ident, attempt_note)
        return PairMember(name, local.ident)

    def verify(self, path: Path, expect: FileId) -> None:
        fd = open_read(path)
        try:
            # The page cache still holds what was written: drop it so the hash is
            # of what the device returns.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            got = hash_fd(fd, self.ops, self.buf)
        finally:
            os.close(fd)
        if got != expect:
            raise OSError(errno.EIO, f"read-back differs from what was written "
                          f"({got.size} bytes xxh3_128 {got.xxh3_128}, wrote {expect.size} "
                          f"bytes {expect.xxh3_128})", str(path))

    def checkpoint(self) -> None:
        how = self.ops.checkpoint(self.boot_dir)
        self.progress(f"checkpointed ({how})")

    def overwrite(self, offset: int, data: bytes) -> None:
        """data over the config's bytes at offset, in place (same length, no new block), durable."""
        fd = self.ops.open_existing(self.config)
        try:
            done = 0
            while done < len(data):
                done += self.ops.pwrite(fd, data[done:], offset + done)
            self.ops.fdatasync(fd)
        finally:
            self.ops.close(fd)
        fd = open_read(self.config)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            got = os.pread(fd, len(data), offset)
        finally:
            os.close(fd)
        if got != data:
            raise OSError(errno.EIO, f"read-back of bytes {offset}-{offset + len(data) - 1} "
                          "differs from what was written", str(self.config))

    def install(self, old: bytes | None, pair: LocalPair, slot: str) -> None:
        """The first sync of a partition without the layout: a whole new config (see above)."""
        new = self.loader.render(pair, slot)
        # before_rename: the slot's files and the new config at their home location
        # before any directory entry names the config.
        if old is None:
            atomic.replace(self.config, new, ops=self.ops, before_rename=self.checkpoint)
        else:
            # The temp file in the spare slot, whose directory names nothing that boots;
            # the old config held open, so that its blocks are not freed before the
            # rename is at its home location too.
            held = open_read(self.config)
            try:
                atomic.replace(self.config, new, ops=self.ops, tmp_dir=self.ssi_dir / other(slot),
                               before_rename=self.checkpoint)
                self.checkpoint()
            finally:
                os.close(held)

    # -- the whole

    def attempt(self, attempt_note: str) -> SyncResult:
        data, layout = self.read_config()
        current = layout.pair if layout is not None else None
        # Whatever the config on disk boots stays until the commit, even a config we
        # did not write (an admin's edit): it is what boots after a power cut.
        if layout is not None:
            pinned = {current.member(r).name for r in ROLES} if current is not None else set()
        else:
            pinned = _referenced(data)
        manifest = self.read_manifest()
        wanted = self.wanted(manifest, self.local_sizes(current, pinned))
        # Members whose local copy is already right: same identity, intact on disk.
        same = {r for r in ROLES if current is not None and wanted[r] == current.member(r).ident
                and self.local_intact(current.member(r))}
        if current is not None and same == set(ROLES) and current.append == self.append:
            return SyncResult(SyncStatus.UNCHANGED, "; ".join(self.notes))
        if manifest is not None:
            self.check_sizes(manifest, [r for r in ROLES if r not in same], attempt_note)
        live = layout.live if layout is not None else None
        if live is not None:
            slot = other(live)
        else:  # a config not in our format: the slot it does not boot from, if it names one
            slot = next((s for s in reversed(SLOTS)
                         if any(n.startswith(f"{SSI_DIR}/{other(s)}/") for n in pinned)), SLOTS[0])
        # Members an interrupted sync already put in the free slot, intact.
        ready = {}
        for role in ROLES:
            ident = wanted[role]
            if ident is not None:
                member = PairMember(member_name(role, ident.xxh3_128, slot), ident)
                if self.local_intact(member):
                    ready[role] = member
        self.make_writable()
        keep = pinned | {m.name for m in ready.values()}
        removed = self.clean(self.ssi_dir / slot, keep) + self.clean_debris(keep)
        if removed:
            self.notes.append(f"removed {removed} leftover file(s) of an interrupted sync")
        started = time.monotonic()
        self.progress(f"copy into slot {slot}")
        members, written = dict(ready), []
        try:
            for role in ROLES:
                if role in members:
                    continue
                local = self.find_local(role, wanted[role], pinned)
                if local is not None:
                    members[role] = self.place_local(role, local, slot, attempt_note)
                else:
                    members[role] = self.copy(role, self.sources[role], slot,
                                              manifest.entry(role).ident if manifest else None,
                                              attempt_note)
                    written.append(role)
            self.ops.fsync_dir(self.ssi_dir / slot)
        except (OSError, _Retry):
            # Free the space the unfinished pair took; the config still names the
            # old pair. (A power cut runs no handler: the next sync cleans up.)
            with contextlib.suppress(OSError):
                self.clean(self.ssi_dir / slot, pinned)
            raise
        pair = LocalPair(members["kernel"], members["initrd"], self.append)
        self.progress(f"commit slot {slot}")
        if layout is not None:
            self.overwrite(self.loader.offset(slot), self.loader.region(slot, pair))
            self.checkpoint()
            self.overwrite(0, self.loader.head(slot, self.append))  # the commit
        else:
            self.install(data, pair, slot)
        self.progress("committed; clean up")
        try:
            done = {pair.kernel.name, pair.initrd.name}
            if live is not None:
                self.clean(self.ssi_dir / live, done)
            else:
                self.clean_debris(done)  # an older layout's pair, directly in ssi/
            self.checkpoint()
        except OSError as e:
            self.notes.append(f"old pair not removed ({_describe(e)}); the next sync will")
        if written:
            what = " and ".join(f"{r} ({pair.member(r).ident.size} bytes)" for r in written)
        else:
            what = f"{self.loader.name} config only"
        reason = f"wrote {what} in {time.monotonic() - started:.2f} s"
        return SyncResult(SyncStatus.UPDATED, "; ".join([reason, *self.notes]))


def _quiet(_step: str) -> None:
    pass


def _referenced(config: bytes | None) -> set[str]:
    """The ssi/ files a config names, whoever wrote it."""
    if config is None:
        return set()
    names = set()
    for word in config.decode(errors="replace").replace(",", " ").split():
        word = word.lstrip("/")
        if word.startswith(f"{SSI_DIR}/"):
            names.add(word)
    return names


def _once(hook: Callable[[], None] | None) -> Callable[[], None] | None:
    if hook is None:
        return None
    done: list[bool] = []

    def run_once() -> None:
        if not done:
            hook()
            done.append(True)

    return run_once


def _changed(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_dev, a.st_size, a.st_mtime_ns, a.st_ctime_ns) != \
        (b.st_ino, b.st_dev, b.st_size, b.st_mtime_ns, b.st_ctime_ns)


@contextlib.contextmanager
def _locked(boot_dir: Path) -> Iterator[None]:
    # Two syncs of one partition (say two lilo.ssi --local-only) must not
    # clean each other's files away. flock writes nothing to the disk.
    fd = os.open(boot_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _describe(e: OSError) -> str:
    text = e.strerror or str(e)
    if e.filename:
        text = f"{e.filename}: {text}"
    return text


def sync_boot_dir(
    boot_dir: Path,
    kernel: Path,
    initrd: Path,
    append: str,
    *,
    root: Path | None = None,
    manifest: Path | None = None,
    bootloader: Bootloader = EXTLINUX,
    before_write: Callable[[], None] | None = None,
    attempts: int = 3,
    retry_delay: float = 0.5,
    ops: FsOps | None = None,
    progress: Callable[[str], None] | None = None,
) -> SyncResult:
    """Make boot_dir boot exactly kernel + initrd with append; write nothing if it already does.

    root: the shared root's mount point; symlinks in kernel/initrd resolve
    inside it. manifest: default MANIFEST_NAME beside kernel. before_write: run
    once before the first write (the agent remounts the partition read-write
    there, so an unchanged boot leaves even the superblock untouched).
    attempts/retry_delay: how long a shared root that is mid-update is waited for.
    progress: told each phase as it starts (copy, commit, clean up), for a debug log.
    """
    bad = kargs.problem(append)
    if bad is not None:
        return SyncResult(SyncStatus.FAILED, bad)
    if not boot_dir.is_dir():
        return SyncResult(SyncStatus.FAILED, f"{boot_dir} is not a directory")
    manifest_path = manifest or kernel.parent / MANIFEST_NAME
    names = {"kernel": os.path.relpath(kernel, manifest_path.parent),
             "initrd": os.path.relpath(initrd, manifest_path.parent)}
    try:
        sources = {"kernel": kernel, "initrd": initrd}
        if root is not None:
            sources = {r: resolve_in_root(p, root) for r, p in sources.items()}
            manifest_path = resolve_in_root(manifest_path, root)
        for role, path in sources.items():
            if not path.is_file():
                return SyncResult(SyncStatus.SKIPPED,
                                  f"the shared root has no {role} at {path}")
    except OSError as e:
        return SyncResult(SyncStatus.SKIPPED, f"shared root: {_describe(e)}")
    ops = ops or FsOps()
    first_write = _once(before_write)
    try:
        with _locked(boot_dir):
            reason = ""
            for n in range(max(1, attempts)):
                note = f" (try {n + 1} of {attempts})" if attempts > 1 else ""
                sync = _Sync(boot_dir, sources, append, manifest_path, names, bootloader,
                             ops, first_write, progress or _quiet)
                try:
                    return sync.attempt(note)
                except _Retry as e:
                    reason = str(e)
                    if n + 1 < attempts:
                        time.sleep(retry_delay)
            return SyncResult(SyncStatus.SKIPPED,
                              f"shared root mid-update? {reason}; booting the local pair as is")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            return SyncResult(SyncStatus.FAILED, _no_space(boot_dir, sources, e))
        return SyncResult(SyncStatus.FAILED, _describe(e))


def _no_space(boot_dir: Path, sources: dict[str, Path], e: OSError) -> str:
    try:
        st = os.statvfs(boot_dir)
        need = sum(os.stat(p).st_size for p in sources.values())
    except OSError:
        return _describe(e)
    mib = 1 << 20
    return (f"{_describe(e)}: the partition has {st.f_bavail * st.f_frsize // mib} MiB free of "
            f"{st.f_blocks * st.f_frsize // mib} MiB; the new pair needs {need // mib + 1} MiB "
            "beside the old one")
