"""The boot agent frozen with PyInstaller (onedir), cached by a hash of what goes into it.

Onedir, not onefile: a onefile bootloader stays PID 1 with the Python code as
its child, so switch_root and reaping cannot work (DESIGN.md). The cache key
covers the agent's sources, PyInstaller's and Python's versions and the
recipe, and nothing else, so a rebuild after an ssitab edit never re-freezes.

The recipe (issue 14; figures in README, Benchmarks) makes the frozen tree
cheap to start and small once the image compresses it:

- no zlib inside PyInstaller's archives (level 0): the image is compressed
  as a whole by zstd, which does better on plain bytecode than on zlib
  output (7.20 -> 6.11 MB measured), and no import pays for inflating;
- bytecode at optimize=2 (no docstrings, no asserts: the agent relies on
  neither; its two asserts only narrow types for mypy);
- the standard library trimmed to the import closure of the agent's modules
  (PyInstaller's graph follows every function-level import of the standard
  library too and collected email, decimal, tarfile, logging, argparse...),
  and the encodings to those the agent and the interpreter use;
- PyInstaller's runtime hook for inspect dropped: it imports inspect and
  zipfile and reads base_library.zip's directory at every start, to fix
  inspect.getsourcefile, which the agent never calls;
- a fixed hash seed: a random one is read from the kernel while the
  interpreter starts, and before the kernel's random pool is initialised
  that read waits for it (measured: about 1 s of a TCG boot, "random: crng
  init done"; a machine with RDRAND does not wait). The agent hashes nothing
  an attacker chooses, and its dict and set orders become reproducible.

A frozen tree is checked before it is cached: it must import every module of
the agent and everything they import (SSI_STARTUP_PROBE, see __main__.py).
"""

from __future__ import annotations

import dataclasses
import keyword
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.initrd import relink
from mkinitrd_ssi.run import log, run

if TYPE_CHECKING:
    import ast

NAME = "linuxrc"
# Bump when the freezing recipe changes in a way the key does not see.
RECIPE = "4"
KEEP = 4  # frozen agents kept in the cache (newest first)
RTHOOK = Path(__file__).resolve().parent / "rthook_clock.py"
STARTCACHE = Path(__file__).resolve().parent / "startcache.py"
STARTCACHE_MODULE = "_ssi_startcache"  # its name in the frozen agent

# What the agent (standard library, ctypes, xxhash) never imports but PyInstaller would
# pull in through optional imports: the large ones are OpenSSL (_hashlib, _ssl: ~5 MB),
# the CJK codecs, decimal and the compression modules. Any of these that the agent does
# import directly is kept (see excludes()). Excluded at analysis, so their extension
# modules and libraries are never collected; the trim to the import closure does the rest.
EXCLUDES = (
    "tkinter", "_tkinter", "turtle", "turtledemo", "idlelib", "lib2to3", "pydoc",
    "pydoc_data", "doctest", "unittest", "test", "ensurepip", "venv", "distutils",
    "setuptools", "pkg_resources", "pip", "sqlite3", "_sqlite3", "dbm", "_dbm", "_gdbm",
    "curses", "_curses", "_curses_panel", "readline", "ssl", "_ssl", "_hashlib", "_decimal",
    "xmlrpc", "xml", "pyexpat", "lzma", "_lzma", "bz2", "_bz2", "_multibytecodec",
    "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr", "_codecs_tw",
    "asyncio", "multiprocessing",
)
# The codecs kept in base_library.zip (PyInstaller puts all ~120 there, 0.61 MB): the
# interpreter's own (utf-8: the ramdisk has no locale, so Python runs in UTF-8 mode) and
# those the agent names (latin-1 for FAT labels, unicode_escape in ssitab's messages).
ENCODINGS = ("aliases", "ascii", "latin_1", "utf_8", "utf_8_sig", "unicode_escape",
             "raw_unicode_escape")
# Imported by the standard library inside functions the agent may reach, although no
# module imports them at load time: collections.Counter.most_common (heapq).
LAZY_STDLIB = ("heapq",)


