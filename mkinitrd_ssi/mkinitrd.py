"""mkinitrd.ssi: the node ramdisk: frozen agent, its libraries, busybox, modules, ssitab,
the static skeleton and the admin's additions; a manifest inside says where each came from.

Then, as the seed did, mkdhcpd.ssi: whoever rebuilds the ramdisk after an
ssitab edit wants the DHCP server to know the new nodes too.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import linuxrc_agent
from mkinitrd_ssi import cli, elf, freeze, image, kmod, mkdhcpd
from mkinitrd_ssi.atomic import replace_if_changed
from mkinitrd_ssi.cpio import Archive, Member, walk
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.image import Compression
from mkinitrd_ssi.run import log

PROG = "mkinitrd.ssi"
AGENT_DIR = "/ssi/agent"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: no libraries, every applet
RAMDISK_D = "/etc/ssi/ramdisk.d"  # an admin's files, on top of the packaged skeleton
MANIFEST = "etc/ssi/image.manifest"  # path<TAB>origin of every member: --list -v reads it
AGENT_PACKAGE = Path(linuxrc_agent.__file__).resolve().parent
DIRS = ("bin", "dev", "etc", "etc/ssi", "lib", "mnt", "newroot", "proc", "run", "sys")
# As gen_init_cpio ships them: a frozen Python dies without /dev/urandom before devtmpfs.
DEVICES = (("dev/console", 5, 1, 0o600), ("dev/null", 1, 3, 0o666),
           ("dev/urandom", 1, 9, 0o666), ("dev/random", 1, 8, 0o666),
           ("dev/kmsg", 1, 11, 0o644))


def packaged_skel() -> Path:
    """ramdisk_skel/: package data of an installed wheel (setup.py puts it there), else the
    top-level directory of the checkout this module runs from (an editable install)."""
    inside = importlib.resources.files(__package__) / "ramdisk_skel"
    if isinstance(inside, Path) and inside.is_dir():
        return inside
    return Path(__file__).resolve().parent.parent / "ramdisk_skel"


SKEL = packaged_skel()


def _comma_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = cli.common_parser(PROG, "Build the node ramdisk: the frozen boot agent as /init "
                               "(and /linuxrc), its shared libraries, busybox, the kernel "
                               "modules a node needs and the node table, the packaged "
                               f"skeleton (ramdisk_skel/) and the admin's files from ROOT"
                               f"{RAMDISK_D}/ on top; then run mkdhcpd.ssi.")
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
    parser.add_argument("--skel", action="append", type=Path, default=[], metavar="DIR",
                        help="copy DIR's tree into the image on top of the packaged skeleton, "
                        f"instead of ROOT{RAMDISK_D}; repeatable, a later DIR wins over an "
                        "earlier one; never over a file the builder writes itself")
    parser.add_argument("--list", type=Path, metavar="IMAGE",
                        help="print the member paths of IMAGE, one a line; with -v also mode, "
                        "size, link target and where each came from; build nothing")
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
    with arc.origin("generated"):
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
                with arc.origin("firmware"):
                    arc.file(f"lib/firmware/{found}", firmware_dir / found, 0o644)
    if missing:
        # Often optional (one file per chip revision): say so, do not fail.
        log.info("firmware not in %s, not shipped: %s", firmware_dir, " ".join(missing))


@dataclass(frozen=True)
class Layer:
    """A tree copied into the image: the packaged skeleton, then the admin's layers."""

    path: Path
    origin: str  # the manifest's word for it
    shown: str = ""  # how the manifest names the layer's directory

    @property
    def packaged(self) -> bool:
        return self.origin == "skel"

    def source_of(self, rel: str) -> str:
        """For messages: the file on this machine."""
        return f"ramdisk_skel/{rel}" if self.packaged else str(self.path / rel)

    def origin_of(self, rel: str) -> str:
        # The skeleton's path in the image is its path in ramdisk_skel/: no need to repeat it.
        return self.origin if self.packaged else f"{self.origin} {self.shown}/{rel}"


def skel_layers(args: argparse.Namespace, root: cli.Root) -> list[Layer]:
    if not SKEL.is_dir():
        raise SsiError(f"{SKEL}: no ramdisk skeleton; this ssi-boot is installed incompletely",
                       hint="reinstall ssi-boot (its wheel carries ramdisk_skel/)")
    layers = [Layer(SKEL, "skel")]
    for given in args.skel:
        if not given.is_dir():
            raise SsiError(f"{given}: no such directory (from --skel)")
        layers.append(Layer(given, "--skel", str(given.resolve())))
    ramdisk_d = root(RAMDISK_D)
    if not args.skel and ramdisk_d.is_dir():
        # Named from ROOT, not from where the tree is: the image depends on its contents only.
        layers.append(Layer(ramdisk_d, "ramdisk.d", "ROOT" + RAMDISK_D))
    return layers


