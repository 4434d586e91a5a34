"""mkinitrd.ssi: the node ramdisk (frozen agent, its libraries, busybox, modules, ssitab,
the static skeleton and the admin's additions; a manifest inside says where each came
from), then the DHCP configuration from the same parsed table.

The work is in mkinitrd_ssi.initrd (docs/architecture.md, "The ramdisk"); this module
turns the command line into BuildOptions and DhcpOptions.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mkinitrd_ssi import cli
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.initrd.build import BuildOptions, build, list_image
from mkinitrd_ssi.initrd.contents import BUSYBOX
from mkinitrd_ssi.initrd.image import Compression
from mkinitrd_ssi.initrd.kmod import DEFAULT_MODULES
from mkinitrd_ssi.initrd.rootfs import root_filesystems
from mkinitrd_ssi.initrd.skel import RAMDISK_D, skel_layers
from mkinitrd_ssi.run import log

PROG = "mkinitrd.ssi"


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
                        help="zstd 1-22 (default 22: the smallest image; 9 compresses "
                        "a cold build ten times faster, 0.6 MB larger) or gzip 1-9 "
                        "(default 6)")
    parser.add_argument("--add-modules", action="append", type=_comma_list, default=[],
                        metavar="M1,M2", help="modules (or aliases) to ship besides the "
                        "default set; one this kernel lacks is an error")
    parser.add_argument("--omit-modules", action="append", type=_comma_list, default=[],
                        metavar="M1,M2", help="modules to leave out (and those needing them)")
    parser.add_argument("--no-busybox", action="store_true",
                        help="no busybox: no rescue shell in the ramdisk")
    parser.add_argument("--busybox", type=Path, default=BUSYBOX, metavar="FILE",
                        help=f"the busybox to carry (default: {BUSYBOX}); a dynamic one "
                        "(Debian's busybox package) brings its libraries and is the smaller "
                        "image: glibc is there for the agent anyway")
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


def _root_filesystems(root: cli.Root) -> tuple[str, ...]:
    found = root_filesystems(root)
    for fstype, where in found.items():
        if fstype not in DEFAULT_MODULES:
            log.info("carrying %s, not in the default set: the shared root's filesystem (%s)",
                     fstype, where)
    return tuple(found)


def options(args: argparse.Namespace, root: cli.Root) -> BuildOptions:
    return BuildOptions(
        output=args.output or root("/boot/initrd-ssi.img"),
        moddir=_moddir(args, root),
        firmware_dir=root("/lib/firmware"),
        layers=tuple(skel_layers(args.skel, root)),
        compress=args.compress,
        compress_level=args.compress_level,
        add_modules=tuple(m for group in args.add_modules for m in group),
        omit_modules=tuple(m for group in args.omit_modules for m in group),
        root_filesystems=_root_filesystems(root),
        busybox=None if args.no_busybox else args.busybox,
        dry_run=args.dry_run,
        debug=args.debug,
    )


def run(args: argparse.Namespace) -> int:
    if args.list is not None:
        return list_image(args.list, args.verbose)
    root = cli.Root(args.root)
    # Parsed once: an invalid table stops here, before any output; the image carries
    # these very bytes and the DHCP config is made from this very table.
    table, table_bytes = cli.read_ssitab(cli.ssitab_path(args))
    build(options(args, root), table, table_bytes)
    if args.no_dhcpd:
        return 0
    log.info("writing the DHCP configuration (as mkdhcpd.ssi would)")
    # Imported here: 18 ms of every build's start-up, for --no-dhcpd builds too.
    from mkinitrd_ssi.dhcp.generate import DhcpOptions, write_config

    try:
        return write_config(table, DhcpOptions(root=root, dry_run=args.dry_run))
    except SsiError as e:
        raise SsiError(f"the ramdisk is built, but the DHCP configuration is not: {e}",
                       hint=e.hint) from None


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(PROG, build_parser(), run, argv)


entry = cli.entry_point(main)


if __name__ == "__main__":
    sys.exit(main())