@dataclass(frozen=True)
class Recipe:
    """How the agent is frozen; every field is part of the cache key."""

    optimize: int = 2  # bytecode optimisation level (PyInstaller --optimize)
    zlib_level: int | None = 0  # PyInstaller's archives; None: its own default (6 and 9)
    trim: bool = True  # keep only the agent's import closure of the standard library
    encodings: tuple[str, ...] | None = ENCODINGS  # None: every codec
    drop_rthooks: tuple[str, ...] = ("pyi_rth_inspect",)
    hash_seed: int | None = 0  # None: random, read from the kernel at start-up
    startcache: bool = True  # what the agent's imports compile, compiled at freeze time
    lazy_dataclasses: bool = True  # dataclasses without its import of inspect
    python_options: tuple[str, ...] = ()  # e.g. ("X importtime",) for a profile
    relink: bool = True  # libpython without the linked-in modules the agent never imports

    def describe(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))


DEFAULT = Recipe()
# PyInstaller's defaults, as frozen before issue 14: the bench builds it beside DEFAULT.
PLAIN = Recipe(optimize=0, zlib_level=None, trim=False, encodings=None, drop_rthooks=(),
               hash_seed=None, startcache=False, lazy_dataclasses=False, relink=False)


_IMPORT_RE = re.compile(rb"^[ \t]*(?:from|import)[ \t]+([A-Za-z_]\w*)", re.MULTILINE)


def sources(package: Path) -> list[Path]:
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def _trees(package: Path) -> list[tuple[Path, ast.Module]]:
    import ast  # only a freeze parses: a rebuild hashes the sources (cache_key)

    out = []
    for path in sources(package):
        try:
            out.append((path, ast.parse(path.read_bytes(), str(path))))
        except SyntaxError as e:
            raise SsiError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    return out


def import_targets(package: Path) -> set[str]:
    """Every module the package's sources import, by full name, at any depth in the code."""
    import ast

    names: set[str] = set()
    for _, tree in _trees(package):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    names.discard("__future__")
    return names


def imported_names(package: Path) -> set[str]:
    """Top-level module names the package's sources import, at any depth in the code."""
    return {n.split(".")[0] for n in import_targets(package)}


def agent_modules(package: Path) -> list[str]:
    """The package's own modules by name, its entry script (which boots) left out."""
    out = []
    for path in sources(package):
        rel = path.relative_to(package.parent).with_suffix("")
        parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if parts[-1] != "__main__":
            out.append(".".join(parts))
    return out


def excludes(package: Path, recipe: Recipe = DEFAULT, keep: set[str] | None = None
             ) -> list[str]:
    """What PyInstaller's analysis leaves out. With `keep` (the modules the trim keeps),
    also every top-level package of the standard library outside it: the trim would drop
    them anyway, and PyInstaller's walk through them was half of a cold freeze (measured:
    8.9 -> 5.4 s, the frozen tree byte for byte the same). PyInstaller's own base modules
    (base_library.zip) stay whatever the agent imports."""
    used = imported_names(package)
    out = [m for m in EXCLUDES if m not in used]
    if recipe.encodings is not None:
        out += [f"encodings.{e}" for e in _all_encodings() if e not in recipe.encodings]
    if keep is not None:
        from PyInstaller.compat import PY3_BASE_MODULES

        wanted = {m.split(".")[0] for m in keep} | set(PY3_BASE_MODULES) | used
        out += sorted(m for m in sys.stdlib_module_names if m not in wanted and m not in out)
    return out


def _all_encodings() -> list[str]:
    import encodings
    import pkgutil

    return sorted(m.name for m in pkgutil.iter_modules(encodings.__path__))


# Run by the freezing interpreter, isolated, without site and with a fixed hash seed (the
# cache's bytes must not depend on the run): which modules importing the agent's modules
# and everything they import anywhere loads (optional ones may fail), and, when asked, the
# start-up cache of what those imports compile (startcache.py).
_STUDY = r"""
import importlib, sys
sys.path[:0] = sys.argv[1].split("\n")
cache, optimize = sys.argv[2], int(sys.argv[3])
if cache:
    import startcache
    stop = startcache.record(optimize)
failed = []
for name in sys.argv[4:]:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{name}: {type(e).__name__}: {e}")
if cache:
    with open(cache, "wb") as f:
        f.write(stop())
print("\n".join(sorted(n for n in sys.modules if n != "startcache")))
print("--failed--")
print("\n".join(failed), end="")
"""