def add_skel(arc: Archive, layers: Sequence[Layer]) -> None:
    """Copy the layers in order, a later one replacing an earlier one's file, none
    replacing what the builder wrote: the agent relies on those (the table, its modules)."""
    from_layers: set[str] = set()
    for layer in layers:
        for rel, src in walk(layer.path):
            if src.name == ".gitkeep":  # only there to keep an empty directory in git
                continue
            directory = src.is_dir() and not src.is_symlink()
            if directory and rel in arc:
                continue  # the builder's or an earlier layer's: its mode stays
            if rel in arc:
                if rel not in from_layers:
                    log.warning("%s ignored: the builder writes /%s itself (origin: %s)",
                                layer.source_of(rel), rel, arc.origins[rel])
                    continue
                if stat.S_ISDIR(arc.entries[rel].mode):
                    raise SsiError(f"{layer.source_of(rel)}: a file where an earlier layer "
                                   f"has the directory /{rel}")
                arc.remove(rel)
            # The packaged files' modes are git's and pip's (0644 or 0755) anyway: made
            # exact here, so an editable and a wheel install build the same image.
            mode = None if not layer.packaged else \
                0o755 if src.stat().st_mode & 0o111 else 0o644
            with arc.origin(layer.origin_of(rel)):
                if directory:
                    arc.dir(rel, mode or stat.S_IMODE(src.stat().st_mode))
                else:
                    arc.put(rel, src, mode)
            from_layers.add(rel)
        log.info("%s: copied from %s", layer.origin, layer.path)


def add_manifest(arc: Archive) -> None:
    """etc/ssi/image.manifest: each member's path and origin, so that --list -v can tell
    from the image alone what came from where."""
    origins = {**arc.origins, MANIFEST: "generated"}
    lines = ["# mkinitrd.ssi: every member of this image, a tab, where it came from\n"]
    for path in sorted(origins, key=os.fsencode):
        if any(c in path + origins[path] for c in "\t\n"):
            raise SsiError(f"{path!r}: a tab or newline in a ramdisk path is not supported",
                           hint="rename it")
        lines.append(f"{path}\t{origins[path]}\n")
    arc.data(MANIFEST, "".join(lines).encode())


def read_manifest(members: Sequence[Member]) -> dict[str, str]:
    """path -> origin, from an image's manifest; empty when it has none (another builder)."""
    for m in members:
        if m.path == MANIFEST:
            text = m.data.decode(errors="replace")
            return dict(line.split("\t", 1) for line in text.splitlines()
                        if "\t" in line and not line.startswith("#"))
    return {}


# --- the command -------------------------------------------------------------------------


def list_image(path: Path, verbose: bool) -> int:
    """The member paths, as cpio -t prints them; verbose: mode, size, link, origin too."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SsiError(f"{path}: {e.strerror}") from None
    members = image.read_image(data)
    if not verbose:
        sys.stdout.write("".join(f"{m.path}\n" for m in members))
        return 0
    origins = read_manifest(members)
    if not origins:
        log.warning("%s has no /%s: where its members came from is unknown", path, MANIFEST)
    # "ramdisk.d ROOT/etc/ssi/ramdisk.d/etc/motd": the word in a column, the source after
    words = {m.path: origins.get(m.path, "-").partition(" ") for m in members}
    width = max(len(w[0]) for w in words.values()) if words else 0
    out = []
    for m in members:
        word, _, source = words[m.path]
        size = f"{m.rdev[0]},{m.rdev[1]}" if stat.S_ISCHR(m.mode) or stat.S_ISBLK(m.mode) \
            else str(m.size)
        line = f"{stat.filemode(m.mode)} {size:>10} {word:<{width}} {m.path}"
        line += f" -> {m.target}" if m.target is not None else ""
        out.append(line + (f"  ({source})\n" if source else "\n"))
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
        return list_image(args.list, args.verbose)
    start = time.monotonic()
    root = cli.Root(args.root)
    table_path = cli.ssitab_path(args)
    table = cli.load_ssitab(table_path)  # an invalid table stops here, before any output
    moddir = _moddir(args, root)
    layers = skel_layers(args, root)
    output: Path = args.output or root("/boot/initrd-ssi.img")
    epoch = source_date_epoch()
    cache = cache_root()

    arc = Archive()
    add_base(arc)
    frozen = freeze.frozen_agent(AGENT_PACKAGE, cache, verbose=args.debug)
    with arc.origin("agent"):
        elves = add_agent(arc, frozen)
    with arc.origin("busybox"):
        extra = [] if args.no_busybox else add_busybox(arc)
    with arc.origin("library"):
        libs = add_libraries(arc, frozen, elves, extra)
    log.info("libraries: %d paths for %d ELF files of the agent", libs, len(elves))
    with arc.origin("ssitab"):
        arc.data("etc/ssitab", table_path.read_bytes())
    with arc.origin("module"):
        n_modules = add_modules(arc, args, moddir, cache, root("/lib/firmware"))
    add_skel(arc, layers)
    add_manifest(arc)

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
