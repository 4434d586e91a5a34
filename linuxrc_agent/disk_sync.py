"""Keep a local boot partition's kernel and ramdisk identical to the shared root's default pair.

Runs inside the boot agent (PID 1) and in `lilo.ssi --local-only`: standard
library and xxhash only, no subprocess. It works on a directory; the caller
mounts the partition (read-only first: see `before_write`).

On-disk layout of the partition (boot_dir):

    extlinux.conf             the commit point: names the pair, records sizes and hashes
    ssi/vmlinuz-<xxh3_128>    kernel, named by its content hash
    ssi/initrd-<xxh3_128>     ramdisk, likewise
    ssi/.tmp-<pid>-<role>     being written; never named by a config
    .extlinux.conf.tmp-<pid>  the next config, being written
    ldlinux.sys, ldlinux.c32  extlinux itself (installed by provisioning, never touched here)

extlinux.conf sits in the directory holding ldlinux.sys (extlinux searches its
install directory first), at the partition's root when provisioned by
`mkinitrd_ssi.localsync.provision`.

Commit protocol (a power cut at any instant leaves the old pair or the new):

 1. remove from ssi/ what the config on disk does not name (leftovers of an
    interrupted sync), fsync ssi/; a config we did not write keeps its files too
 2. each changed member: write ssi/.tmp-*, fsync, drop it from the page cache,
    read it back and compare its xxh3_128 with the hash of the stream copied
    (and with the manifest's), rename it to ssi/<role>-<hash>. (A member an
    interrupted sync already renamed is verified by reading and reused.)
 3. fsync ssi/: both new names are durable
 4. write the new config to a temp file, fsync, rename over the config,
    fsync its directory: the commit
 5. unlink the members of the old pair the new config does not name, fsync ssi/

Before step 4 the config names the old pair, whose files steps 1-3 never
touch; after it, the new pair, complete and verified since step 3.

The shared root's manifest (MANIFEST_NAME beside the kernel, written atomically
by lilo.ssi after it installs a pair) lists each member's name, size and
xxh3_128. With it, the unchanged check compares the manifest with the hashes
recorded in the config and reads only the two local files, once, to confirm
they are intact; a sync copies a pair only if what it copied matches the
manifest (else the shared root is mid-update: retry briefly, then SKIPPED).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import xxhash

from linuxrc_agent import cmdline
from linuxrc_agent.nodeenv import SyncStatus

SSI_DIR = "ssi"
MANIFEST_NAME = "ssi-manifest.json"
MANIFEST_FORMAT = 1
ROLES = ("kernel", "initrd")
_PREFIX = {"kernel": "vmlinuz-", "initrd": "initrd-"}
_TMP_PREFIX = ".tmp-"
CHUNK = 1 << 20
# x86 COMMAND_LINE_SIZE is 2048 including the terminating NUL.
MAX_APPEND = 2047
# Words a boot path adds by itself: persisting them would make the local
# config differ between a netboot and a local boot, and rewrite it each time.
TRANSPORT_KEYS = frozenset({"BOOT_IMAGE", "initrd", "BOOTIF", "ssi.bootif", "ssi.break"})


@dataclass(frozen=True)
class SyncResult:
    status: SyncStatus
    reason: str = ""


# The records below are NamedTuples, not dataclasses: PID 1 imports this
# module, and a NamedTuple class costs about half as much to create.


class FileId(NamedTuple):
    size: int
    xxh3_128: str  # 32 lower-case hex digits


class PairMember(NamedTuple):
    name: str  # path relative to boot_dir, always ssi/<prefix><hash>
    ident: FileId


class LocalPair(NamedTuple):
    kernel: PairMember
    initrd: PairMember
    append: str

    def member(self, role: str) -> PairMember:
        return self.kernel if role == "kernel" else self.initrd


def member_name(role: str, digest: str) -> str:
    return f"{SSI_DIR}/{_PREFIX[role]}{digest}"


# ---------------------------------------------------------------- bootloaders


class Bootloader(Protocol):
    """What disk_sync needs of a bootloader: where its config lives, and its text.

    `parse` returns None for any config it did not write byte for byte, so an
    edited or foreign config is replaced, never trusted.
    """

    name: str

    def config_path(self, boot_dir: Path) -> Path: ...

    def render(self, pair: LocalPair) -> bytes: ...

    def parse(self, data: bytes) -> LocalPair | None: ...


class BootloaderKind(enum.Enum):
    EXTLINUX = "extlinux"  # BIOS; GRUB (grub.cfg) and UEFI (loader/entries) fit the same protocol


_HEADER = (
    "# ssi-boot local boot partition, written by linuxrc (disk_sync) and lilo.ssi --local-only.\n"
    "# Replaced whole at every sync: change the cluster's kernel arguments, not this file.\n"
)


class Extlinux:
    name = BootloaderKind.EXTLINUX.value
    # extlinux 6.04 reads <install dir>/extlinux.conf first, then /boot/syslinux,
    # /syslinux, /; the install dir is wherever ldlinux.sys was put.
    INSTALL_DIRS = ("", "extlinux", "boot/extlinux", "boot/syslinux", "syslinux")

    def config_path(self, boot_dir: Path) -> Path:
        for sub in self.INSTALL_DIRS:
            if (boot_dir / sub / "ldlinux.sys").exists():
                return boot_dir / sub / "extlinux.conf"
        return boot_dir / "extlinux.conf"

    def render(self, pair: LocalPair) -> bytes:
        lines = [_HEADER]
        for role in ROLES:
            m = pair.member(role)
            lines.append(f"# ssi-pair {role} {m.name} size={m.ident.size} "
                         f"xxh3_128={m.ident.xxh3_128}\n")
        serial = _serial_directive(pair.append)
        if serial:
            lines.append(serial + "\n")
        lines.append(
            "DEFAULT ssi\nPROMPT 0\nTIMEOUT 0\n"
            "LABEL ssi\n"
            f"  LINUX /{pair.kernel.name}\n"
            f"  INITRD /{pair.initrd.name}\n"
            f"  APPEND {pair.append}\n"
        )
        return "".join(lines).encode()

    def parse(self, data: bytes) -> LocalPair | None:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return None
        members: dict[str, PairMember] = {}
        append = None
        for line in text.splitlines():
            if line.startswith("# ssi-pair "):
                words = line.split()
                if len(words) != 6 or words[2] not in ROLES:
                    return None
                size, digest = words[4].removeprefix("size="), words[5].removeprefix("xxh3_128=")
                if not size.isdigit() or not _is_digest(digest):
                    return None
                members[words[2]] = PairMember(words[3], FileId(int(size), digest))
            elif line.startswith("  APPEND "):
                append = line[len("  APPEND "):]
        if append is None or set(members) != set(ROLES):
            return None
        pair = LocalPair(members["kernel"], members["initrd"], append)
        if any(pair.member(r).name != member_name(r, pair.member(r).ident.xxh3_128)
               for r in ROLES):
            return None
        return pair if self.render(pair) == data else None


EXTLINUX = Extlinux()


def _serial_directive(append: str) -> str:
    """SERIAL for the last console=ttySn[,baud], so the loader talks where the kernel will."""
    serial = ""
    for _raw, key, value in cmdline.tokenize(append).kernel:
        if key == "console" and value is not None:
            dev, _, opts = value.partition(",")
            if dev.startswith("ttyS") and dev[4:].isdigit():
                baud = "".join(c for c in opts.partition("n")[0] if c.isdigit()) or "9600"
                serial = f"SERIAL {dev[4:]} {baud}"
            else:
                serial = ""
    return serial


def _is_digest(s: str) -> bool:
    return len(s) == 32 and all(c in "0123456789abcdef" for c in s)


def local_append(text: str) -> str:
    """The kernel arguments for the local entry, from the agent's /proc/cmdline.

    Drops the words a loader adds (BOOT_IMAGE=, initrd=, BOOTIF=, ssi.bootif=)
    and one-off ssi.break, by key as the kernel reads them (a quoted
    "ssi.break=root" too), so that booting from the network or from the disk
    yields the same config and neither rewrites it.
    """
    args = cmdline.without(text, TRANSPORT_KEYS)
    # PXELINUX's IPAPPEND puts BOOTIF= last, after init's `--` if there is one.
    init = None if args.init is None else tuple(w for w in args.init if w.key != "BOOTIF")
    # A line break inside quotes would end extlinux.conf's APPEND line early.
    fits = [w for w in cmdline.words_of(cmdline.Args(args.kernel, init))
            if all(c.isprintable() or c == " " for c in w.raw)]
    return cmdline.join(fits, lenient=True)


# ---------------------------------------------------------------- manifest


class ManifestEntry(NamedTuple):
    name: str  # as lilo.ssi was given it, relative to the manifest's directory
    ident: FileId


class Manifest(NamedTuple):
    kernel: ManifestEntry
    initrd: ManifestEntry

    def entry(self, role: str) -> ManifestEntry:
        return self.kernel if role == "kernel" else self.initrd

    def to_json(self) -> bytes:
        import json

        doc: dict[str, object] = {"format": MANIFEST_FORMAT}
        for role in ROLES:
            e = self.entry(role)
            doc[role] = {"name": e.name, "size": e.ident.size, "xxh3_128": e.ident.xxh3_128}
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Raises ValueError on anything but a complete manifest of a known format.

        Keys it does not know are ignored: writers may add their own (lilo.ssi's
        push spool adds the kernel arguments) without a new format number.
        """
        import json  # only nodes whose shared root carries a manifest pay for it

        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a format {MANIFEST_FORMAT} manifest")
        entries = []
        for role in ROLES:
            e = doc.get(role)
            if (not isinstance(e, dict) or not isinstance(e.get("name"), str)
                    or type(e.get("size")) is not int or e["size"] < 0
                    or not isinstance(e.get("xxh3_128"), str) or not _is_digest(e["xxh3_128"])):
                raise ValueError(f"bad or missing {role!r} entry")
            entries.append(ManifestEntry(e["name"], FileId(e["size"], e["xxh3_128"])))
        return cls(entries[0], entries[1])