def study(package: Path, cache: Path | None = None, optimize: int = 0,
          overrides: Path | None = None) -> tuple[set[str], list[str]]:
    """(modules loaded by importing the agent's modules and all they import, the imports
    that fail here); with `cache`, the start-up cache of those imports is written there.
    Run as the frozen agent runs: at its optimisation level, with its overrides of the
    standard library first on the path (nothing written: -B). The agent's modules execute
    their top level on this host: they only define things (and load libc through ctypes)."""
    wanted = sorted({*agent_modules(package), *import_targets(package)})
    paths = [*([str(overrides)] if overrides else []), str(package.parent),
             str(STARTCACHE.parent), *(p for p in sys.path if p and p != str(package.parent))]
    flags = ["-I", "-S", "-B", *(["-O"] * optimize)]
    proc = subprocess.run([sys.executable, *flags, "-c", _STUDY, "\n".join(paths),
                           str(cache or ""), str(optimize), *wanted], capture_output=True,
                          text=True, check=False,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                               "PYTHONHASHSEED": "0"})
    if proc.returncode != 0:
        raise SsiError(f"cannot import the agent to find what it needs:\n{proc.stderr.strip()}")
    loaded, _, failed = proc.stdout.partition("--failed--\n")
    return set(loaded.split()), [f for f in failed.splitlines() if f]


# dataclasses imports inspect (and with it ast, dis, tokenize...: 38 million instructions)
# only to write a docstring for classes without one; under optimize=2 no class has one.
# The frozen agent carries dataclasses with these two edits (checked to apply exactly; on
# another Python, where they do not, the standard module is frozen as it is).
_DATACLASSES_EDITS = (
    ("\nimport inspect\n", "\n"),
    ("""    if not getattr(cls, '__doc__'):
        # Create a class doc-string.
        cls.__doc__ = (cls.__name__ +""",
     """    if not getattr(cls, '__doc__') and sys.flags.optimize < 2:
        # Create a class doc-string (not under -OO: it costs inspect's import).
        import inspect
        cls.__doc__ = (cls.__name__ +"""),
)


def lazy_dataclasses(dest: Path) -> bool:
    """Write the edited dataclasses.py into dest; False when the edits do not apply."""
    import dataclasses

    text = Path(dataclasses.__file__).read_text()
    for old, new in _DATACLASSES_EDITS:
        if text.count(old) != 1:
            log.info("agent: dataclasses.py of %s differs from 3.11's; frozen unedited",
                     sys.version.split()[0])
            return False
        text = text.replace(old, new)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "dataclasses.py").write_text(text)
    return True


def _dist_infos() -> dict[str, str]:
    """{normalised distribution name: version} of the *.dist-info directories on sys.path:
    one directory listing each, where importlib.metadata's import alone costs a rebuild
    30 ms (it brings the email package) and its lookups as much again."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            # NAME-VERSION.dist-info: the stem has one dash (the suffix has its own).
            stem = name.removesuffix(".dist-info")
            if stem != name and stem.count("-") == 1:
                dist, version = stem.split("-")
                found.setdefault(dist.lower().replace("-", "_").replace(".", "_"), version)
    return found


def _version(dist: str, infos: dict[str, str]) -> str | None:
    version = infos.get(dist.lower().replace("-", "_").replace(".", "_"))
    if version is not None:
        return version
    import importlib.metadata  # an egg-info, say: the slow, general way

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def pyinstaller_version(infos: dict[str, str] | None = None) -> str:
    version = _version("pyinstaller", _dist_infos() if infos is None else infos)
    if version is None:
        raise SsiError("PyInstaller is not installed for " + sys.executable,
                       hint="pip install pyinstaller (make venv does)")
    return version


def _versions(names: set[str], package: str, infos: dict[str, str]) -> list[str]:
    """name==version of each installed distribution among names (xxhash, say): a module
    is taken for the distribution of its own name, else importlib.metadata maps it."""
    # The regex also catches a continuation line `from None` of a raise: not a module.
    wanted = sorted(n for n in names if n not in sys.stdlib_module_names and n != package
                    and not keyword.iskeyword(n))
    out = set()
    for name in wanted:
        version = _version(name, infos)
        if version is not None:
            out.add(f"{name}=={version}")
            continue
        import importlib.metadata

        out |= {f"{d}=={importlib.metadata.version(d)}"
                for d in importlib.metadata.packages_distributions().get(name, [])}
    return sorted(out)


def cache_key(package: Path, recipe: Recipe = DEFAULT) -> str:
    """Hash of the sources, the tools' versions and the recipe. Cheap on purpose (it runs
    on every build): imports are found with a regex rather than parsed; the excludes and
    the import closure need no scan, being functions of the sources, the recipe and the
    Python version, all hashed."""
    h = xxhash.xxh3_128()
    names: set[str] = set()
    for path in sources(package):
        data = path.read_bytes()
        names.update(m.decode() for m in _IMPORT_RE.findall(data))
        h.update(str(path.relative_to(package)).encode() + b"\0" + data + b"\0")
    # Upgrading a library the agent imports (xxhash) must re-freeze it too.
    infos = _dist_infos()
    for part in (RECIPE, pyinstaller_version(infos), sys.version, os.uname().machine,
                 " ".join(EXCLUDES), " ".join(LAZY_STDLIB), recipe.describe(),
                 RTHOOK.read_text(), STARTCACHE.read_text(), repr(_DATACLASSES_EDITS),
                 " ".join(_versions(names, package.name, infos)),
                 relink.stamp() if recipe.relink else ""):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


# The spec PyInstaller runs (its CLI cannot drop a runtime hook nor trim the archive).
_SPEC = """\
# Generated by mkinitrd_ssi/initrd/freeze.py: the frozen boot agent.
from PyInstaller.utils.hooks import collect_submodules

