"""Write a DHCP server's configuration for a parsed node table: the proto verbatim, one
reservation per NIC, checked by the server's own checker before it is renamed into
place, and not rewritten when unchanged (docs/architecture.md, "DHCP")."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from linuxrc_agent.ssitab import Ssitab
from mkinitrd_ssi import cli
from mkinitrd_ssi.atomic import replace_if_changed, unified_diff
from mkinitrd_ssi.dhcp import BootFiles, Format, backend
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.run import log, run


@dataclass(frozen=True)
class DhcpOptions:
    root: cli.Root
    format: Format = Format.ISC
    proto: Path | None = None  # None: ROOT/<the backend's default proto>
    output: Path | None = None  # None: ROOT/<the backend's default output>
    boot: BootFiles = field(default_factory=BootFiles)
    check: bool = True  # run the server's own checker
    dry_run: bool = False
    reload: bool = False  # apply a changed config to the running server (dhcp/reload.py)
    pid_file: Path | None = None  # None: ROOT/<the server's default pid file>


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


def write_config(table: Ssitab, opts: DhcpOptions) -> int:
    back = backend(opts.format)
    proto_path = opts.proto or opts.root(back.proto)
    try:
        proto = proto_path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        if opts.proto is not None:
            raise SsiError(f"{proto_path}: no such file") from None
        log.warning("%s not found: starting from an empty proto", proto_path)
        proto = ""
    except OSError as e:
        raise SsiError(f"{proto_path}: {e.strerror}") from None
    for warning in back.warnings(proto):
        log.warning("warning: %s", warning)
    content = back.render(proto, table, opts.boot).encode("utf-8", errors="surrogateescape")
    output = opts.output or opts.root(back.output)
    log.info("%d node(s) from %s -> %s (%s)", len(table), table.path, output, back.format.value)

    def validate(path: Path) -> None:
        if opts.check:
            _validate(back.check(str(path)), back.format, path, output, proto_path)

    if opts.dry_run:
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
            if opts.reload:
                print(f"would reload the running {back.format.value} server")
        return 0
    # A checker that refuses raises here: nothing is renamed, nothing reloaded.
    changed = replace_if_changed(output, content, validate=validate,
                                 like=proto_path if proto_path.exists() else None)
    print(f"{output}: {'written' if changed else 'unchanged'} ({len(table)} nodes)")
    if opts.reload:
        if not changed:
            print("unchanged: the running server was not touched")
        else:
            from mkinitrd_ssi.dhcp import reload

            pid_file = opts.pid_file or opts.root(reload.PID_FILES.get(back.format, "/"))
            print(reload.apply(back.format, output, pid_file))
    return 0
