"""Shared-library closure of ELF files, read with pyelftools as ld.so would resolve it.

No ldd: ldd runs the loader on the file, which is unsafe on untrusted binaries
and wrong for a sysroot that is not the running system. Like dracut-install we
read PT_INTERP and DT_NEEDED and search DT_RPATH, LD_LIBRARY_PATH, DT_RUNPATH
and the loader's default directories (Debian multiarch first), in that order.

Paths are handled as the ramdisk will see them: every directory is real there,
so a host directory symlink (/lib -> usr/lib on merged-/usr Debian) is followed
when reading but not reproduced; a symlinked file (libz.so.1 -> libz.so.1.2.13,
/lib64/ld-linux-x86-64.so.2 -> /lib/...) is kept as a symlink plus its target.
"""

from __future__ import annotations

import os
import posixpath
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.run import log

ELF_MAGIC = b"\x7fELF"
_MAX_LINKS = 40

# Debian's multiarch triplets and the loader's $PLATFORM, by e_machine.
_TRIPLET = {"EM_X86_64": "x86_64-linux-gnu", "EM_386": "i386-linux-gnu",
            "EM_AARCH64": "aarch64-linux-gnu", "EM_ARM": "arm-linux-gnueabihf",
            "EM_RISCV": "riscv64-linux-gnu", "EM_PPC64": "powerpc64le-linux-gnu",
            "EM_S390": "s390x-linux-gnu"}
_PLATFORM = {"EM_X86_64": "x86_64", "EM_386": "i686", "EM_AARCH64": "aarch64"}

# Loaded with dlopen by glibc itself (thread cancellation and exit unwind through
# libgcc_s), so no DT_NEEDED names it; without it a Python thread exit can abort.
DLOPENED_BY_LIBC = ("libgcc_s.so.1",)


@dataclass(frozen=True)
class ElfInfo:
    elfclass: int
    machine: str
    interp: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]


@dataclass(frozen=True)
class Install:
    """One path to create in the ramdisk: a copy of `source`, or a symlink to `symlink`."""

    path: str
    source: Path
    symlink: str | None = None


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


_PT_INTERP = 3


def has_interp(path: Path) -> bool:
    """Whether an ELF file names a program interpreter (is dynamically linked). Read
    from its program headers with struct: a rebuild asks this of busybox and would
    otherwise import pyelftools for it (23 ms) when its closure is cached."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 52 or head[:4] != ELF_MAGIC or head[4] not in (1, 2):
                return False
            end = "<" if head[5] == 1 else ">"
            if head[4] == 2:  # ELFCLASS64
                (phoff,) = struct.unpack_from(end + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
            else:
                (phoff,) = struct.unpack_from(end + "I", head, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 42)
            if phentsize < 4:
                return False
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return any(struct.unpack_from(end + "I", table, off)[0] == _PT_INTERP
               for off in range(0, len(table) - 3, phentsize))


def read_elf(path: Path) -> ElfInfo | None:
    """The dynamic-linking facts of an ELF file; None for anything that is not ELF."""
    if not is_elf(path):
        return None
    # Imported here: a rebuild whose closure is cached (contents.add_libraries) reads no
    # ELF file, and pyelftools costs each mkinitrd.ssi 23 ms to import.
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile
    from elftools.elf.segments import InterpSegment

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            interp: str | None = None
            needed: list[str] = []
            rpath: list[str] = []
            runpath: list[str] = []
            for seg in elf.iter_segments():
                if isinstance(seg, InterpSegment):
                    interp = seg.get_interp_name()
                elif isinstance(seg, DynamicSegment):
                    # pyelftools sets the string-valued tags as attributes named by kind.
                    for tag in seg.iter_tags():
                        t = tag.entry.d_tag
                        if t == "DT_NEEDED":
                            needed.append(getattr(tag, "needed"))  # noqa: B009
                        elif t == "DT_RPATH":
                            rpath += [p for p in getattr(tag, "rpath").split(":") if p]  # noqa: B009
                        elif t == "DT_RUNPATH":
                            runpath += [p for p in getattr(tag, "runpath").split(":") if p]  # noqa: B009
            return ElfInfo(elf.elfclass, elf["e_machine"], interp, tuple(needed),
                           tuple(rpath), tuple(runpath))
    except (ELFError, ValueError, KeyError, OSError) as e:
        raise SsiError(f"{path}: cannot read ELF file: {e}") from None


def default_dirs(info: ElfInfo) -> list[str]:
    """The loader's built-in search path on Debian for this class and machine."""
    dirs: list[str] = []
    triplet = _TRIPLET.get(info.machine)
    if triplet:
        dirs += [f"/lib/{triplet}", f"/usr/lib/{triplet}"]
    if info.elfclass == 64:
        dirs += ["/lib64", "/usr/lib64"]
    return [*dirs, "/lib", "/usr/lib"]


