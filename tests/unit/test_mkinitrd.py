"""mkinitrd.ssi end to end, in-process, with the real frozen agent and a small module tree.

The frozen agent is built once per session (cached under $SSI_CACHE when set, as
`make` sets it, so later sessions reuse it).
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from mkinitrd_ssi.initrd import build as initrd_build
from mkinitrd_ssi.initrd import freeze, image, kmod, relink
from mkinitrd_ssi.initrd import skel as initrd_skel
from mkinitrd_ssi.initrd.contents import add_modules
from mkinitrd_ssi.initrd.cpio import Archive, Member
from mkinitrd_ssi.initrd.image import Compression
from mkinitrd_ssi.mkinitrd import main
from tests.unit.fake_ko import fake_ko

KVER = "6.1.0-test-amd64"
TABLE = """\
# node  ip              mac                  local  bootdev
1       10.77.0.11/24   52:54:00:12:34:01    0      -
2       10.77.0.12/24   52:54:00:12:34:02    1      LABEL=ssiboot
"""


@pytest.fixture(scope="session")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of the agent's sources: they may be edited while the tests run."""
    dest = tmp_path_factory.mktemp("agent") / "linuxrc_agent"
    shutil.copytree(initrd_build.AGENT_PACKAGE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory, agent: Path) -> Path:
    env = os.environ.get("SSI_CACHE")
    path = Path(env) if env else tmp_path_factory.mktemp("ssi-cache")
    freeze.frozen_agent(agent, path)
    return path


