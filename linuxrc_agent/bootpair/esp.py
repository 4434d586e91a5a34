"""UEFI local boot from an EFI System Partition: shim + Debian's signed GRUB + a grub.cfg.

Layout of an ESP kept by ssi-boot (boot_dir):

    EFI/BOOT/BOOTX64.EFI   shim (shim-signed): what UEFI firmware starts from a disk
                           with no boot entry of its own (the removable-media path)
    EFI/BOOT/grubx64.efi   Debian's signed GRUB (grub-efi-amd64-signed): shim starts
                           it from its own directory and checks its signature
    EFI/BOOT/mmx64.efi     MokManager, when the shared root has it: shim runs it to
                           enroll a key (a custom kernel's, mokutil --import)
    EFI/BOOT/grub.cfg      the config, fixed size, the commit point (below)
    ssi/a/, ssi/b/         the two slots, as on an extlinux partition (engine.py)

The loaders come from the shared root at Debian's package paths, so an empty
ESP becomes bootable at the first sync, with no NVRAM entry and no manual
step (`sync_boot_partition`, the one entry point of the agent and of
`lilo.ssi --local-only`). Which GRUB reads which file was measured (Debian
12's signed GRUB under OVMF): its built-in config sources EFI/debian/grub.cfg
when that exists, else the grub.cfg beside itself, EFI/BOOT/grub.cfg. An ESP
holding EFI/debian/grub.cfg (another system's) is therefore refused.

grub.cfg follows the extlinux writer's layout (bootpair.pair.Bootloader): a
head sector that sets `default` to the live slot's menu entry (rewritten in
one sector write: the commit), then one region per slot defining that slot's
entry, every line at a fixed offset. GRUB reads the whole file as script, so
a region torn between two versions must not swallow the other region: its
kernel line holds no double quote or backslash (cmdline.for_grub refuses
them) and is followed by a comment line holding one single quote, which
closes a quote a tear left open and is a plain comment otherwise (checked
under OVMF: a torn entry before the live one, the live one boots). The kernel
arguments as persisted sit in a comment line too, so that parsing back needs
no GRUB unquoting.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from linuxrc_agent import atomic, cmdline, syscalls
from linuxrc_agent.bootpair.engine import SyncResult, sync_boot_dir
from linuxrc_agent.bootpair.extlinux import EXTLINUX, Extlinux, _pad, _placeholder
from linuxrc_agent.bootpair.fileops import FsOps, hash_file, open_read
from linuxrc_agent.bootpair.kargs import MAX_APPEND
from linuxrc_agent.bootpair.pair import ROLES, SLOTS, Bootloader, FileId, LocalPair
from linuxrc_agent.nodeenv import SyncStatus

EFI_BOOT = "EFI/BOOT"
CONFIG = f"{EFI_BOOT}/grub.cfg"
# What Debian's signed GRUB reads instead of ours when present (see above).
FOREIGN_CONFIG = "EFI/debian/grub.cfg"
# On the ESP: from the shared root (Debian's paths); the last is optional. shim goes
# in last: the firmware finds nothing to start until GRUB is beside it.
LOADERS = (
    (f"{EFI_BOOT}/grubx64.efi", "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", True),
    (f"{EFI_BOOT}/mmx64.efi", "/usr/lib/shim/mmx64.efi.signed", False),
    (f"{EFI_BOOT}/BOOTX64.EFI", "/usr/lib/shim/shimx64.efi.signed", True),
)
PACKAGES = "shim-signed and grub-efi-amd64-signed"

_HEADER = (
    "# ssi-boot local boot partition (UEFI: shim, GRUB), written by linuxrc (bootpair) and\n"
    "# lilo.ssi --local-only. Rewritten in place at every sync (fixed size): change the\n"
    "# cluster's kernel arguments, not this file.\n"
)
HEAD = 512
_APPEND = "# ssi-append"
_APPEND_WIDTH = MAX_APPEND + 1
# for_grub at most doubles the arguments' length (a one-character word gets two quotes).
_ARGS_WIDTH = 2 * MAX_APPEND + 2
_LINUX = "  linux /"
_GUARD = "  #'\n"
# A region, in whole sectors: the pair's two comment lines (about 100 bytes each), the
# append line, the entry (menuentry, linux, guard, initrd, closing brace), a padding line.
_REGION_TEXT = (2 * 110 + len(_APPEND) + _APPEND_WIDTH + 1 + 40 + len(_LINUX) + 50
                + _ARGS_WIDTH + 1 + len(_GUARD) + 60 + 2 + 2)
REGION = -(-_REGION_TEXT // 512) * 512


class GrubEsp(Extlinux):
    """grub.cfg in extlinux.conf's layout (head, slot regions, parsing back, the spare
    region judged by its shape): only the text differs."""

    name = "grub"
    region_size = REGION
    size = HEAD + len(SLOTS) * REGION

    def config_path(self, boot_dir: Path) -> Path:
        return boot_dir / CONFIG

    def head(self, slot: str, append: str) -> bytes:
        # No editing at GRUB's prompt (init=/bin/sh) unless the cluster allows it; the
        # entries are --unrestricted, so booting them needs no password.
        lock = cmdline.grub_lock(cmdline.tokenize(append))
        return _pad(f"{_HEADER}# ssi-slot {slot}\nset default=ssi-{slot}\nset timeout=0\n{lock}",
                    HEAD)

    def region(self, slot: str, pair: LocalPair | None) -> bytes:
        p = pair if pair is not None else _placeholder(slot)
        lines = [f"# ssi-pair {r} {p.member(r).name} size={p.member(r).ident.size:012d} "
                 f"xxh3_128={p.member(r).ident.xxh3_128}\n" for r in ROLES]
        lines.append(f"{_APPEND}{' ' * (_APPEND_WIDTH - len(p.append.encode()))}{p.append}\n")
        args = grub_args(p.append)
        lines.append(f"menuentry ssi-{slot} --unrestricted {{\n"
                     f"{_LINUX}{p.kernel.name}{' ' * (_ARGS_WIDTH - len(args.encode()))}{args}\n"
                     f"{_GUARD}  initrd /{p.initrd.name}\n}}\n")
        return _pad("".join(lines), REGION)

    def _recorded_append(self, lines: list[str]) -> str | None:
        if len(lines) < 4 or not lines[2].startswith(_APPEND):
            return None
        return lines[2][len(_APPEND):].lstrip(" ")


GRUB_ESP = GrubEsp()


def grub_args(append: str) -> str:
    """append for GRUB's `linux` line: each word as cmdline.for_grub spells it, leaving
    out the words GRUB cannot pass unchanged (the agent persists what the node booted
    with, and must not fail on it; lilo.ssi --cmdline refuses such words up front)."""
    def spell(words: tuple[cmdline.Word, ...]) -> list[str]:
        out = []
        for word in words:
            try:
                out.append(cmdline.for_grub(cmdline.Args((word,))))
            except cmdline.CmdlineError:
                continue
        return out

    args = cmdline.tokenize(append)
    init = [] if args.init is None else [cmdline.INIT_SEPARATOR, *spell(args.init)]
    return " ".join([*spell(args.kernel), *init])


def is_esp(boot_dir: Path, uefi: bool) -> bool:
    """Whether boot_dir is kept as an ESP (shim, GRUB) rather than for extlinux: it has an
    EFI directory; or it is FAT, holds no extlinux, and this machine runs UEFI."""
    if (boot_dir / "EFI").is_dir():  # FAT ignores case: efi/ too
        return True
    if not uefi or any((boot_dir / sub / "ldlinux.sys").exists()
                       for sub in EXTLINUX.INSTALL_DIRS):
        return False
    return syscalls.fs_magic(str(boot_dir)) == syscalls.MSDOS_SUPER_MAGIC


def bootloader_for(boot_dir: Path, uefi: bool) -> Bootloader:
    """The config writer of boot_dir: GRUB on an ESP, else extlinux."""
    return GRUB_ESP if is_esp(boot_dir, uefi) else EXTLINUX


def loader_sources(root: Path) -> list[tuple[str, Path]]:
    """(path on the ESP, file on the shared root) of each loader to install; raises
    FileNotFoundError naming the first required one the shared root lacks."""
    found = []
    for target, path, required in LOADERS:
        src = root / path.lstrip("/")
        if src.is_file():
            found.append((target, src))
        elif required:
            raise FileNotFoundError(f"the shared root has no {path} (install {PACKAGES} "
                                    "there)")
    return found


def install_loaders(boot_dir: Path, root: Path, ops: FsOps,
                    before_write: Callable[[], None]) -> list[str]:
    """Make the ESP's loaders the shared root's, byte for byte; the names written.

    Each goes in whole (temp file, fsync, rename over the old one held open, then
    checkpoint), is read back and compared, shim last; nothing is written when all
    are already identical.
    """
    stale = [(t, s, hash_file(s)) for t, s in loader_sources(root)
             if not _same(boot_dir / t, s)]
    if not stale:
        return []
    before_write()
    for target, src, ident in stale:
        # FAT frees a replaced file's clusters at the rename, but its directory entry
        # names them until the checkpoint writes the new file's in: a power cut between
        # left a GRUB of freed clusters (vm_tests/crashstates.py, start="update"). Held
        # open, the old file keeps its clusters until then, as the engine's old config.
        try:
            held: int | None = open_read(boot_dir / target)
        except FileNotFoundError:
            held = None
        try:
            atomic.replace(boot_dir / target, src.read_bytes(), ops=ops)
            ops.checkpoint(boot_dir)
        finally:
            if held is not None:
                os.close(held)
        got = _dropped_hash(boot_dir / target)
        if got != ident:
            raise OSError(errno.EIO, f"read-back differs from {src}", str(boot_dir / target))
    return [t for t, _s, _i in stale]


def _same(path: Path, src: Path) -> bool:
    try:
        if path.stat().st_size != src.stat().st_size:
            return False
    except FileNotFoundError:
        return False
    return hash_file(path) == hash_file(src)


def _dropped_hash(path: Path) -> FileId:
    # What the device returns, not the page cache that still holds what was written.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return hash_file(path)


def _ensure_dir(boot_dir: Path, ops: FsOps, before_write: Callable[[], None]) -> None:
    path = boot_dir
    for part in EFI_BOOT.split("/"):
        path = path / part
        if not path.is_dir():
            before_write()
            ops.mkdir(path)
            ops.fsync_dir(path.parent)


def sync_boot_partition(boot_dir: Path, kernel: Path, initrd: Path, append: str, *,
                        root: Path | None, uefi: bool, loader_root: Path | None = None,
                        before_write: Callable[[], None] | None = None,
                        progress: Callable[[str], None] | None = None,
                        ops: FsOps | None = None) -> SyncResult:
    """Sync a mounted boot partition, for extlinux or as an ESP (is_esp): the one entry
    point of the agent and of lilo.ssi --local-only.

    root: the shared root's mount point, where kernel and initrd resolve (None: as
    given). loader_root: the shared root holding the loaders (default root, else /).
    An ESP gets the pair and grub.cfg committed first, then GRUB, then shim: a power
    cut before shim leaves a disk the firmware does not boot from (it goes on to the
    next boot option, the network), never one that starts GRUB without its config.
    """
    loader_root = loader_root or root or Path("/")
    if not is_esp(boot_dir, uefi):
        return sync_boot_dir(boot_dir, kernel, initrd, append, root=root,
                             before_write=before_write, progress=progress, ops=ops)
    if (boot_dir / FOREIGN_CONFIG).exists():
        return SyncResult(SyncStatus.FAILED,
                          f"the ESP holds {FOREIGN_CONFIG}, which Debian's GRUB reads instead "
                          f"of {CONFIG}: it belongs to another system; give this node an ESP "
                          "of its own")
    ops = ops or FsOps()
    wrote: list[bool] = []

    def writable() -> None:
        if not wrote:
            if before_write is not None:
                before_write()
            wrote.append(True)

    try:
        loader_sources(loader_root)  # refuse before writing anything
        _ensure_dir(boot_dir, ops, writable)
    except OSError as e:
        return SyncResult(SyncStatus.FAILED, f"ESP: {e.strerror or e}")
    result = sync_boot_dir(boot_dir, kernel, initrd, append, root=root, before_write=writable,
                           bootloader=GRUB_ESP, progress=progress, ops=ops)
    if result.status not in (SyncStatus.UPDATED, SyncStatus.UNCHANGED):
        return result
    try:
        installed = install_loaders(boot_dir, loader_root, ops, writable)
    except OSError as e:
        return SyncResult(SyncStatus.FAILED, f"ESP loaders: {e.strerror or e}")
    if not installed:
        return result
    note = "installed " + ", ".join(installed) + " from the shared root"
    return SyncResult(SyncStatus.UPDATED, "; ".join(x for x in (result.reason, note) if x))
