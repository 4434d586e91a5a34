"""libpython linked again, without the built-in modules the agent never imports.

Debian links into libpython the extension modules its Setup.local names
(unicodedata, pyexpat and _elementtree, the hash modules, _pickle,
_datetime...), and libexpat with them: unicodedata alone is 1.1 MB of the
7.7 MB, and the ramdisk carries every byte. libpython3.11-dev ships the
library's own position-independent objects (libpython3.11-pic.a, for
embedding) and the config.c that lists the built-in modules: linking those
objects again, less the objects of the unused modules and their lines in
config.c, gives the same interpreter minus those modules. Measured on Debian
12: 7.7 -> 6.0 MB, 2.20 -> 1.65 MB at zstd -19, libexpat no longer needed
(README, Benchmarks).

Nothing here is required. Without the archive, config.c, Setup.local or a C
compiler (another distribution, libpython3.11-dev not installed), the freeze
keeps the libpython Python runs with and says so. Whichever libpython it has,
the frozen agent is run before it is cached (freeze.check_frozen): a link that
lost something the agent needs fails the build, never a node.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.run import log, run

# Built-in modules PyInstaller's own bootstrap imports (pyimod01_archive) before any of
# the agent's: never dropped, whatever the agent's closure.
BOOTSTRAP = ("zlib", "_struct")


@dataclass(frozen=True)
class Inputs:
    """What a relink reads: Debian's libpython3.X-dev files for the running Python."""

    archive: Path  # libpython3.X-pic.a
    config_c: Path  # the table of built-in modules (_PyImport_Inittab)
    setup_local: Path  # the extension modules Debian linked in, with their sources
    stock: Path  # the libpython the interpreter runs with
    soname: str

    def stamp(self) -> str:
        """Identity for the freeze's cache key: cheap (no sysconfig, no hashing), and a
        libpython3.X-dev upgrade or removal changes it."""
        parts = []
        for path in (self.archive, self.config_c, self.setup_local, self.stock):
            st = path.stat()
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
        return " ".join(parts)


@dataclass(frozen=True)
class Relinked:
    path: Path
    soname: str
    dropped: tuple[str, ...]  # built-in modules left out
    needed_no_more: tuple[str, ...]  # libraries the stock libpython needed, this one not


def inputs() -> Inputs | None:
    """Debian's files for the running Python, or None where any is missing. Paths made
    from sys alone: the freeze's cache key asks this on every build."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}{sys.abiflags}"
    multiarch = getattr(sys.implementation, "_multiarch", None)
    if not multiarch:
        return None
    libpl = Path(sys.base_prefix, "lib", f"python{sys.version_info.major}."
                 f"{sys.version_info.minor}", f"config-{version}-{multiarch}")
    soname = f"libpython{version}.so.1.0"
    found = Inputs(archive=libpl / f"libpython{version}-pic.a", config_c=libpl / "config.c",
                   setup_local=libpl / "Setup.local",
                   stock=Path(sys.base_prefix, "lib", multiarch, soname), soname=soname)
    if all(p.is_file() for p in (found.archive, found.config_c, found.setup_local,
                                 found.stock)):
        return found
    return None


def stamp() -> str:
    """What the cache key records of the relink: its inputs, or their absence."""
    found = inputs()
    return "stock libpython" if found is None else found.stamp()


@dataclass(frozen=True)
class Module:
    name: str
    objects: tuple[str, ...]  # archive members, by name
    libs: tuple[str, ...]  # -l flags


def linked_in(setup_local: str) -> list[Module]:
    """The modules of a Setup file, each with its objects and libraries. Lines are
    `name source.c ... -lfoo`; `*static*`/`*shared*` markers and comments skipped."""
    out = []
    for line in setup_local.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0].startswith("*") or "=" in words[0]:
            continue
        name, rest = words[0], words[1:]
        objects = tuple(Path(w).with_suffix(".o").name for w in rest
                        if w.endswith((".c", ".cc", ".cpp")))
        libs = tuple(w for w in rest if w.startswith("-l"))
        if objects:
            out.append(Module(name, objects, libs))
    return out


def _without(config_c: str, dropped: list[str]) -> str:
    """config.c without the declarations and table lines of the dropped modules; each
    must be found exactly once, or the file is not the one this code knows."""
    for name in dropped:
        for pattern in (rf"^extern PyObject\* PyInit_{re.escape(name)}\(void\);\n",
                        rf'^\s*\{{"{re.escape(name)}", PyInit_{re.escape(name)}\}},\n'):
            config_c, count = re.subn(pattern, "", config_c, flags=re.MULTILINE)
            if count != 1:
                raise SsiError(f"config.c: module {name} listed {count} times, not once")
    return config_c


def _compiler() -> str | None:
    for name in (os.environ.get("CC", ""), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    return None


def relink(work: Path, closure: set[str]) -> Relinked | None:
    """A libpython in work/ without the linked-in modules outside `closure` (the agent's
    import closure, by module name); None where it cannot be made here."""
    found = inputs()
    cc = _compiler()
    if found is None or cc is None or shutil.which("ar") is None:
        log.info("agent: libpython as %s ships it (no %s here): install gcc and "
                 "libpython3-dev for a ramdisk about 0.6 MB smaller",
                 "Debian" if found else "Python",
                 "C compiler" if found else "libpython3-dev archive")
        return None
    import sysconfig

    from mkinitrd_ssi.initrd import elf

    modules = linked_in(found.setup_local.read_text())
    drop = [m for m in modules if m.name not in closure and m.name not in BOOTSTRAP]
    if not drop:
        return None
    objdir = work / "libpython-objects"
    objdir.mkdir()
    run(["ar", "x", str(found.archive)], cwd=str(objdir), capture=True)
    for m in drop:
        for obj in m.objects:
            if not (objdir / obj).is_file():
                raise SsiError(f"{found.archive} has no {obj} (module {m.name})")
            (objdir / obj).unlink()
    config = work / "config.c"
    config.write_text(_without(found.config_c.read_text(), [m.name for m in drop]))
    include = sysconfig.get_config_var("INCLUDEPY")
    run([cc, "-c", "-fPIC", "-O2", f"-I{include}", str(config), "-o",
         str(objdir / "config.o")], capture=True)
    libs = sorted({lib for m in modules if m not in drop for lib in m.libs}
                  | set(str(sysconfig.get_config_var("LIBS") or "").split())
                  | set(str(sysconfig.get_config_var("SYSLIBS") or "").split()))
    out = work / found.soname
    # Debian's own link flags (its Makefile's BLDSHARED), plus -z defs: an object that
    # still calls into a dropped module is a link error here, not a symbol missing at boot.
    run([cc, "-shared", "-s", "-Wl,-O1", "-Wl,-Bsymbolic-functions",
         f"-Wl,-soname,{found.soname}", "-Wl,-z,defs", "-Wl,--as-needed", "-o", str(out),
         *sorted(str(p) for p in objdir.glob("*.o")), *libs], capture=True)
    shutil.rmtree(objdir)
    before, after = elf.read_elf(found.stock), elf.read_elf(out)
    gone = tuple(sorted(set(before.needed if before else ()) - set(after.needed if after else ())))
    names = tuple(m.name for m in drop)
    log.info("agent: libpython relinked without %s (%.1f -> %.1f MB)", " ".join(names),
             found.stock.stat().st_size / 1e6, out.stat().st_size / 1e6)
    return Relinked(out, found.soname, names, gone)