# ---------------------------------------------------------------- filesystem


class FsOps:
    """Every operation that changes the partition, and the reads of copies, in one place.

    Tests subclass it to inject a crash or an error at any step and to check
    the order of writes, fsyncs and renames.
    """

    def open_new(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o755)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        except OSError as e:
            # A few filesystems cannot fsync a directory; their renames are then
            # as durable as they get.
            if e.errno != errno.EINVAL:
                raise
        finally:
            os.close(fd)

    def readinto(self, fd: int, buf: bytearray) -> int:
        return os.readv(fd, [buf])


def open_read(path: Path) -> int:
    """Open for reading without touching atime: an unchanged check writes nothing."""
    flags = os.O_RDONLY | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        # O_NOATIME needs ownership or CAP_FOWNER; without it the caller's
        # read-only mount is what keeps the disk untouched.
        return os.open(path, flags)


def _hash_fd(fd: int, ops: FsOps, buf: bytearray) -> FileId:
    digest = xxhash.xxh3_128()
    size = 0
    view = memoryview(buf)
    while n := ops.readinto(fd, buf):
        digest.update(view[:n])
        size += n
    return FileId(size, digest.hexdigest())


def _read_small(path: Path, limit: int = 1 << 20) -> bytes | None:
    """A config or manifest; past limit it is no file of ours, and reading on only costs."""
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


