"""Conventions every admin command shares: options, logging, one top-level error handler."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from linuxrc_agent.ssitab import Ssitab, SsitabError, parse_bytes
from mkinitrd_ssi.errors import SsiError

log = logging.getLogger("ssi")


@dataclass(frozen=True)
class Root:
    """Every default path of the commands, under --root (so tests never touch /etc)."""

    path: Path

    def __call__(self, absolute: str) -> Path:
        return self.path / absolute.lstrip("/")


def common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                        help="prefix for every default path (default: /)")
    parser.add_argument("--ssitab", type=Path, metavar="FILE",
                        help="node table (default: ROOT/etc/ssitab)")
    parser.add_argument("-n", "--dry-run", action="store_true",
                        help="show what would change, change nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="explain each step")
    parser.add_argument("--debug", action="store_true",
                        help="log every command run and show tracebacks")
    return parser


# The cluster's kernel arguments as lilo.ssi keeps them (netboot/cmdline_file.py).
CMDLINE_FILE = "/etc/ssi/cmdline"


def ssitab_path(args: argparse.Namespace) -> Path:
    return args.ssitab if args.ssitab is not None else Root(args.root)("/etc/ssitab")


def read_ssitab(path: Path) -> tuple[Ssitab, bytes]:
    """The table, and the very bytes it was parsed from (what a ramdisk must carry)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SsiError(f"{path}: no such file", hint="create the node table "
                       "(see README: ssitab) or pass --ssitab FILE") from None
    except OSError as e:
        raise SsiError(f"{path}: {e.strerror}") from None
    return parse_bytes(data, str(path)), data


def load_ssitab(path: Path) -> Ssitab:
    return read_ssitab(path)[0]


def _setup_logging(prog: str, verbose: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def run_main(
    prog: str,
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """Parse argv and run body; map every failure to `prog: message` and an exit code."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 0 for --help, 2 for usage errors
        return int(e.code or 0)
    _setup_logging(prog, args.verbose, args.debug)
    try:
        return body(args)
    except SsitabError as e:
        if args.debug:
            raise
        for problem in e.problems:
            print(f"{prog}: {problem}", file=sys.stderr)
        print(f"{prog}: {len(e.problems)} error(s) in the node table; nothing written",
              file=sys.stderr)
        return 1
    except SsiError as e:
        if args.debug:
            raise
        print(f"{prog}: {e}", file=sys.stderr)
        if e.hint:
            print(f"{prog}: hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def entry_point(main: Callable[[Sequence[str] | None], int]) -> Callable[[], None]:
    def entry() -> None:
        sys.exit(main(None))
    return entry