@pytest.fixture(autouse=True)
def env(cache: Path, agent: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(initrd_build, "AGENT_PACKAGE", agent)
    monkeypatch.setenv("SSI_CACHE", str(cache))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    # A cold cache costs seconds of compression; what is tested holds at any level.
    monkeypatch.setitem(image.DEFAULT_LEVEL, Compression.ZSTD, 3)
    monkeypatch.setitem(image.DEFAULT_LEVEL, Compression.GZIP, 1)


def make_moddir(base: Path) -> Path:
    d = base / "lib/modules" / KVER
    (d / "kernel/drivers/virtio").mkdir(parents=True)
    (d / "kernel/drivers/block").mkdir(parents=True)
    (d / "kernel/drivers/virtio/virtio_ring.ko").write_bytes(fake_ko("ring"))
    (d / "kernel/drivers/virtio/virtio.ko").write_bytes(fake_ko("virtio"))
    blk = fake_ko("blk", {"firmware": ["vblk/fw.bin", "vblk/optional.bin"]})
    (d / "kernel/drivers/block/virtio_blk.ko.xz").write_bytes(lzma.compress(blk))
    (d / "kernel/drivers/block/loop.ko").write_bytes(fake_ko("loop"))
    (d / "modules.dep").write_text(
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko "
        "kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/block/loop.ko:\n")
    (d / "modules.alias").write_text("alias virtio:d00000002v* virtio_blk\n")
    (d / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    return d


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc/ssitab").write_text(TABLE)
    make_moddir(r)
    return r


def build(root: Path, *extra: str) -> int:
    return main(["--root", str(root), "--kver", KVER, *extra])


def members(path: Path) -> dict[str, Member]:
    return {m.path: m for m in image.read_image(path.read_bytes())}


def test_ramdisk_layout(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(root, "--compress", "none") == 0
    out = root / "boot/initrd-ssi.img"
    got = members(out)
    assert got["init"].target == "linuxrc"
    assert got["linuxrc"].target == "ssi/agent/linuxrc"
    assert got["ssi/agent/linuxrc"].mode & 0o111
    assert any(p.startswith("ssi/agent/_internal/") for p in got)
    assert got["lib64/ld-linux-x86-64.so.2"].target == "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert stat.S_ISREG(got["lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"].mode)
    assert "lib/x86_64-linux-gnu/libc.so.6" in got
    assert got["bin/sh"].target == "busybox" and got["bin/busybox"].size > 100_000
    devices = {p: (stat.S_IFMT(m.mode), m.rdev) for p, m in got.items() if p.startswith("dev/")}
    assert devices == {"dev/console": (stat.S_IFCHR, (5, 1)), "dev/null": (stat.S_IFCHR, (1, 3)),
                       "dev/urandom": (stat.S_IFCHR, (1, 9)),
                       "dev/random": (stat.S_IFCHR, (1, 8)),
                       "dev/kmsg": (stat.S_IFCHR, (1, 11))}
    for d in ("proc", "sys", "dev", "run", "tmp", "newroot", "mnt"):
        assert stat.S_ISDIR(got[d].mode), d
    assert got["tmp"].mode & stat.S_ISVTX
    assert got["etc/ssitab"].data == TABLE.encode()
    assert got["etc/ssi/kver"].data == f"{KVER}\n".encode()
    base = f"lib/modules/{KVER}"
    assert got["etc/ssi/modules"].data.decode().splitlines() == [
        f"/{base}/kernel/drivers/virtio/virtio_ring.ko", f"/{base}/kernel/drivers/virtio/virtio.ko",
        f"/{base}/kernel/drivers/block/virtio_blk.ko"]
    blk = got[f"{base}/kernel/drivers/block/virtio_blk.ko"].data  # decompressed
    assert blk[:4] == b"\x7fELF" and b"vblk/fw.bin" in blk
    assert f"{base}/kernel/drivers/block/loop.ko" not in got
    assert got[f"{base}/modules.alias"].data.startswith(b"alias virtio:")
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in got.values())
    summary = capsys.readouterr().out.splitlines()[0]
    assert summary.startswith(f"{out}: written, ") and "3 modules" in summary
    assert " s" in summary and "files" in summary
    assert (root / "etc/dhcpd.conf").is_file()  # mkdhcpd ran, without a dhcpd.proto


@pytest.mark.skipif(relink.inputs() is None or relink._compiler() is None,
                    reason="needs Debian's libpython3-dev and a C compiler")
def test_the_agents_libpython_has_no_module_it_never_imports(root: Path, tmp_path: Path) -> None:
    """The image carries the relinked libpython (relink.py), not Debian's 7.7 MB one, and
    no libexpat, which only the dropped pyexpat needed."""
    assert build(root, "--compress", "none") == 0
    got = members(root / "boot/initrd-ssi.img")
    lib = tmp_path / "libpython.so"
    found = relink.inputs()
    assert found is not None
    lib.write_bytes(got[f"ssi/agent/_internal/{found.soname}"].data)
    exports = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                             text=True, check=True).stdout
    assert "PyInit__socket" in exports and "PyInit_unicodedata" not in exports
    assert lib.stat().st_size < 6_500_000
    assert not any("libexpat" in p for p in got)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_gnu_cpio_extracts_a_closure_the_loader_accepts(root: Path, tmp_path: Path) -> None:
    """Extract with GNU cpio, then ask the extracted ld.so (without running anything) to
    resolve the agent's libraries: every one must come from inside the ramdisk."""
    assert build(root, "--compress", "none", "--no-dhcpd") == 0
    dest = tmp_path / "x"
    dest.mkdir()
    data = (root / "boot/initrd-ssi.img").read_bytes()
    proc = subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=data,
                          cwd=dest, capture_output=True)
    assert proc.returncode == 0 or os.geteuid() != 0, proc.stderr  # mknod needs root
    assert (dest / "etc/ssitab").read_text() == TABLE
    loader = dest / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    internal = dest / "ssi/agent/_internal"
    libpath = f"{internal}:{dest}/lib/x86_64-linux-gnu"
    elves = [dest / "ssi/agent/linuxrc", *internal.rglob("*.so*")]
    for f in elves:
        if f.is_symlink() or f.read_bytes()[:4] != b"\x7fELF":
            continue
        listing = subprocess.run([str(loader), "--inhibit-cache", "--library-path", libpath,
                                  "--list", str(f)], capture_output=True, text=True, check=True)
        for line in listing.stdout.splitlines():
            if "=>" in line:
                resolved = line.split("=>")[1].split("(")[0].strip()
                assert resolved.startswith(str(dest)), f"{f.name}: {line.strip()}"