KEEP = {keep!r}
DROP_RTHOOKS = {drop_rthooks!r}
# (soname, path, libraries it no longer needs) of a relinked libpython (relink.py), or None
RELINKED = {relinked!r}

a = Analysis([{entry!r}], pathex={pathex!r},
             hiddenimports=collect_submodules({package!r}) + {hidden!r},
             runtime_hooks=[{rthook!r}],
             excludes={excludes!r}, noarchive=False, optimize={optimize!r})
a.scripts = [s for s in a.scripts if s[0] not in DROP_RTHOOKS]
if KEEP is not None:
    KEEP = set(KEEP)
    a.pure = [m for m in a.pure if m[0] in KEEP]
    a.binaries = [b for b in a.binaries if b[2] != "EXTENSION"
                  or b[0].split("/")[-1].split(".")[0] in KEEP
                  or b[0].rsplit(".", 2)[0].replace("/", ".") in KEEP]
if RELINKED is not None:
    SONAME, LIBPYTHON, GONE = RELINKED
    a.binaries = [(b[0], LIBPYTHON if b[0] == SONAME else b[1], b[2]) for b in a.binaries
                  if b[0] not in GONE]
pyz = PYZ(a.pure)
exe = EXE(pyz, a.scripts, {options!r}, exclude_binaries=True, name={name!r}, debug=False,
          bootloader_ignore_signals=False, strip=True, upx=False, console=True)
