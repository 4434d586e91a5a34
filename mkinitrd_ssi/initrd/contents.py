"""What the builder itself puts in a ramdisk: directories and device nodes, the frozen
agent, its ELF closure, busybox, the kernel modules with their firmware."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xxhash

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.initrd import elf, freeze, kmod
from mkinitrd_ssi.initrd.cpio import Archive
from mkinitrd_ssi.run import log

AGENT_DIR = "/ssi/agent"
# Debian's busybox-static (1.98 MB, every applet) or busybox (0.77 MB and libresolv; glibc
# is there for the agent anyway: 0.5 MB less in a zstd -19 image), whichever is installed.
BUSYBOX = Path("/bin/busybox")
DIRS = ("bin", "dev", "etc", "etc/ssi", "lib", "mnt", "newroot", "proc", "run", "sys")
# As gen_init_cpio ships them: a frozen Python dies without /dev/urandom before devtmpfs.
DEVICES = (("dev/console", 5, 1, 0o600), ("dev/null", 1, 3, 0o666),
           ("dev/urandom", 1, 9, 0o666), ("dev/random", 1, 8, 0o666),
           ("dev/kmsg", 1, 11, 0o644))


def add_base(arc: Archive) -> None:
    for d in DIRS:
        arc.dir(d)
    arc.dir("tmp", 0o1777)
    for path, major, minor, mode in DEVICES:
        arc.device(path, stat.S_IFCHR, major, minor, mode)


def add_agent(arc: Archive, frozen: Path) -> list[str]:
    """The frozen agent under /ssi/agent; returns the host paths of its ELF files."""
    arc.tree(frozen, AGENT_DIR)
    arc.symlink("linuxrc", AGENT_DIR.lstrip("/") + "/" + freeze.NAME)
    arc.symlink("init", "linuxrc")
    return sorted(str(p) for p in frozen.rglob("*")
                  if p.is_file() and not p.is_symlink() and elf.is_elf(p))


def add_libraries(arc: Archive, frozen: Path, elves: list[str], extra_roots: list[str],
                  cache: Path | None = None) -> int:
    """The ELF closure of the agent (and busybox if dynamic), PyInstaller's exclusions
    (ld.so, glibc) included. Returns how many paths it added. With `cache`, the closure
    is reused while none of the files and directories it was read from changed: reading
    the 20-odd ELF files with pyelftools is most of a rebuild after an ssitab edit."""
    found = _cached_closure(cache, frozen, elves, extra_roots)
    inside = str(frozen) + "/"
    added = 0
    for inst in found:
        if inst.path.startswith(inside):
            continue  # PyInstaller bundled it; already under /ssi/agent
        if inst.symlink is not None:
            added += arc.symlink(inst.path, inst.symlink)
        else:
            added += arc.file(inst.path, inst.source)
    return added


def _closure(frozen: Path, elves: list[str], extra_roots: list[str]) -> list[elf.Install]:
    exe = str(frozen / freeze.NAME)
    internal = str(frozen / "_internal")
    # PyInstaller's bootloader first runs with the system's search path, then re-execs
    # itself with LD_LIBRARY_PATH=_internal for the rest: resolve it both ways.
    resolver = elf.Resolver()
    found = resolver.closure([exe, *extra_roots], extra=elf.DLOPENED_BY_LIBC)
    return found + resolver.with_library_path([internal]).closure(elves)


def _stamp(path: str) -> list[int]:
    try:
        st = os.lstat(path)
    except OSError:
        return []
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _record_path(cache: Path, kind: str, key: object) -> Path:
    return cache / kind / f"{xxhash.xxh3_128_hexdigest(json.dumps(key).encode())}.json"


def _load_record(path: Path) -> Any:
    """A record _save_record wrote, while none of the paths it was read from changed."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        saved = json.loads(path.read_bytes())
        if all(_stamp(p) == stamp for p, stamp in saved["stamps"]):
            return saved["value"]
    return None


def _save_record(path: Path, value: object, sources: set[str]) -> None:
    record = {"value": value, "stamps": [[p, _stamp(p)] for p in sorted(sources)]}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)  # no fsync: a torn record fails to parse and is redone


def _cached_closure(cache: Path | None, frozen: Path, elves: list[str],
                    extra_roots: list[str]) -> list[elf.Install]:
    if cache is None:
        return _closure(frozen, elves, extra_roots)
    path = _record_path(cache, "closures", [str(frozen), elves, extra_roots,
                                            elf.DLOPENED_BY_LIBC])
    saved = _load_record(path)
    if saved is not None:
        return [elf.Install(i, Path(src), link) for i, src, link in saved]
    found = _closure(frozen, elves, extra_roots)
    # What the answer was read from: every file, and every directory searched (a library
    # added to one that comes first in the search path changes its mtime).
    # The frozen tree never changes under its key (but its directory's mtime is touched
    # at each use, for the cache's pruning): only the files are stamped there.
    files = {*elves, *extra_roots, str(frozen / freeze.NAME)}
    files |= {str(i.source) for i in found} | {i.path for i in found}
    inside = str(frozen) + "/"
    dirs = {os.path.dirname(f) for f in files if not f.startswith(inside)} | set(_SEARCHED)
    _save_record(path, [[i.path, str(i.source), i.symlink] for i in found], files | dirs)
    return found