def test_two_builds_are_byte_identical(root: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    assert build(root, "-o", str(a), "--no-dhcpd") == 0
    os.utime(root / "etc/ssitab", (123456, 123456))  # metadata is not content
    assert build(root, "-o", str(b), "--no-dhcpd") == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[:4] == image.ZSTD_MAGIC


def test_gzip_builds_are_byte_identical_too(root: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    for out in (a, b):
        assert build(root, "-o", str(out), "--compress", "gzip", "--no-dhcpd") == 0
    assert a.read_bytes() == b.read_bytes() and a.read_bytes()[:2] == image.GZIP_MAGIC


def test_source_date_epoch(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert build(root, "--compress", "none", "--no-dhcpd") == 0
    mtimes = {m.mtime for m in members(root / "boot/initrd-ssi.img").values()}
    assert max(mtimes) <= 1700000000 and max(mtimes) > 0
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert build(root, "--no-dhcpd") == 1


def test_invalid_ssitab_writes_nothing(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "etc/ssitab").write_text(TABLE + "3 10.77.0.300/24 52:54:00:12:34:03 0 -\n")
    assert build(root) == 1
    err = capsys.readouterr().err
    assert f"{root}/etc/ssitab:4:" in err and "nothing written" in err
    assert not (root / "boot").exists() and not (root / "etc/dhcpd.conf").exists()


def test_dry_run_writes_nothing(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(root, "-n") == 0
    assert "would write" in capsys.readouterr().out
    assert not (root / "boot").exists() and not (root / "etc/dhcpd.conf").exists()


def test_unchanged_image_is_not_rewritten(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(root, "--no-dhcpd") == 0
    img = root / "boot/initrd-ssi.img"
    before = img.stat()
    assert build(root, "--no-dhcpd") == 0
    assert ": unchanged, " in capsys.readouterr().out
    assert (img.stat().st_ino, img.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_ssitab_edit_neither_refreezes_nor_recompresses_much(
        root: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / "cache"  # the frozen agent shared, the segments this test's own
    private.mkdir()
    (private / "agent").symlink_to(cache / "agent")
    monkeypatch.setenv("SSI_CACHE", str(private))
    assert build(root, "--no-dhcpd") == 0
    with (root / "etc/ssitab").open("a") as f:
        f.write("3 10.77.0.13/24 52:54:00:12:34:03 0 -\n")

    def no_freeze(*args: object, **kwargs: object) -> None:
        raise AssertionError("re-froze the agent after an ssitab edit")

    monkeypatch.setattr(freeze, "_freeze", no_freeze)
    caches: list[image.SegmentCache] = []
    real = image.SegmentCache

    def spy(directory: Path | None) -> image.SegmentCache:
        caches.append(real(directory))
        return caches[-1]

    monkeypatch.setattr(image, "SegmentCache", spy)
    assert build(root, "--no-dhcpd") == 0
    assert caches[0].misses == 1 and caches[0].hits >= 2
    assert b"10.77.0.13" in members(root / "boot/initrd-ssi.img")["etc/ssitab"].data


def test_no_busybox(root: Path) -> None:
    assert build(root, "--no-busybox", "--compress", "none", "--no-dhcpd") == 0
    got = members(root / "boot/initrd-ssi.img")
    assert "bin/busybox" not in got and "bin/sh" not in got


def test_a_dynamic_busybox_brings_its_libraries(root: Path, tmp_path: Path) -> None:
    # Debian's busybox package links libc and libresolv; any dynamic program stands in.
    dynamic = Path(shutil.which("true") or "/bin/true").resolve()
    assert build(root, "--busybox", str(dynamic), "--compress", "none", "--no-dhcpd") == 0
    got = members(root / "boot/initrd-ssi.img")
    assert got["bin/busybox"].data == dynamic.read_bytes()
    assert got["bin/busybox"].mode & 0o111 and got["bin/sh"].target == "busybox"
    assert "lib/x86_64-linux-gnu/libc.so.6" in got
    assert build(root, "--busybox", str(tmp_path / "none"), "--no-dhcpd") == 1


def test_add_and_omit_modules(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(root, "--add-modules", "loop", "--omit-modules", "virtio_blk,nope",
                 "--compress", "none", "--no-dhcpd") == 0
    order = members(root / "boot/initrd-ssi.img")["etc/ssi/modules"].data.decode()
    assert order == f"/lib/modules/{KVER}/kernel/drivers/block/loop.ko\n"
    capsys.readouterr()
    assert build(root, "--add-modules", "loop", "--add-modules", "e1000", "--no-dhcpd") == 1
    assert "e1000" in capsys.readouterr().err


def test_absent_default_modules_are_a_verbose_note(root: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert build(root, "-v", "--compress", "none", "--no-dhcpd") == 0
    err = capsys.readouterr().err
    assert "skipped: virtio_net " in err and "built into" in err and "ext4" in err


def test_moddir_and_missing_kernel(root: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    other = make_moddir(tmp_path / "unpacked")
    (root / "lib").rename(tmp_path / "gone")
    assert main(["--root", str(root), "--moddir", str(other), "--compress", "none",
                 "--no-dhcpd"]) == 0
    assert build(root, "--no-dhcpd") == 1
    err = capsys.readouterr().err
    assert "no such module directory" in err and "--moddir" in err


def test_skel_is_copied_but_never_overrides(root: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    skel = tmp_path / "skel"
    (skel / "etc").mkdir(parents=True)
    (skel / "etc/motd").write_text("welcome\n")
    (skel / "etc/ssitab").write_text("stale\n")
    (skel / "etc/.gitkeep").write_text("")
    (skel / "bin").mkdir()
    (skel / "bin/hello").write_text("#!/bin/sh\necho hi\n")
    (skel / "bin/hello").chmod(0o775)
    (skel / "etc/motd").chmod(0o600)
    monkeypatch.setattr(initrd_skel, "SKEL", skel)
    assert build(root, "--compress", "none", "--no-dhcpd") == 0
    got = members(root / "boot/initrd-ssi.img")
    assert got["etc/motd"].data == b"welcome\n" and got["etc/ssitab"].data == TABLE.encode()
    # git and pip keep 0644 or 0755 only: the packaged skeleton's modes are made exactly so
    assert got["etc/motd"].mode == stat.S_IFREG | 0o644
    assert got["bin/hello"].mode == stat.S_IFREG | 0o755
    assert "etc/.gitkeep" not in got
    assert "ramdisk_skel/etc/ssitab ignored: the builder writes /etc/ssitab itself " \
        "(origin: ssitab)" in capsys.readouterr().err


def test_packaged_skeleton_is_in_every_image(root: Path) -> None:
    skel = initrd_skel.packaged_skel()
    assert skel == Path(__file__).resolve().parents[2] / "ramdisk_skel"  # the checkout's
    files = [p for p in skel.rglob("*") if p.is_file()]
    assert {"etc/passwd", "etc/group", "etc/profile"} <= {str(p.relative_to(skel))
                                                          for p in files}
    assert build(root, "--compress", "none", "--no-dhcpd") == 0
    got = members(root / "boot/initrd-ssi.img")
    origins = initrd_skel.read_manifest(list(got.values()))
    for path in files:
        rel = str(path.relative_to(skel))
        assert got[rel].data == path.read_bytes(), rel
        assert origins[rel] == "skel"
    assert got["etc/passwd"].data.startswith(b"root:x:0:0:")
    assert b"PS1=" in got["etc/profile"].data and b"'exit'" in got["etc/profile"].data


def test_missing_packaged_skeleton_is_an_error(root: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(initrd_skel, "SKEL", tmp_path / "gone")
    assert build(root, "--no-dhcpd") == 1
    err = capsys.readouterr().err
    assert "no ramdisk skeleton" in err and "reinstall ssi-boot" in err


def ramdisk_d(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / "etc/ssi/ramdisk.d" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_ramdisk_d_wins_over_the_skeleton(root: Path) -> None:
    ramdisk_d(root, {"etc/profile": "PS1='node> '\n", "etc/motd": "hello\n",
                     "usr/share/keys/admin.pub": "ssh-ed25519 AAAA admin\n"})
    (root / "etc/ssi/ramdisk.d/etc/motd").chmod(0o600)  # the admin's own modes are kept
    (root / "etc/ssi/ramdisk.d/etc/issue").symlink_to("motd")
    assert build(root, "--compress", "none", "--no-dhcpd") == 0
    got = members(root / "boot/initrd-ssi.img")
    assert got["etc/profile"].data == b"PS1='node> '\n"
    assert got["etc/motd"].data == b"hello\n" and got["etc/motd"].mode == stat.S_IFREG | 0o600
    assert got["etc/issue"].target == "motd"
    assert got["usr/share/keys/admin.pub"].data.startswith(b"ssh-ed25519")
    assert got["etc/passwd"].data.startswith(b"root:")  # the rest of the skeleton stays
    origins = initrd_skel.read_manifest(list(got.values()))
    assert origins["etc/profile"] == "ramdisk.d ROOT/etc/ssi/ramdisk.d/etc/profile"
    assert origins["usr/share"] == "ramdisk.d ROOT/etc/ssi/ramdisk.d/usr/share"
    assert origins["etc/passwd"] == "skel"


def test_ramdisk_d_never_replaces_what_the_builder_writes(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ramdisk_d(root, {"etc/ssitab": "stale\n", "etc/ssi/kver": "9.9\n", "init": "#!/bin/sh\n",
                     "etc/motd": "hello\n"})
    assert build(root, "--compress", "none", "--no-dhcpd") == 0
    got = members(root / "boot/initrd-ssi.img")
    assert got["etc/ssitab"].data == TABLE.encode()
    assert got["etc/ssi/kver"].data == f"{KVER}\n".encode()
    assert got["init"].target == "linuxrc" and got["etc/motd"].data == b"hello\n"
    err = capsys.readouterr().err
    assert (f"{root}/etc/ssi/ramdisk.d/etc/ssitab ignored: the builder writes /etc/ssitab "
            "itself (origin: ssitab)") in err
    assert "ramdisk.d/etc/ssi/kver ignored" in err and "ramdisk.d/init ignored" in err
    assert "etc/motd" not in err


def test_skel_option_layers_instead_of_ramdisk_d(root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ramdisk_d(root, {"etc/motd": "from ramdisk.d\n"})
    first, second = tmp_path / "first", tmp_path / "second"
    for d, text in ((first, "first\n"), (second, "second\n")):
        (d / "etc").mkdir(parents=True)
        (d / "etc/profile").write_text(text)
    (first / "etc/only-first").write_text("1\n")
    assert build(root, "--skel", str(first), "--skel", str(second), "--compress", "none",
                 "--no-dhcpd") == 0
    got = members(root / "boot/initrd-ssi.img")
    assert got["etc/profile"].data == b"second\n" and got["etc/only-first"].data == b"1\n"
    assert "etc/motd" not in got  # --skel replaces ROOT/etc/ssi/ramdisk.d
    origins = initrd_skel.read_manifest(list(got.values()))
    assert origins["etc/profile"] == f"--skel {second}/etc/profile"
    assert build(root, "--skel", str(tmp_path / "nope"), "--no-dhcpd") == 1
    assert "nope: no such directory (from --skel)" in capsys.readouterr().err
    main(["--help"])
    assert "--skel DIR" in capsys.readouterr().out


def test_a_file_over_a_directory_of_an_earlier_layer_is_an_error(
        root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "etc/x").mkdir(parents=True)
    (first / "etc/x/y").write_text("y\n")
    (second / "etc").mkdir(parents=True)
    (second / "etc/x").write_text("x\n")
    assert build(root, "--skel", str(first), "--skel", str(second), "--no-dhcpd") == 1
    assert f"{second}/etc/x: a file where an earlier layer has the directory /etc/x" \
        in capsys.readouterr().err


def test_image_does_not_depend_on_where_root_is(root: Path, tmp_path: Path) -> None:
    ramdisk_d(root, {"etc/motd": "hello\n"})
    elsewhere = tmp_path / "elsewhere" / "root"
    shutil.copytree(root, elsewhere, symlinks=True)
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    assert build(root, "-o", str(a), "--no-dhcpd") == 0
    assert build(elsewhere, "-o", str(b), "--no-dhcpd") == 0
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("how", ["zstd", "gzip", "none"])
def test_list(root: Path, how: str, capsys: pytest.CaptureFixture[str]) -> None:
    """As cpio -t and lsinitramfs print them: one path a line, no leading slash."""
    assert build(root, "--compress", how, "--no-dhcpd") == 0
    capsys.readouterr()
    assert main(["--list", str(root / "boot/initrd-ssi.img")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == sorted(members(root / "boot/initrd-ssi.img"), key=os.fsencode)
    assert {"init", "linuxrc", "dev/console", "etc/ssitab", "etc/passwd",
            initrd_skel.MANIFEST} <= set(lines)


def test_list_verbose_says_where_each_member_came_from(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "etc/ssi/ramdisk.d/etc").mkdir(parents=True)
    (root / "etc/ssi/ramdisk.d/etc/motd").write_text("hello\n")
    (root / "lib/firmware/vblk").mkdir(parents=True)
    (root / "lib/firmware/vblk/fw.bin").write_bytes(b"FW")
    assert build(root, "--no-dhcpd") == 0
    capsys.readouterr()
    assert main(["--list", str(root / "boot/initrd-ssi.img"), "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[3]: line.split() for line in lines}
    base = f"lib/modules/{KVER}"
    assert "lrwxrwxrwx          7 agent     init -> linuxrc" in lines
    assert "-rw-r--r--          6 ramdisk.d etc/motd  (ROOT/etc/ssi/ramdisk.d/etc/motd)" in lines
    assert rows["ssi/agent/linuxrc"][2] == "agent"
    assert rows["dev/console"][:4] == ["crw-------", "5,1", "generated", "dev/console"]
    assert rows["etc/ssitab"] == ["-rw-r--r--", str(len(TABLE)), "ssitab", "etc/ssitab"]
    assert rows["etc/passwd"][2] == "skel" and rows["etc/ssi/README"][2] == "skel"
    assert rows["bin/busybox"][2] == "busybox"
    assert rows["lib/x86_64-linux-gnu/libc.so.6"][2] == "library"
    assert rows[f"{base}/kernel/drivers/block/virtio_blk.ko"][2] == "module"
    assert rows[f"{base}/modules.dep"][2] == "generated"
    assert rows["etc/ssi/modules"][2] == "generated"
    assert rows["lib/firmware/vblk/fw.bin"][2] == "firmware"
    assert rows[initrd_skel.MANIFEST][2] == "generated"
    assert [path for path, row in rows.items() if row[2] == "-"] == []
    assert len(lines) == len(members(root / "boot/initrd-ssi.img"))


def test_list_verbose_of_an_image_without_manifest(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    arc = Archive()
    arc.data("etc/hello", b"hi\n")
    img = tmp_path / "other.img"
    img.write_bytes(image.build(list(arc.entries.values()), Compression.NONE, 0))
    assert main(["--list", str(img), "-v"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["drwxr-xr-x          0 - etc",
                                "-rw-r--r--          3 - etc/hello"]
    assert "no /etc/ssi/image.manifest" in err


def test_list_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list", str(tmp_path / "none.img")]) == 1
    (tmp_path / "junk.img").write_bytes(b"junk")
    assert main(["--list", str(tmp_path / "junk.img")]) == 1
    assert "unknown data" in capsys.readouterr().err


def test_agent_without_entry_script_is_an_error(root: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pkg = tmp_path / "pkg" / "linuxrc_agent"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.setattr(initrd_build, "AGENT_PACKAGE", pkg)
    assert build(root, "--no-dhcpd") == 1
    assert "__main__.py: no such file" in capsys.readouterr().err


def test_compress_level(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(root, "--compress-level", "30", "--no-dhcpd") == 1
    assert "level 30 out of range for zstd" in capsys.readouterr().err
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    assert build(root, "--compress-level", "1", "-o", str(a), "--no-dhcpd") == 0
    assert build(root, "--compress-level", "5", "-o", str(b), "--no-dhcpd") == 0
    assert a.read_bytes() != b.read_bytes()
    assert members(a).keys() == members(b).keys()


def test_firmware_the_modules_name_is_shipped(root: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (root / "lib/firmware/vblk").mkdir(parents=True)
    (root / "lib/firmware/vblk/fw.bin.zst").write_bytes(b"FW")
    assert build(root, "-v", "--compress", "none", "--no-dhcpd") == 0
    got = members(root / "boot/initrd-ssi.img")
    assert got["lib/firmware/vblk/fw.bin.zst"].data == b"FW"
    assert "firmware not in" in capsys.readouterr().err  # the optional one, a -v note


def test_the_module_selection_is_reused_until_the_module_directory_changes(
        root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "sel-cache"
    moddir = root / "lib/modules" / KVER
    monkeypatch.setattr(kmod, "DEFAULT_MODULES", ("virtio_blk",))

    def carried() -> tuple[list[str], bytes]:
        arc = Archive()
        add_modules(arc, moddir, cache, root / "lib/firmware", ["loop"], [])
        return sorted(arc.entries), arc.entries[f"lib/modules/{KVER}/modules.dep"].read()

    first = carried()
    index_made = []
    real_index = kmod.ModuleIndex
    monkeypatch.setattr(kmod, "ModuleIndex", lambda d: index_made.append(d) or real_index(d))
    assert carried() == first and index_made == []  # nothing read but the stamps
    # depmod again, a module having gained a dependency:
    (moddir / "kernel/drivers/block/nbd.ko").write_bytes(fake_ko("nbd"))
    dep = (moddir / "modules.dep").read_text().replace(
        "block/loop.ko:", "block/loop.ko: kernel/drivers/block/nbd.ko")
    (moddir / "modules.dep").write_text(dep + "kernel/drivers/block/nbd.ko:\n")
    paths, _ = carried()
    assert index_made == [moddir] and f"lib/modules/{KVER}/kernel/drivers/block/nbd.ko" in paths
