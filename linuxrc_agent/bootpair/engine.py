"""The commit engine: keep a boot partition's pair identical to the shared root's default pair.

Runs inside the boot agent (PID 1, imported only for nodes with the local
boot flag) and in `lilo.ssi --local-only`: standard library and xxhash only,
no subprocess. It works on a directory; the caller mounts the partition
(read-only first: see `before_write`). Bootloader-agnostic: the config's
place and text come from a Bootloader (bootpair.extlinux, ...).

On-disk layout of the partition (boot_dir):

    extlinux.conf             the commit point: names the pair, records sizes and hashes
    ssi/vmlinuz-<xxh3_128>    kernel, named by its content hash
    ssi/initrd-<xxh3_128>     ramdisk, likewise
    ssi/.tmp-<pid>-<role>     being written; never named by a config
    .extlinux.conf.*          the next config, being written (atomic.temp_name)
    ldlinux.sys, ldlinux.c32  extlinux itself (installed by provisioning, never touched here)

extlinux.conf sits in the directory holding ldlinux.sys (extlinux searches its
install directory first), at the partition's root when provisioned by
`mkinitrd_ssi.localsync.provision`.

Commit protocol (a power cut at any instant leaves the old pair or the new;
the argument is in docs/architecture.md, "The local boot partition: commit
protocol"):

 1. remove from ssi/ what the config on disk does not name (leftovers of an
    interrupted sync), fsync ssi/; a config we did not write keeps its files too
 2. each changed member: write ssi/.tmp-*, fsync, drop it from the page cache,
    read it back and compare its xxh3_128 with the hash of the stream copied
    (and with the manifest's), rename it to ssi/<role>-<hash>. (A member an
    interrupted sync already renamed is verified by reading and reused.)
 3. fsync ssi/: both new names are durable
 4. write the new config to a temp file, fsync, rename over the config,
    fsync its directory (atomic.replace): the commit
 5. unlink the members of the old pair the new config does not name, fsync ssi/

Before step 4 the config names the old pair, whose files steps 1-3 never
touch; after it, the new pair, complete and verified since step 3.

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
    SSI_DIR,
    Bootloader,
    FileId,
    LocalPair,
    PairMember,
    member_name,
)
from linuxrc_agent.nodeenv import SyncStatus

_TMP_PREFIX = ".tmp-"


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
                 before_write: Callable[[], None] | None) -> None:
        self.boot_dir = boot_dir
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

    # -- reading

    def read_config(self) -> tuple[bytes | None, LocalPair | None]:
        data = read_small(self.config)
        return data, None if data is None else self.loader.parse(data)

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
        """One read of the local file: is it exactly what the config says?"""
        path = self.boot_dir / member.name
        try:
            fd = open_read(path)
        except FileNotFoundError:
            return False
        try:
            if os.fstat(fd).st_size != member.ident.size:
                return False
            return hash_fd(fd, self.ops, self.buf) == member.ident
        finally:
            os.close(fd)

    def wanted(self, manifest: Manifest | None,
               current: LocalPair | None) -> dict[str, FileId | None]:
        """The shared pair's identity where it is known without copying (None: the copy tells)."""
        if manifest is not None:
            return {r: manifest.entry(r).ident for r in ROLES}
        out: dict[str, FileId | None] = {}
        for role in ROLES:
            size = os.stat(self.sources[role]).st_size
            if current is None or current.member(role).ident.size != size:
                out[role] = None
            else:
                out[role] = hash_file(self.sources[role], self.ops)
        return out

    def check_sizes(self, manifest: Manifest, roles: list[str], attempt_note: str) -> None:
        """Catch most of a mid-update shared root by stat alone, before writing anything."""
        for role in roles:
            size = os.stat(self.sources[role]).st_size
            if size != manifest.entry(role).ident.size:
                raise _Retry(f"{self.sources[role]} is {size} bytes, {self.manifest_path} says "
                             f"{manifest.entry(role).ident.size}{attempt_note}")

    # -- writing

    def make_writable(self) -> None:
        if self.before_write is not None:
            self.before_write()
        if not self.ssi_dir.is_dir():
            self.ops.mkdir(self.ssi_dir)
            self.ops.fsync_dir(self.boot_dir)

    def clean(self, names: set[str]) -> int:
        """Remove from ssi/ all but names (temp files, pairs of an interrupted sync)."""
        removed = 0
        for directory, prefix, config_temps in ((self.ssi_dir, f"{SSI_DIR}/", False),
                                                (self.config.parent, "", True)):
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            # Beside the config, only its temp files: the rest is the bootloader's or the admin's.
            doomed = [Path(e.path) for e in entries
                      if (not config_temps or atomic.is_temp_of(e.name, self.config.name))
                      and prefix + e.name not in names and not e.is_dir(follow_symlinks=False)]
            for path in doomed:
                self.ops.unlink(path)
            if doomed:
                self.ops.fsync_dir(directory)
            removed += len(doomed)
        return removed

    def copy(self, role: str, expect: FileId | None, attempt_note: str) -> PairMember:
        """Copy one member into ssi/, verified; return it under its final name.

        expect is the manifest's word; without one, the source must not change
        while it is read, or the copy could be torn.
        """
        src = self.sources[role]
        tmp = self.ssi_dir / f"{_TMP_PREFIX}{os.getpid()}-{role}"
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
                    done = 0
                    while done < n:
                        done += self.ops.write(dfd, view[done:n])
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
        name = member_name(role, got.xxh3_128)
        self.ops.rename(tmp, self.boot_dir / name)
        return PairMember(name, got)

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

    def commit(self, data: bytes) -> None:
        atomic.replace(self.config, data, ops=self.ops)

    # -- the whole

    def attempt(self, attempt_note: str) -> SyncResult:
        data, current = self.read_config()
        manifest = self.read_manifest()
        wanted = self.wanted(manifest, current)
        # Members whose local copy is already right: same identity, intact on disk.
        keep: dict[str, PairMember] = {}
        for role in ROLES:
            if current is not None and wanted[role] == current.member(role).ident \
                    and self.local_intact(current.member(role)):
                keep[role] = current.member(role)
        missing = [r for r in ROLES if r not in keep]
        if not missing and self.loader.render(
                LocalPair(keep["kernel"], keep["initrd"], self.append)) == data:
            return SyncResult(SyncStatus.UNCHANGED, "; ".join(self.notes))
        if manifest is not None:
            self.check_sizes(manifest, missing, attempt_note)
        # Whatever the config on disk names stays until the commit, even a config
        # we did not write (an admin's edit): it is what boots after a power cut.
        pinned = _referenced(data)
        for role in list(missing):
            found = self.already_there(role, wanted[role], current)
            if found is not None:
                keep[role] = found
                missing.remove(role)
        pinned |= {m.name for m in keep.values()}
        self.make_writable()
        removed = self.clean(pinned)
        if removed:
            self.notes.append(f"removed {removed} leftover file(s) of an interrupted sync")
        started = time.monotonic()
        try:
            for role in missing:
                keep[role] = self.copy(role, manifest.entry(role).ident if manifest else None,
                                       attempt_note)
        except (OSError, _Retry):
            # Free the space the unfinished pair took; the config still names the
            # old pair. (A power cut runs no handler: the next sync cleans up.)
            with contextlib.suppress(OSError):
                self.clean(pinned)
            raise
        if missing:
            self.ops.fsync_dir(self.ssi_dir)
        pair = LocalPair(keep["kernel"], keep["initrd"], self.append)
        new_config = self.loader.render(pair)
        if new_config != data:
            self.commit(new_config)
        try:
            self.clean({pair.kernel.name, pair.initrd.name})
        except OSError as e:
            self.notes.append(f"old pair not removed ({_describe(e)}); the next sync will")
        if missing:
            what = " and ".join(f"{r} ({pair.member(r).ident.size} bytes)" for r in missing)
        else:
            what = f"{self.loader.name} config only"
        reason = f"wrote {what} in {time.monotonic() - started:.2f} s"
        return SyncResult(SyncStatus.UPDATED, "; ".join([reason, *self.notes]))

    def already_there(self, role: str, ident: FileId | None,
                      current: LocalPair | None) -> PairMember | None:
        """The wanted member under its final name, intact: an interrupted sync got that far."""
        if ident is None:
            return None
        member = PairMember(member_name(role, ident.xxh3_128), ident)
        if current is not None and current.member(role).name == member.name:
            return None  # just found damaged
        if not (self.boot_dir / member.name).is_file():
            return None
        return member if self.local_intact(member) else None


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
) -> SyncResult:
    """Make boot_dir boot exactly kernel + initrd with append; write nothing if it already does.

    root: the shared root's mount point; symlinks in kernel/initrd resolve
    inside it. manifest: default MANIFEST_NAME beside kernel. before_write: run
    once before the first write (the agent remounts the partition read-write
    there, so an unchanged boot leaves even the superblock untouched).
    attempts/retry_delay: how long a shared root that is mid-update is waited for.
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
                             ops, first_write)
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