# The loader's default directories on Debian x86_64 (elf.default_dirs): a library that
# appears in one of them may change what a name resolves to.
_SEARCHED = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
             "/lib", "/usr/lib")


def add_busybox(arc: Archive, busybox: Path = BUSYBOX) -> list[str]:
    """busybox as /bin/busybox and /bin/sh; returns it as an ELF root when it is dynamic."""
    if not busybox.is_file():
        raise SsiError(f"{busybox}: no such file",
                       hint="apt-get install busybox (or busybox-static), or pass --no-busybox")
    arc.file("bin/busybox", busybox, 0o755)
    arc.symlink("bin/sh", "busybox")
    return [str(busybox)] if elf.has_interp(busybox) else []


def add_modules(arc: Archive, moddir: Path, cache: Path, firmware_dir: Path,
                added: Sequence[str] = (), omitted: Sequence[str] = (),
                wanted: Sequence[str] = ()) -> int:
    """added: asked for (an error when the kernel lacks one); wanted: carried beside the
    defaults when the kernel has them as modules."""
    sel, dep, firmware = _cached_selection(moddir, cache, added, omitted, wanted)
    kver = moddir.name
    if sel.builtin:
        log.info("modules built into %s (nothing to load): %s", kver, " ".join(sel.builtin))
    if sel.absent:
        log.info("default modules not in %s, skipped: %s", kver, " ".join(sel.absent))
    if sel.dropped:
        log.warning("left out for needing an omitted module: %s", ", ".join(sel.dropped))
    base = f"lib/modules/{kver}"
    plain = [kmod.materialize(moddir, m, cache / "modules") for m in sel.modules]
    for m, path in zip(sel.modules, plain, strict=True):
        arc.file(f"{base}/{m.installed}", path, 0o644)
    add_firmware(arc, firmware_dir, [firmware[m.relpath] for m in sel.modules])
    for name in ("modules.alias", "modules.builtin"):
        if (moddir / name).is_file():
            arc.file(f"{base}/{name}", moddir / name, 0o644)
    with arc.origin("generated"):
        arc.data(f"{base}/modules.dep", dep.encode())
        arc.data("etc/ssi/modules", "".join(f"/{base}/{m.installed}\n"
                                             for m in sel.modules).encode())
        arc.data("etc/ssi/kver", f"{kver}\n".encode())
    log.info("modules: %d from %s: %s", len(sel.modules), moddir,
             " ".join(m.name for m in sel.modules))
    return len(sel.modules)


# What the selection is read from in a module directory (kmod.ModuleIndex).
_INDEX_FILES = ("modules.dep", "modules.builtin", "modules.softdep", "modules.alias",
                "modules.builtin.modinfo")


def _cached_selection(moddir: Path, cache: Path, added: Sequence[str], omitted: Sequence[str],
                      wanted: Sequence[str] = ()
                      ) -> tuple[kmod.Selection, str, dict[str, list[str]]]:
    """(the modules to carry, the ramdisk's modules.dep, the firmware each names), reused
    while the module directory's index and the modules are unchanged: parsing modules.dep
    and modules.alias and reading every module's .modinfo was a fifth of a rebuild."""
    path = _record_path(cache, "modules", [str(moddir), kmod.DEFAULT_MODULES, list(added),
                                           list(omitted), list(wanted)])
    saved = _load_record(path)
    if saved is not None:
        mods = [kmod.Module(name, rel, tuple(deps)) for name, rel, deps in saved["modules"]]
        sel = kmod.Selection(mods, saved["builtin"], saved["absent"], saved["dropped"])
        return sel, saved["dep"], saved["firmware"]
    index = kmod.ModuleIndex(moddir)
    sel = index.select([*kmod.DEFAULT_MODULES, *wanted, *added], required=added, omit=omitted)
    firmware = {m.relpath: kmod.firmware(kmod.materialize(moddir, m, cache / "modules"))
                for m in sel.modules}
    dep = index.ramdisk_dep(sel.modules)
    value = {"modules": [[m.name, m.relpath, list(m.deps)] for m in sel.modules],
             "builtin": sel.builtin, "absent": sel.absent, "dropped": sel.dropped,
             "dep": dep, "firmware": firmware}
    sources = {str(moddir), *(str(moddir / f) for f in _INDEX_FILES),
               *(str(moddir / m.relpath) for m in sel.modules)}
    _save_record(path, value, sources)
    return sel, dep, firmware


def add_firmware(arc: Archive, firmware_dir: Path, wanted: list[list[str]]) -> None:
    """The firmware files the modules name (a list for each), from the system being booted
    (ROOT), as the kernel's loader looks for them, compressed or not, under /lib/firmware."""
    missing: list[str] = []
    for names in wanted:
        for name in names:
            found = next((name + s for s in ("", ".zst", ".xz")
                          if (firmware_dir / (name + s)).is_file()), None)
            if found is None:
                missing.append(name)
            else:
                with arc.origin("firmware"):
                    arc.file(f"lib/firmware/{found}", firmware_dir / found, 0o644)
    if missing:
        # Often optional (one file per chip revision): say so, do not fail.
        log.info("firmware not in %s, not shipped: %s", firmware_dir, " ".join(missing))
