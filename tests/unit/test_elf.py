"""ELF closure: PT_INTERP, DT_NEEDED, RPATH/RUNPATH/$ORIGIN, multiarch defaults, symlinks."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.initrd import elf

TRIPLET = "x86_64-linux-gnu"
needs_host = pytest.mark.skipif(
    not Path(f"/lib/{TRIPLET}/libc.so.6").exists() or shutil.which("gcc") is None,
    reason="needs an x86_64 Debian host with gcc")


def cc(args: list[str], cwd: Path) -> None:
    subprocess.run(["gcc", "-O0", "-w", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """opt/app/bin/{rpath,runpath} needing liba (in opt/app/lib), which needs libb."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("elf")
    (d / "b.c").write_text("int b(void) { return 2; }\n")
    (d / "a.c").write_text("int b(void); int a(void) { return b() + 1; }\n")
    (d / "main.c").write_text("int a(void); int main(void) { return a(); }\n")
    lib = d / "opt/app/lib"
    bindir = d / "opt/app/bin"
    lib.mkdir(parents=True)
    bindir.mkdir(parents=True)
    cc(["-shared", "-fPIC", "-Wl,-soname,libb.so.1", "-o", str(lib / "libb.so.1.0"), "b.c"], d)
    (lib / "libb.so.1").symlink_to("libb.so.1.0")
    (lib / "libb.so").symlink_to("libb.so.1")
    cc(["-shared", "-fPIC", "-Wl,-soname,liba.so", "-o", str(lib / "liba.so"), "a.c",
        f"-L{lib}", "-lb", "-Wl,--enable-new-dtags,-rpath,$ORIGIN"], d)
    cc(["-o", str(bindir / "rpath"), "main.c", f"-L{lib}", "-la", "-lb",
        "-Wl,--disable-new-dtags,-rpath,$ORIGIN/../lib"], d)
    cc(["-o", str(bindir / "runpath"), "main.c", f"-L{lib}", "-la", "-lb",
        "-Wl,--enable-new-dtags,-rpath,/opt/app/lib"], d)
    return d


@needs_host
def test_reads_interp_needed_rpath_and_runpath(built: Path) -> None:
    rp = elf.read_elf(built / "opt/app/bin/rpath")
    assert rp is not None and rp.interp == "/lib64/ld-linux-x86-64.so.2"
    assert rp.needed[0] == "liba.so" and "libc.so.6" in rp.needed
    assert (rp.rpath, rp.runpath) == (("$ORIGIN/../lib",), ())
    run = elf.read_elf(built / "opt/app/bin/runpath")
    assert run is not None and (run.rpath, run.runpath) == ((), ("/opt/app/lib",))
    assert elf.read_elf(built / "a.c") is None


@pytest.mark.parametrize("path", [sys.executable, "/bin/busybox", f"/lib/{TRIPLET}/libc.so.6",
                                  f"/lib/{TRIPLET}/libz.so.1"])
def test_has_interp_agrees_with_pyelftools(path: str) -> None:
    if not Path(path).is_file():
        pytest.skip(f"{path} not on this host")
    info = elf.read_elf(Path(path))
    assert elf.has_interp(Path(path)) == (info is not None and info.interp is not None)


def test_has_interp_of_what_is_not_elf(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"\x7fELF\x02")
    (tmp_path / "text").write_text("#!/bin/sh\n")
    assert not elf.has_interp(tmp_path / "short")
    assert not elf.has_interp(tmp_path / "text")
    assert not elf.has_interp(tmp_path / "absent")


def host_sysroot(base: Path, built: Path) -> Path:
    """A sysroot with the test programs plus the host's loader and libc, laid out as on
    merged-/usr Debian (/lib and /lib64 symlinks into /usr)."""
    root = base / "sysroot"
    shutil.copytree(built / "opt", root / "opt", symlinks=True)
    usrlib = root / "usr/lib" / TRIPLET
    usrlib.mkdir(parents=True)
    (root / "usr/lib64").mkdir()
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("usr/lib64")
    shutil.copy(f"/lib/{TRIPLET}/libc.so.6", usrlib)
    shutil.copy(f"/lib/{TRIPLET}/ld-linux-x86-64.so.2", usrlib)
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to(f"/lib/{TRIPLET}/ld-linux-x86-64.so.2")
    return root


