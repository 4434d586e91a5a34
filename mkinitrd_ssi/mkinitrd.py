"""mkinitrd.ssi: the node ramdisk: frozen agent, its libraries, busybox, modules, ssitab.

Then, as the seed did, mkdhcpd.ssi: whoever rebuilds the ramdisk after an
ssitab edit wants the DHCP server to know the new nodes too.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import linuxrc_agent
from mkinitrd_ssi import cli, elf, freeze, image, kmod, mkdhcpd
from mkinitrd_ssi.atomic import replace_if_changed
from mkinitrd_ssi.cpio import Archive
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.image import Compression
from mkinitrd_ssi.run import log

PROG = "mkinitrd.ssi"
AGENT_DIR = "/ssi/agent"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: no libraries, every applet
SKEL = Path(__file__).resolve().parent.parent / "ramdisk_skel"
AGENT_PACKAGE = Path(linuxrc_agent.__file__).resolve().parent
DIRS = ("bin", "dev", "etc", "etc/ssi", "lib", "mnt", "newroot", "proc", "run", "sys")
# As gen_init_cpio ships them: a frozen Python dies without /dev/urandom before devtmpfs.
DEVICES = (("dev/console", 5, 1, 0o600), ("dev/null", 1, 3, 0o666),
           ("dev/urandom", 1, 9, 0o666), ("dev/random", 1, 8, 0o666),
           ("dev/kmsg", 1, 11, 0o644))


def _comma_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = cli.common_parser(PROG, "Build the node ramdisk: the frozen boot agent as /init "
                               "(and /linuxrc), its shared libraries, busybox, the kernel "
                               "modules a node needs and the node table; then run mkdhcpd.ssi.")
    kernel = parser.add_mutually_exclusive_group()
    kernel.add_argument("--kver", metavar="KVER",
                        help="kernel whose modules to ship, from ROOT/lib/modules/KVER "
                        "(default: the running kernel's)")
    kernel.add_argument("--moddir", type=Path, metavar="DIR",
                        help="an unpacked kernel's lib/modules/KVER directory")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="the image (default: ROOT/boot/initrd-ssi.img)")
    parser.add_argument("--compress", type=Compression, choices=list(Compression),
                        default=Compression.ZSTD, metavar="{zstd,gzip,none}",
                        help="compression (default: zstd); 'none' writes one single "
                        "archive, the others a few concatenated ones")
    parser.add_argument("--compress-level", type=int, metavar="N",
                        help="zstd 1-19 (default 9) or gzip 1-9 (default 6)")
    parser.add_argument("--add-modules", action="append", type=_comma_list, default=[],
                        metavar="M1,M2", help="modules (or aliases) to ship besides the "
                        "default set; one this kernel lacks is an error")
    parser.add_argument("--omit-modules", action="append", type=_comma_list, default=[],
                        metavar="M1,M2", help="modules to leave out (and those needing them)")
    parser.add_argument("--no-busybox", action="store_true",
                        help="no busybox: no rescue shell in the ramdisk")
    parser.add_argument("--no-dhcpd", action="store_true", help="do not run mkdhcpd.ssi after")
    parser.add_argument("--list", type=Path, metavar="IMAGE",
                        help="list what IMAGE holds (mode, size, path, link target); build nothing")
    parser.epilog = ("environment: SSI_CACHE is where the frozen agent and compressed parts "
                     "are kept (default ~/.cache/ssi-boot); SOURCE_DATE_EPOCH caps every "
                     "mtime in the image (default 0).")
    return parser


def cache_root() -> Path:
    env = os.environ.get("SSI_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ssi-boot"


def source_date_epoch() -> int:
    text = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        value = int(text)
    except ValueError:
        raise SsiError(f"SOURCE_DATE_EPOCH={text!r} is not a number of seconds") from None
    if value < 0:
        raise SsiError(f"SOURCE_DATE_EPOCH={text!r} is negative")
    return value


def _moddir(args: argparse.Namespace, root: cli.Root) -> Path:
    if args.moddir is not None:
        moddir: Path = args.moddir
        where = "--moddir"
    else:
        kver = args.kver or os.uname().release
        moddir = root(f"/lib/modules/{kver}")
        where = "--kver" if args.kver else "the running kernel"
    if not moddir.is_dir():
        raise SsiError(f"{moddir}: no such module directory (from {where})",
                       hint="pass --kver KVER (ROOT/lib/modules/KVER) or --moddir "
                       "DIR (an unpacked kernel's lib/modules/KVER)")
    return moddir


# --- what goes in ------------------------------------------------------------------------


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


def add_libraries(arc: Archive, frozen: Path, elves: list[str], extra_roots: list[str]) -> int:
    """The ELF closure of the agent (and busybox if dynamic), PyInstaller's exclusions
    (ld.so, glibc) included. Returns how many paths it added."""
    exe = str(frozen / freeze.NAME)
    internal = str(frozen / "_internal")
    # PyInstaller's bootloader first runs with the system's search path, then re-execs
    # itself with LD_LIBRARY_PATH=_internal for the rest: resolve it both ways.
    resolver = elf.Resolver()
    found = resolver.closure([exe, *extra_roots], extra=elf.DLOPENED_BY_LIBC)
    found += resolver.with_library_path([internal]).closure(elves)
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


def add_busybox(arc: Archive) -> list[str]:
    if not BUSYBOX.is_file():
        raise SsiError(f"{BUSYBOX}: no such file",
                       hint="apt-get install busybox-static, or pass --no-busybox")
    arc.file("bin/busybox", BUSYBOX)
    arc.symlink("bin/sh", "busybox")
    info = elf.read_elf(BUSYBOX)
    return [str(BUSYBOX)] if info is not None and info.interp else []


def add_modules(arc: Archive, args: argparse.Namespace, moddir: Path, cache: Path,
                firmware_dir: Path) -> int:
    index = kmod.ModuleIndex(moddir)
    added = [m for group in args.add_modules for m in group]
    omitted = [m for group in args.omit_modules for m in group]
    sel = index.select([*kmod.DEFAULT_MODULES, *added], required=added, omit=omitted)
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
    add_firmware(arc, firmware_dir, plain)
    for name in ("modules.alias", "modules.builtin"):
        if (moddir / name).is_file():
            arc.file(f"{base}/{name}", moddir / name, 0o644)
    arc.data(f"{base}/modules.dep", index.ramdisk_dep(sel.modules).encode())
    arc.data("etc/ssi/modules", "".join(f"/{base}/{m.installed}\n"
                                         for m in sel.modules).encode())
    arc.data("etc/ssi/kver", f"{kver}\n".encode())
    log.info("modules: %d from %s: %s", len(sel.modules), moddir,
             " ".join(m.name for m in sel.modules))
    return len(sel.modules)


def add_firmware(arc: Archive, firmware_dir: Path, modules: list[Path]) -> None:
    """The firmware files the modules name, from the system being booted (ROOT), as the
    kernel's loader looks for them, compressed or not, under /lib/firmware."""
    missing: list[str] = []
    for module in modules:
        for name in kmod.firmware(module):
            found = next((name + s for s in ("", ".zst", ".xz")
                          if (firmware_dir / (name + s)).is_file()), None)
            if found is None:
                missing.append(name)
            else:
                arc.file(f"lib/firmware/{found}", firmware_dir / found, 0o644)
    if missing:
        # Often optional (one file per chip revision): say so, do not fail.
        log.info("firmware not in %s, not shipped: %s", firmware_dir, " ".join(missing))


