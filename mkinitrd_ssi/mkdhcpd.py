"""mkdhcpd.ssi: the DHCP server's configuration from the node table."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from mkinitrd_ssi import cli
from mkinitrd_ssi.dhcp import BootFiles, Format
from mkinitrd_ssi.dhcp.generate import DhcpOptions, write_config
from mkinitrd_ssi.errors import SsiError

PROG = "mkdhcpd.ssi"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.common_parser(PROG, "Write the DHCP server configuration for every node "
                               "in the node table: the proto verbatim, then one "
                               "reservation per NIC.")
    parser.add_argument("--format", type=Format, choices=list(Format), default=Format.ISC,
                        metavar="{isc,kea,dnsmasq}", help="DHCP server (default: isc)")
    parser.add_argument("--proto", type=Path, metavar="FILE",
                        help="hand-written part (default: ROOT/etc/dhcpd.proto for isc)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="generated file (default: ROOT/etc/dhcpd.conf for isc)")
    parser.add_argument("--next-server", type=_ipv4, metavar="ADDR",
                        help="TFTP server for the boot files (default: as the proto sets it)")
    parser.add_argument("--pxe-file", type=_boot_file, default=BootFiles.pxe_file, metavar="FILE",
                        help="boot file for plain PXE ROMs (default: %(default)s)")
    parser.add_argument("--ipxe-script", type=_boot_file, default=BootFiles.ipxe_script,
                        metavar="FILE",
                        help="script handed to iPXE clients (default: %(default)s)")
    parser.add_argument("--no-check", action="store_true",
                        help="do not run the server's own config checker")
    parser.add_argument("--reload", action="store_true",
                        help="after the checker passed and the output changed, make the "
                        "running server use it without dropping leases (dhcpd, dnsmasq: "
                        "restarted with their own command line; Kea: config-reload over its "
                        "control socket); says what it did")
    parser.add_argument("--pid-file", type=Path, metavar="FILE",
                        help="with --reload: the pid file of the running dhcpd or dnsmasq "
                        "(default: ROOT/run/dhcpd.pid, ROOT/run/dnsmasq/dnsmasq.pid; else "
                        "their systemd unit)")
    return parser


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv4 address: {text!r}") from None


def _boot_file(text: str) -> str:
    # The name lands inside a quoted ISC string and a comma-separated dnsmasq
    # option: nothing that could end either.
    if not text or not text.isprintable() or any(c in text for c in '"\\;,# '):
        raise argparse.ArgumentTypeError(f"not a plain file name: {text!r}")
    return text


def options(args: argparse.Namespace) -> DhcpOptions:
    return DhcpOptions(root=cli.Root(args.root), format=args.format, proto=args.proto,
                       output=args.output,
                       boot=BootFiles(args.pxe_file, args.ipxe_script, args.next_server),
                       check=not args.no_check, dry_run=args.dry_run, reload=args.reload,
                       pid_file=args.pid_file)


def generate(args: argparse.Namespace) -> int:
    if args.reload and args.no_check:
        # A server restarted on a config nobody checked may not come back.
        error = SsiError("--reload needs the server's checker: it does not go with "
                         "--no-check", hint="drop --no-check")
        error.exit_code = 2
        raise error
    table, _ = cli.read_ssitab(cli.ssitab_path(args))
    return write_config(table, options(args))


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(PROG, build_parser(), generate, argv)


entry = cli.entry_point(main)