coll = COLLECT(exe, a.binaries, a.datas, strip=True, upx=False, name={name!r})
"""


def spec_text(package: Path, recipe: Recipe, keep: set[str] | None,
              extra_paths: Sequence[Path] = (), hidden: Sequence[str] = (),
              relinked: relink.Relinked | None = None) -> str:
    options = [(o, None, "OPTION") for o in recipe.python_options]
    options += [("O", None, "OPTION")] * recipe.optimize
    if recipe.hash_seed is not None:
        options.append((f"hash_seed={recipe.hash_seed}", None, "OPTION"))
    return _SPEC.format(
        keep=None if keep is None else sorted(keep), drop_rthooks=recipe.drop_rthooks,
        entry=str(package / "__main__.py"), package=package.name,
        pathex=[*map(str, extra_paths), str(package.parent)], hidden=list(hidden),
        rthook=str(RTHOOK), excludes=excludes(package, recipe, keep), optimize=recipe.optimize,
        options=options, name=NAME,
        relinked=None if relinked is None else (relinked.soname, str(relinked.path),
                                                list(relinked.needed_no_more)))


def _prepare(package: Path, recipe: Recipe, work: Path) -> str:
    """The spec, after studying the agent: its import closure (the trim) and the start-up
    cache (written as a module into work/), the edited dataclasses (work/overrides/, which
    PyInstaller must also run with on PYTHONPATH: its graph of the standard library is
    made before the spec's paths count)."""
    extra: list[Path] = []
    hidden: list[str] = []
    overrides = None
    if recipe.lazy_dataclasses and lazy_dataclasses(work / "overrides"):
        overrides = work / "overrides"
        extra.append(overrides)  # found before the standard library's
    cache = work / "startcache.bin" if recipe.startcache else None
    keep = None
    relinked = None
    if recipe.trim or cache is not None or recipe.relink:
        closure, failed = study(package, cache, recipe.optimize, overrides)
        for line in failed:
            log.warning("agent: an import fails on this host too (left to the frozen check): "
                        "%s", line)
        if recipe.trim:
            keep = closure | set(LAZY_STDLIB) | {STARTCACHE_MODULE}
        if recipe.relink:
            try:
                relinked = relink.relink(work, closure)
            except SsiError as e:
                log.warning("agent: libpython kept as it is, the relink failed: %s", e)
    if cache is not None:
        (work / f"{STARTCACHE_MODULE}.py").write_text(
            f"# Generated by mkinitrd_ssi/initrd/freeze.py from startcache.py.\n"
            f"{STARTCACHE.read_text()}\n\nDATA = {cache.read_bytes()!r}\ninstall(DATA)\n")
        extra.append(work)
        hidden.append(STARTCACHE_MODULE)
    return spec_text(package, recipe, keep, extra, hidden, relinked)


def check_frozen(exe: Path, package: Path) -> None:
    """The frozen agent imports all of its modules and everything they import anywhere,
    or the freeze fails here rather than a node at boot."""
    wanted = sorted({*agent_modules(package), *import_targets(package)})
    env = {"SSI_STARTUP_PROBE": ",".join(wanted), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(exe)], env=env, capture_output=True, text=True, check=False,
                          timeout=120)
    missing = [line.split(" ", 2)[2] for line in proc.stdout.splitlines()
               if line.startswith("ssi-startup-probe missing ")]
    if proc.returncode != 0 or missing or "ssi-startup-probe times" not in proc.stdout:
        details = "\n".join(missing) or (proc.stdout + proc.stderr).strip()[-2000:]
        raise SsiError(f"the frozen agent {exe} cannot import what it needs:\n{details}",
                       hint="a module the freeze left out: see mkinitrd_ssi/initrd/freeze.py")


def _freeze(package: Path, dest: Path, verbose: bool, recipe: Recipe = DEFAULT) -> None:
    entry = package / "__main__.py"
    if not entry.is_file():
        raise SsiError(f"{entry}: no such file", hint="the agent's entry script is missing")
    import shutil  # here and in _prune: a rebuild freezes nothing
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=".freeze-", dir=dest.parent))
    try:
        spec = work / f"{NAME}.spec"
        spec.write_text(_prepare(package, recipe, work))
        argv = [sys.executable, "-m", "PyInstaller", "--noconfirm",
                "--distpath", str(work / "dist"), "--workpath", str(work / "build"),
                "--log-level", "INFO" if verbose else "WARN", str(spec)]
        # A fixed hash seed makes PyInstaller's output reproducible (set ordering in the
        # bytecode it writes), so a re-freeze of the same sources gives the same image.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        if (work / "overrides").is_dir():
            env["PYTHONPATH"] = str(work / "overrides")
        if recipe.zlib_level is not None:
            env["PYINSTALLER_ZLIB_COMPRESSION_LEVEL"] = str(recipe.zlib_level)
        run(argv, capture=not verbose, env=env)
        built = work / "dist" / NAME
        if not (built / NAME).is_file():
            raise SsiError(f"PyInstaller left no {built / NAME}")
        check_frozen(built / NAME, package)
        try:
            built.rename(dest)
        except OSError:
            if not (dest / NAME).is_file():  # else a parallel build got there first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prune(base: Path, keep: Path) -> None:
    import shutil

    entries = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def frozen_agent(package: Path, cache: Path, *, verbose: bool = False,
                 recipe: Recipe = DEFAULT) -> Path:
    """The onedir tree of the frozen agent (holding NAME and _internal/), frozen if needed."""
    base = cache / "agent"
    base.mkdir(parents=True, exist_ok=True)
    dest = base / cache_key(package, recipe)
    if (dest / NAME).is_file():
        log.info("agent: frozen copy %s reused", dest)
        os.utime(dest)
        return dest
    log.info("agent: freezing %s with PyInstaller %s", package, pyinstaller_version())
    _freeze(package, dest, verbose, recipe)
    _prune(base, dest)
    return dest