def add_skel(arc: Archive, skel: Path) -> None:
    if not skel.is_dir():
        log.info("%s: no ramdisk skeleton, none copied", skel)
        return
    for path in arc.tree(skel, "/", skip_existing=True):
        log.warning("ramdisk_skel/%s ignored: the builder writes /%s itself", path, path)
    for path in [p for p in arc.entries if p.rpartition("/")[2] == ".gitkeep"]:
        del arc.entries[path]


# --- the command -------------------------------------------------------------------------


def list_image(path: Path) -> int:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SsiError(f"{path}: {e.strerror}") from None
    out = []
    for m in image.read_image(data):
        size = f"{m.rdev[0]},{m.rdev[1]}" if stat.S_ISCHR(m.mode) or stat.S_ISBLK(m.mode) \
            else str(m.size)
        line = f"{stat.filemode(m.mode)} {size:>10} /{m.path}"
        out.append(line + (f" -> {m.target}" if m.target is not None else "") + "\n")
    sys.stdout.write("".join(out))
    return 0


def _validate(expected: Archive) -> Callable[[Path], None]:
    def check(staged: Path) -> None:
        members = image.read_image(staged.read_bytes())
        paths = {m.path for m in members}
        if len(members) != len(expected) or paths != set(expected.entries):
            raise SsiError(f"the image written to {staged} does not read back as built")
    return check


def _run_mkdhcpd(args: argparse.Namespace) -> int:
    argv = ["--root", str(args.root)]
    if args.ssitab is not None:
        argv += ["--ssitab", str(args.ssitab)]
    argv += [flag for flag, on in (("-v", args.verbose), ("--debug", args.debug),
                                   ("--dry-run", args.dry_run)) if on]
    log.info("running mkdhcpd.ssi %s", " ".join(argv))
    code = mkdhcpd.main(argv)
    if code != 0:
        print(f"{PROG}: the ramdisk is built, but mkdhcpd.ssi failed (exit {code})",
              file=sys.stderr)
    return code


def build(args: argparse.Namespace) -> int:
    if args.list is not None:
        return list_image(args.list)
    start = time.monotonic()
    root = cli.Root(args.root)
    table_path = cli.ssitab_path(args)
    table = cli.load_ssitab(table_path)  # an invalid table stops here, before any output
    moddir = _moddir(args, root)
    output: Path = args.output or root("/boot/initrd-ssi.img")
    epoch = source_date_epoch()
    cache = cache_root()

    arc = Archive()
    add_base(arc)
    frozen = freeze.frozen_agent(AGENT_PACKAGE, cache, verbose=args.debug)
    elves = add_agent(arc, frozen)
    extra = [] if args.no_busybox else add_busybox(arc)
    libs = add_libraries(arc, frozen, elves, extra)
    log.info("libraries: %d paths for %d ELF files of the agent", libs, len(elves))
    arc.data("etc/ssitab", table_path.read_bytes())
    n_modules = add_modules(arc, args, moddir, cache, root("/lib/firmware"))
    add_skel(arc, SKEL)

    segments = image.SegmentCache(cache / "segments")
    data = image.build(list(arc.entries.values()), args.compress, epoch, segments,
                       args.compress_level)
    seconds = time.monotonic() - start
    size = f"{len(data) / 1e6:.1f} MB ({args.compress})"
    counts = f"{len(arc)} files, {n_modules} modules, {len(table)} nodes"
    if args.dry_run:
        print(f"{output}: would write {size}, {counts}, {seconds:.2f} s")
    else:
        changed = replace_if_changed(output, data, validate=_validate(arc), backup=False)
        seconds = time.monotonic() - start
        print(f"{output}: {'written' if changed else 'unchanged'}, {size}, {counts}, "
              f"{seconds:.2f} s")
        segments.prune()
        image.prune(cache / "modules")
    return 0 if args.no_dhcpd else _run_mkdhcpd(args)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(PROG, build_parser(), build, argv)


entry = cli.entry_point(main)


if __name__ == "__main__":
    sys.exit(main())