def hash_file(path: Path, ops: FsOps | None = None) -> FileId:
    fd = open_read(path)
    try:
        return _hash_fd(fd, ops or FsOps(), bytearray(CHUNK))
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


# ---------------------------------------------------------------- sync


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
        data = _read_small(self.config)
        return data, None if data is None else self.loader.parse(data)

    def read_manifest(self) -> Manifest | None:
        data = _read_small(self.manifest_path)
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
            return _hash_fd(fd, self.ops, self.buf) == member.ident
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
        cfg_tmp = f".{self.config.name}.tmp-"
        removed = 0
        for directory, prefix, only in ((self.ssi_dir, f"{SSI_DIR}/", ""),
                                        (self.config.parent, "", cfg_tmp)):
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            doomed = [Path(e.path) for e in entries
                      if e.name.startswith(only) and prefix + e.name not in names
                      and not e.is_dir(follow_symlinks=False)]
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
            got = _hash_fd(fd, self.ops, self.buf)
        finally:
            os.close(fd)
        if got != expect:
            raise OSError(errno.EIO, f"read-back differs from what was written "
                          f"({got.size} bytes xxh3_128 {got.xxh3_128}, wrote {expect.size} "
                          f"bytes {expect.xxh3_128})", str(path))

    def commit(self, data: bytes) -> None:
        tmp = self.config.with_name(f".{self.config.name}.tmp-{os.getpid()}")
        fd = self.ops.open_new(tmp)
        try:
            view = memoryview(data)
            done = 0
            while done < len(data):
                done += self.ops.write(fd, view[done:])
            self.ops.fsync(fd)
        finally:
            self.ops.close(fd)
        self.ops.rename(tmp, self.config)
        self.ops.fsync_dir(self.config.parent)

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
    if any(c in append for c in "\n\r\0"):
        return SyncResult(SyncStatus.FAILED, "kernel arguments must be one line")
    if len(append.encode()) > MAX_APPEND:
        return SyncResult(SyncStatus.FAILED,
                          f"kernel arguments are {len(append.encode())} bytes, "
                          f"the kernel takes {MAX_APPEND}")
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
