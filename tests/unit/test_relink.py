"""What the freeze leaves out of the agent: built-in modules it never imports (libpython
linked again) and the standard library PyInstaller need not walk."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.initrd import build as initrd_build
from mkinitrd_ssi.initrd import elf, freeze, relink

SETUP = """\
# Debian's Setup.local (excerpt)
*static*
_bisect _bisectmodule.c
_elementtree _elementtree.c -lexpat
_blake2 _blake2/blake2module.c _blake2/blake2b_impl.c _blake2/blake2s_impl.c
CFLAGS=-O2
zlib  zlibmodule.c -lz
"""

CONFIG_C = """\
extern PyObject* PyInit__bisect(void);
extern PyObject* PyInit_zlib(void);
struct _inittab _PyImport_Inittab[] = {
    {"_bisect", PyInit__bisect},
    {"zlib", PyInit_zlib},
    {0, 0}
};
"""


def test_setup_lines_give_objects_and_libraries() -> None:
    got = {m.name: m for m in relink.linked_in(SETUP)}
    assert sorted(got) == ["_bisect", "_blake2", "_elementtree", "zlib"]
    assert got["_blake2"].objects == ("blake2module.o", "blake2b_impl.o", "blake2s_impl.o")
    assert got["_elementtree"].libs == ("-lexpat",)
    assert got["zlib"].objects == ("zlibmodule.o",)


def test_config_c_loses_exactly_the_dropped_modules() -> None:
    out = relink._without(CONFIG_C, ["_bisect"])
    assert "_bisect" not in out
    assert '{"zlib", PyInit_zlib},' in out and "PyInit_zlib(void);" in out


def test_config_c_it_does_not_know_is_an_error() -> None:
    with pytest.raises(SsiError, match="listed 0 times"):
        relink._without(CONFIG_C, ["unicodedata"])


def test_without_debians_files_python_is_kept_as_it_is(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(relink, "inputs", lambda: None)
    with caplog.at_level(logging.INFO, logger="ssi"):
        assert relink.relink(tmp_path, {"_struct"}) is None
    assert "install gcc and libpython3-dev" in caplog.text
    assert relink.stamp() == "stock libpython"


needs_debian = pytest.mark.skipif(relink.inputs() is None or relink._compiler() is None,
                                  reason="needs Debian's libpython3-dev and a C compiler")


def _exports(lib: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


@needs_debian
def test_relinked_libpython_keeps_what_the_agent_uses_and_drops_the_rest(tmp_path: Path) -> None:
    found = relink.inputs()
    assert found is not None
    out = relink.relink(tmp_path, {"_socket", "math", "select", "array"})
    assert out is not None and out.path.is_file()
    assert {"unicodedata", "pyexpat", "_elementtree", "_sha256"} <= set(out.dropped)
    assert not {"_socket", "math", "zlib", "_struct"} & set(out.dropped)
    names = _exports(out.path)
    assert {"Py_Initialize", "PyInit__socket", "PyInit_math", "PyInit_zlib"} <= names
    assert "PyInit_unicodedata" not in names and "PyInit_pyexpat" not in names
    info = elf.read_elf(out.path)
    assert info is not None and "libexpat.so.1" not in info.needed
    assert out.needed_no_more == ("libexpat.so.1",)
    assert out.path.stat().st_size < found.stock.stat().st_size - 1_000_000
    # The archive's objects are not left behind in the freeze's work directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([found.soname, "config.c"])


def test_the_analysis_skips_the_standard_library_the_trim_would_drop() -> None:
    """PyInstaller is not asked to walk what the agent never imports (half a cold freeze);
    what it keeps, its own base modules and the agent's direct imports stay in."""
    package = initrd_build.AGENT_PACKAGE
    plain = set(freeze.excludes(package))
    trimmed = set(freeze.excludes(package, keep={"re", "json", "json.decoder", "ctypes"}))
    assert plain <= trimmed
    assert {"email", "http", "pickle", "unicodedata", "zipfile"} <= trimmed - plain
    assert not {"re", "json", "ctypes", "encodings", "traceback", "os"} & trimmed
    assert not freeze.imported_names(package) & (trimmed - plain)
