"""The boot agent frozen with PyInstaller (onedir), cached by a hash of what goes into it.

Onedir, not onefile: a onefile bootloader stays PID 1 with the Python code as
its child, so switch_root and reaping cannot work (docs/architecture.md, "The ramdisk"). The cache key
covers the agent's sources, PyInstaller's and Python's versions and our own
options, and nothing else, so a rebuild after an ssitab edit never re-freezes.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path

import xxhash

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.run import log, run

NAME = "linuxrc"
# Bump when the freezing recipe changes in a way the key does not see.
RECIPE = "2"
KEEP = 4  # frozen agents kept in the cache (newest first)

# What the agent (standard library, ctypes, xxhash) never imports but PyInstaller would
# pull in through optional imports: the large ones are OpenSSL (_hashlib, _ssl: ~5 MB),
# the CJK codecs, decimal and the compression modules. Any of these that the agent does
# import directly is kept (see excludes()).
EXCLUDES = (
    "tkinter", "_tkinter", "turtle", "turtledemo", "idlelib", "lib2to3", "pydoc",
    "pydoc_data", "doctest", "unittest", "test", "ensurepip", "venv", "distutils",
    "setuptools", "pkg_resources", "pip", "sqlite3", "_sqlite3", "dbm", "_dbm", "_gdbm",
    "curses", "_curses", "_curses_panel", "readline", "ssl", "_ssl", "_hashlib", "_decimal",
    "xmlrpc", "xml", "pyexpat", "lzma", "_lzma", "bz2", "_bz2", "_multibytecodec",
    "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr", "_codecs_tw",
    "asyncio", "multiprocessing",
)


_IMPORT_RE = re.compile(rb"^[ \t]*(?:from|import)[ \t]+([A-Za-z_]\w*)", re.MULTILINE)


def sources(package: Path) -> list[Path]:
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def imported_names(package: Path) -> set[str]:
    """Top-level module names the package's sources import, at any depth in the code."""
    names: set[str] = set()
    for path in sources(package):
        try:
            tree = ast.parse(path.read_bytes(), str(path))
        except SyntaxError as e:
            raise SsiError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def excludes(package: Path) -> list[str]:
    used = imported_names(package)
    return [m for m in EXCLUDES if m not in used]


def pyinstaller_version() -> str:
    try:
        return importlib.metadata.version("pyinstaller")
    except importlib.metadata.PackageNotFoundError:
        raise SsiError("PyInstaller is not installed for " + sys.executable,
                       hint="pip install pyinstaller (make venv does)") from None


def _versions(names: set[str], package: str) -> list[str]:
    """name==version of each installed distribution among names (xxhash, say)."""
    wanted = sorted(n for n in names if n not in sys.stdlib_module_names and n != package)
    if not wanted:
        return []
    dists = importlib.metadata.packages_distributions()
    return sorted({f"{d}=={importlib.metadata.version(d)}" for n in wanted
                   for d in dists.get(n, [])})


def cache_key(package: Path) -> str:
    """Hash of the sources, the tools' versions and the recipe. Cheap on purpose (it runs
    on every build): imports are found with a regex rather than parsed; the excludes
    need no scan, being a function of the sources and EXCLUDES, both hashed."""
    h = xxhash.xxh3_128()
    names: set[str] = set()
    for path in sources(package):
        data = path.read_bytes()
        names.update(m.decode() for m in _IMPORT_RE.findall(data))
        h.update(str(path.relative_to(package)).encode() + b"\0" + data + b"\0")
    # Upgrading a library the agent imports (xxhash) must re-freeze it too.
    for part in (RECIPE, pyinstaller_version(), sys.version, platform.machine(),
                 " ".join(EXCLUDES), " ".join(_versions(names, package.name))):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _freeze(package: Path, dest: Path, verbose: bool) -> None:
    entry = package / "__main__.py"
    if not entry.is_file():
        raise SsiError(f"{entry}: no such file", hint="the agent's entry script is missing")
    work = Path(tempfile.mkdtemp(prefix=".freeze-", dir=dest.parent))
    try:
        argv = [sys.executable, "-m", "PyInstaller", "--onedir", "--strip", "--noconfirm",
                "--name", NAME, "--distpath", str(work / "dist"),
                "--workpath", str(work / "build"), "--specpath", str(work),
                "--paths", str(package.parent), "--collect-submodules", package.name,
                "--log-level", "INFO" if verbose else "WARN"]
        for module in excludes(package):
            argv += ["--exclude-module", module]
        # A fixed hash seed makes PyInstaller's output reproducible (set ordering in the
        # bytecode it writes), so a re-freeze of the same sources gives the same image.
        run([*argv, str(entry)], capture=not verbose,
            env={**os.environ, "PYTHONHASHSEED": "0"})
        built = work / "dist" / NAME
        if not (built / NAME).is_file():
            raise SsiError(f"PyInstaller left no {built / NAME}")
        try:
            built.rename(dest)
        except OSError:
            if not (dest / NAME).is_file():  # else a parallel build got there first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prune(base: Path, keep: Path) -> None:
    entries = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def frozen_agent(package: Path, cache: Path, *, verbose: bool = False) -> Path:
    """The onedir tree of the frozen agent (holding NAME and _internal/), frozen if needed."""
    base = cache / "agent"
    base.mkdir(parents=True, exist_ok=True)
    dest = base / cache_key(package)
    if (dest / NAME).is_file():
        log.info("agent: frozen copy %s reused", dest)
        os.utime(dest)
        return dest
    log.info("agent: freezing %s with PyInstaller %s", package, pyinstaller_version())
    _freeze(package, dest, verbose)
    _prune(base, dest)
    return dest
