"""Crash-safe output files for the admin tools, on the one primitive (linuxrc_agent.atomic).

Adds what the commands need on top: the parent directory made, a diff for
--dry-run, a backup of the previous output, a checker run on the staged file,
and errors worded as SsiError.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator
from pathlib import Path

from linuxrc_agent import atomic
from mkinitrd_ssi.errors import SsiError


@contextlib.contextmanager
def staged_file(target: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temp path beside target; on clean exit fsync and rename it over target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.staged(target, mode=mode) as tmp:
        yield Path(tmp)


def unified_diff(old: bytes | None, new: bytes, path: Path) -> str:
    a = (old or b"").decode(errors="replace").splitlines(keepends=True)
    b = new.decode(errors="replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, f"{path} (current)", f"{path} (new)"))


def replace_if_changed(
    target: Path,
    content: bytes,
    *,
    validate: Callable[[Path], None] | None = None,
    backup: bool = True,
    mode: int = 0o644,
) -> bool:
    """Write content to target atomically unless it already holds exactly that.

    validate(tmp) runs on the staged file before it replaces anything; it raises
    SsiError to abort, leaving target untouched. The previous target is kept as
    target.bak. Returns True when the file changed.
    """
    try:
        old: bytes | None = target.read_bytes()
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise SsiError(f"cannot read {target}: {e.strerror}") from None
    if old == content:
        return False
    try:
        with staged_file(target, mode) as tmp:
            tmp.write_bytes(content)
            if validate is not None:
                validate(tmp)
            if backup and old is not None:
                bak = target.with_name(target.name + ".bak")
                with staged_file(bak, mode) as tmp_bak:
                    tmp_bak.write_bytes(old)
    except OSError as e:
        raise SsiError(f"cannot write {target}: {e.strerror}") from None
    return True
