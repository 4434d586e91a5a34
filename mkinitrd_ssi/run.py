"""The one subprocess wrapper: argv lists only, checked by default, logged under --debug."""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence

from mkinitrd_ssi.errors import SsiError

log = logging.getLogger("ssi")


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    capture: bool = False,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv; capture=True collects stdout and stderr. Failures become SsiError."""
    log.debug("+ %s", shlex.join(argv))
    try:
        result = subprocess.run(
            list(argv),
            check=False,
            input=input,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
        )
    except FileNotFoundError:
        raise SsiError(f"{argv[0]}: command not found",
                       hint="install it (make deps installs every tool ssi-boot uses)") from None
    except subprocess.TimeoutExpired:
        raise SsiError(f"{argv[0]} timed out after {timeout} s") from None
    if check and result.returncode != 0:
        if result.returncode < 0:
            name = signal.Signals(-result.returncode).name
            raise SsiError(f"{argv[0]} killed by {name}")
        detail = ""
        if capture and result.stderr:
            detail = ": " + result.stderr.decode(errors="replace").strip().splitlines()[-1]
        raise SsiError(f"{shlex.join(argv)} failed with exit code {result.returncode}{detail}")
    return result


def spawn(argv: Sequence[str], *, cwd: str | None = None,
          env: Mapping[str, str] | None = None) -> int:
    """Start argv detached (own session, no stdio of ours), for a daemon that must
    outlive this command; its pid."""
    log.debug("+ %s &", shlex.join(argv))
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except FileNotFoundError:
        raise SsiError(f"{argv[0]}: command not found") from None
    return proc.pid