def _expand(entry: str, origin: str, info: ElfInfo) -> str:
    triplet = _TRIPLET.get(info.machine)
    lib = f"lib/{triplet}" if triplet else ("lib64" if info.elfclass == 64 else "lib")
    for token, value in (("ORIGIN", origin), ("LIB", lib),
                         ("PLATFORM", _PLATFORM.get(info.machine, ""))):
        entry = entry.replace(f"${{{token}}}", value).replace(f"${token}", value)
    return entry


class Resolver:
    """Finds the closure of a set of ELF files under sysroot (the host's / by default)."""

    def __init__(self, sysroot: Path = Path("/"), library_path: Sequence[str] = ()) -> None:
        self.sysroot = sysroot
        self.library_path = list(library_path)
        self._info: dict[str, ElfInfo | None] = {}

    def with_library_path(self, library_path: Sequence[str]) -> Resolver:
        """The same sysroot and parsed files, another LD_LIBRARY_PATH."""
        other = Resolver(self.sysroot, library_path)
        other._info = self._info
        return other

    def host(self, path: str) -> Path:
        return self.sysroot / path.lstrip("/")

    def info(self, path: str) -> ElfInfo | None:
        if path not in self._info:
            self._info[path] = read_elf(self.host(path))
        return self._info[path]

    def _compatible(self, path: str, want: ElfInfo) -> bool:
        host = self.host(path)
        if not host.is_file():
            return False
        got = self.info(path)
        return got is not None and (got.elfclass, got.machine) == (want.elfclass, want.machine)

    def find(self, name: str, requester: str, info: ElfInfo,
             exe_rpath: Sequence[str]) -> str | None:
        """Where ld.so would find DT_NEEDED `name` of `requester` (a ramdisk-absolute path)."""
        if "/" in name:
            return posixpath.normpath(name) if self._compatible(name, info) else None
        origin = posixpath.dirname(requester)
        dirs: list[str] = []
        if not info.runpath:
            dirs += [*info.rpath, *exe_rpath]
        dirs += self.library_path
        dirs += info.runpath
        dirs += default_dirs(info)
        for d in dirs:
            d = _expand(d, origin, info)
            if not d.startswith("/"):
                continue  # relative entries are relative to the cwd at run time: unusable
            candidate = posixpath.normpath(posixpath.join(d, name))
            if self._compatible(candidate, info):
                return candidate
        return None

    def links(self, path: str) -> list[Install]:
        """Install entries for path: symlinks along the way (as the ramdisk sees them)
        and the file at the end."""
        out: list[Install] = []
        for _ in range(_MAX_LINKS):
            host = self.host(path)
            if not host.is_symlink():
                out.append(Install(path, host))
                return out
            text = os.readlink(host)
            target = posixpath.normpath(posixpath.join(posixpath.dirname(path), text))
            if not self.host(target).exists():
                # The link only works through a host directory symlink: copy what it means.
                out.append(Install(path, host.resolve()))
                return out
            out.append(Install(path, host, symlink=text))
            path = target
        raise SsiError(f"{self.host(path)}: too many levels of symbolic links")

    def closure(self, roots: Iterable[str], extra: Sequence[str] = ()) -> list[Install]:
        """Everything the loader needs to run the ELF files at `roots` (ramdisk-absolute
        paths, readable under sysroot): their interpreters and libraries, recursively.
        `extra` names libraries loaded with dlopen, installed if found. Roots themselves
        are not in the result. Missing libraries fail with every one of them named.
        """
        roots = list(roots)
        result: dict[str, Install] = {}
        missing: list[str] = []
        seen: set[str] = set()
        todo: list[tuple[str, tuple[str, ...]]] = []

        def want(lib: str, exe_rpath: tuple[str, ...]) -> None:
            chain = self.links(lib)
            for inst in chain:
                result.setdefault(inst.path, inst)
            todo.append((chain[-1].path, exe_rpath))

        infos = [(r, self.info(r)) for r in roots]
        for root, info in infos:
            if info is not None:
                todo.append((root, info.rpath))
        first = next((info for _, info in infos if info is not None), None)
        for name in extra if first is not None else ():
            assert first is not None
            found = self.find(name, "/", first, ())
            if found is None:
                log.info("%s not found: not installed (only ever dlopen()ed)", name)
            else:
                want(found, ())
        while todo:
            path, exe_rpath = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            info = self.info(path)
            if info is None:
                continue
            if info.interp:
                if self._compatible(info.interp, info):
                    want(posixpath.normpath(info.interp), exe_rpath)
                else:
                    missing.append(f"{info.interp} (interpreter of {path})")
            for name in info.needed:
                found = self.find(name, path, info, exe_rpath)
                if found is None:
                    missing.append(f"{name} (needed by {path})")
                else:
                    want(found, exe_rpath)
        if missing:
            raise SsiError("shared libraries not found: " + ", ".join(sorted(set(missing))),
                           hint="install the packages that provide them on the build host")
        return [inst for p, inst in sorted(result.items()) if p not in roots]
