"""mkdhcpd.ssi: the DHCP server's configuration from the node table."""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from mkinitrd_ssi import cli
from mkinitrd_ssi.atomic import replace_if_changed, unified_diff
from mkinitrd_ssi.dhcp import BootFiles, Format, backend
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.run import log, run

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


def _checker_detail(output: str, tmp: Path, shown_as: str) -> str:
    """The checker's complaint in one line: what names the file (and the line after it,
    which dhcpd uses to quote the offending text), else its last lines."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    picked: list[str] = []
    for index, line in enumerate(lines):
        if str(tmp) in line:
            picked.extend(lines[index:index + 2])
            break
    picked = picked or [line for line in lines if "error" in line.lower()][:2] or lines[-3:]
    return " | ".join(line.replace(str(tmp), shown_as) for line in picked)


def _validate(argv: list[str], fmt: Format, tmp: Path, output: Path, proto: Path) -> None:
    if shutil.which(argv[0]) is None:
        log.info("%s not installed: generated %s config not checked by the server", argv[0],
                 fmt.value)
        return
    result = run(argv, check=False, capture=True)
    if result.returncode != 0:
        text = (result.stdout + result.stderr).decode(errors="replace")
        raise SsiError(f"{argv[0]} rejected the generated config, {output} left as it was: "
                       + _checker_detail(text, tmp, f"{output.name} (new)"),
                       hint=f"the error is most likely in the proto, {proto}")
    log.info("%s accepts the generated config", argv[0])


def generate(args: argparse.Namespace) -> int:
    root = cli.Root(args.root)
    back = backend(args.format)
    table = cli.load_ssitab(cli.ssitab_path(args))
    proto_path = args.proto or root(back.proto)
    try:
        proto = proto_path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        if args.proto is not None:
            raise SsiError(f"{proto_path}: no such file") from None
        log.warning("%s not found: starting from an empty proto", proto_path)
        proto = ""
    except OSError as e:
        raise SsiError(f"{proto_path}: {e.strerror}") from None
    for warning in back.warnings(proto):
        log.warning("warning: %s", warning)
    boot = BootFiles(args.pxe_file, args.ipxe_script, args.next_server)
    content = back.render(proto, table, boot).encode("utf-8", errors="surrogateescape")
    output: Path = args.output or root(back.output)
    log.info("%d node(s) from %s -> %s (%s)", len(table), table.path, output, back.format.value)

    def validate(path: Path) -> None:
        if not args.no_check:
            _validate(back.check(str(path)), back.format, path, output, proto_path)

    if args.dry_run:
        try:
            old = output.read_bytes()
        except FileNotFoundError:
            old = None
        except OSError as e:
            raise SsiError(f"cannot read {output}: {e.strerror}") from None
        if old == content:
            print(f"{output}: unchanged")
        else:
            sys.stdout.write(unified_diff(old, content, output))
        return 0
    changed = replace_if_changed(output, content, validate=validate)
    print(f"{output}: {'written' if changed else 'unchanged'} ({len(table)} nodes)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(PROG, build_parser(), generate, argv)


entry = cli.entry_point(main)
