"""lilo.ssi: install the default kernel and ramdisk, publish them for network boot."""

from __future__ import annotations

import argparse
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

from mkinitrd_ssi import cli, netboot
from mkinitrd_ssi.atomic import replace_if_changed, staged_file
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.run import log

PROG = "lilo.ssi"
CMDLINE_FILE = "/etc/ssi/cmdline"
BUILT_INITRD = "/boot/initrd-ssi.img"  # mkinitrd.ssi's default output


def build_parser() -> argparse.ArgumentParser:
    parser = cli.common_parser(PROG, "Install the shared root's default kernel and ramdisk "
                               "and publish them for network boot (iPXE and PXELINUX).")
    parser.add_argument("--kernel", type=Path, metavar="FILE",
                        help="kernel to publish (default: ROOT/boot/vmlinuz)")
    parser.add_argument("--initrd", type=Path, metavar="FILE",
                        help="ramdisk to publish (default: ROOT/boot/initrd.img, after "
                        "installing a newer ROOT/boot/initrd-ssi.img there)")
    parser.add_argument("--cmdline", metavar="ARGS",
                        help="kernel arguments of the cluster, e.g. 'root=LABEL=ssiroot "
                        "console=ttyS0'; kept in ROOT/etc/ssi/cmdline for later runs")
    parser.add_argument("--tftpboot", type=Path, metavar="DIR",
                        help="network-boot directory (default: ROOT/tftpboot)")
    parser.add_argument("--local-only", action="store_true",
                        help="only sync this machine's local boot partition")
    parser.add_argument("--boot-dir", type=Path, metavar="DIR",
                        help="with --local-only: the boot partition, already mounted here")
    return parser


def _cmdline(args: argparse.Namespace, root: cli.Root) -> str:
    path = root(CMDLINE_FILE)
    if args.cmdline is not None:
        try:
            words = shlex.split(args.cmdline)
        except ValueError as e:
            raise SsiError(f"--cmdline: {e}") from None
        if not any(w.startswith("root=") for w in words):
            raise SsiError("--cmdline has no root=", hint="name the shared root, e.g. "
                           "--cmdline 'root=LABEL=ssiroot console=ttyS0'")
        text = " ".join(words)
        if any(c in text for c in "\n\r"):
            raise SsiError("--cmdline must be one line")
        if not args.dry_run:
            replace_if_changed(path, (text + "\n").encode(), backup=False)
        return text
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise SsiError(f"no kernel command line: {path} does not exist",
                       hint="pass it once: lilo.ssi --cmdline 'root=LABEL=ssiroot "
                       "console=ttyS0'") from None


def _default_initrd(root: cli.Root, dry_run: bool) -> Path:
    """ROOT/boot/initrd.img, replaced first by a newer mkinitrd.ssi build."""
    default, built = root("/boot/initrd.img"), root(BUILT_INITRD)
    if built.is_file() and (not default.is_file()
                            or (built.stat().st_mtime > default.stat().st_mtime
                            and built.read_bytes() != default.read_bytes())):
        print(f"installing {built} as the default ramdisk {default}")
        if not dry_run:
            with staged_file(default) as tmp:
                shutil.copyfile(built, tmp)
    return default


def publish(args: argparse.Namespace) -> int:
    root = cli.Root(args.root)
    if args.local_only:
        return local_only(args, root)
    cmdline = _cmdline(args, root)
    kernel = args.kernel or root("/boot/vmlinuz")
    initrd = args.initrd or _default_initrd(root, args.dry_run)
    tftpboot = args.tftpboot or root("/tftpboot")
    log.info("publishing %s + %s into %s with: %s", kernel, initrd, tftpboot, cmdline)
    if args.dry_run:
        print(f"would publish {kernel} and {initrd} into {tftpboot} with: {cmdline}")
        return 0
    result = netboot.publish(tftpboot, kernel, initrd, cmdline)
    state = "published: " + ", ".join(result.changed) if result.changed else "unchanged"
    print(f"{tftpboot}: {state} (set {result.set_name})")
    return 0


def local_only(args: argparse.Namespace, root: cli.Root) -> int:
    raise SsiError("--local-only is not available yet")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(PROG, build_parser(), publish, argv)


entry = cli.entry_point(main)