@needs_host
@pytest.mark.parametrize("prog", ["rpath", "runpath"])
def test_closure_in_a_sysroot(tmp_path: Path, built: Path, prog: str) -> None:
    root = host_sysroot(tmp_path, built)
    got = {i.path: i for i in elf.Resolver(root).closure([f"/opt/app/bin/{prog}"])}
    # Ramdisk paths: host directory symlinks (/lib -> usr/lib) are not reproduced ...
    assert got[f"/lib/{TRIPLET}/libc.so.6"].symlink is None
    assert got[f"/lib/{TRIPLET}/libc.so.6"].source.read_bytes()[:4] == b"\x7fELF"
    # ... file symlinks are, with their targets.
    assert got["/lib64/ld-linux-x86-64.so.2"].symlink == f"/lib/{TRIPLET}/ld-linux-x86-64.so.2"
    assert f"/lib/{TRIPLET}/ld-linux-x86-64.so.2" in got
    assert got["/opt/app/lib/libb.so.1"].symlink == "libb.so.1.0"
    assert "/opt/app/lib/libb.so.1.0" in got and "/opt/app/lib/liba.so" in got
    assert "/opt/app/lib/libb.so" not in got  # the dev symlink nobody asks for
    assert f"/opt/app/bin/{prog}" not in got  # roots are the caller's


@needs_host
def test_missing_libraries_are_all_named(tmp_path: Path, built: Path) -> None:
    root = host_sysroot(tmp_path, built)
    (root / "opt/app/lib/libb.so.1.0").unlink()
    (root / f"usr/lib/{TRIPLET}/libc.so.6").unlink()
    with pytest.raises(SsiError) as e:
        elf.Resolver(root).closure(["/opt/app/bin/rpath"])
    assert "libb.so.1 (needed by /opt/app/lib/liba.so)" in str(e.value)
    assert "libc.so.6 (needed by /opt/app/bin/rpath)" in str(e.value)


def elf32(path: Path) -> None:
    """A minimal, valid 32-bit x86 ELF header: same name, wrong class."""
    ident = b"\x7fELF" + bytes([1, 1, 1]) + b"\0" * 9
    path.write_bytes(ident + struct.pack("<HHIIIIIHHHHHH", 3, 3, 1, 0, 0, 0, 0, 52, 32, 0,
                                         40, 0, 0))


@needs_host
def test_search_order_rpath_library_path_runpath_defaults(tmp_path: Path) -> None:
    root = tmp_path
    lib = Path(f"/lib/{TRIPLET}/libc.so.6")
    for d in ("a", "b", "c", f"usr/lib/{TRIPLET}"):
        (root / d).mkdir(parents=True)
        shutil.copy(lib, root / d / "libx.so")
    elf32(root / "w32.so")
    (root / "wrong").mkdir()
    elf32(root / "wrong" / "libx.so")
    me = elf.read_elf(lib)
    assert me is not None
    info = elf.ElfInfo(me.elfclass, me.machine, None, ("libx.so",), ("/a",), ())
    r = elf.Resolver(root, library_path=["/c"])
    assert r.find("libx.so", "/bin/p", info, ()) == "/a/libx.so"  # RPATH first
    no_rpath = elf.ElfInfo(me.elfclass, me.machine, None, (), (), ("/b",))
    assert r.find("libx.so", "/bin/p", no_rpath, ()) == "/c/libx.so"  # LD_LIBRARY_PATH
    both = elf.ElfInfo(me.elfclass, me.machine, None, (), ("/a",), ("/b",))
    # RPATH is ignored when RUNPATH is present.
    assert elf.Resolver(root).find("libx.so", "/bin/p", both, ()) == "/b/libx.so"
    bare = elf.ElfInfo(me.elfclass, me.machine, None, (), ("/wrong",), ())
    assert elf.Resolver(root).find("libx.so", "/bin/p", bare, ()) == \
        f"/usr/lib/{TRIPLET}/libx.so"  # the 32-bit one is skipped, as ld.so does
    origin = elf.ElfInfo(me.elfclass, me.machine, None, (), (), ("$ORIGIN/../b", "${ORIGIN}/x"))
    assert elf.Resolver(root).find("libx.so", "/a/prog", origin, ()) == "/b/libx.so"
    assert elf.Resolver(root).find("libnone.so", "/a/prog", origin, ()) is None


def test_default_dirs_are_debian_multiarch_first() -> None:
    info = elf.ElfInfo(64, "EM_X86_64", None, (), (), ())
    assert elf.default_dirs(info) == [f"/lib/{TRIPLET}", f"/usr/lib/{TRIPLET}", "/lib64",
                                      "/usr/lib64", "/lib", "/usr/lib"]
    assert elf._expand("$ORIGIN/$LIB/${PLATFORM}", "/o", info) == f"/o/lib/{TRIPLET}/x86_64"


@needs_host
def test_the_running_python_closure_has_loader_and_libc() -> None:
    exe = str(Path(sys.executable).resolve())
    got = {i.path for i in elf.Resolver().closure([exe], extra=elf.DLOPENED_BY_LIBC)}
    assert {"/lib64/ld-linux-x86-64.so.2", f"/lib/{TRIPLET}/libc.so.6",
            f"/lib/{TRIPLET}/libgcc_s.so.1"} <= got


def test_corrupt_elf_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"\x7fELF" + b"\xff" * 10)
    with pytest.raises(SsiError, match="cannot read ELF"):
        elf.read_elf(bad)
