"""Crash-safe output files for the admin tools, on the one primitive (linuxrc_agent.atomic).

Adds what the commands need on top: the parent directory made, a diff for
--dry-run, a backup of the previous output, a checker run on the staged file,
and errors worded as SsiError.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import stat
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
    like: Path | None = None,
) -> bool:
    """Write content to target atomically unless it already holds exactly that.

    validate(tmp) runs on the staged file before it replaces anything; it raises
    SsiError to abort, leaving target untouched. The previous target is kept as
    target.bak. Returns True when the file changed.

    like: the file this output is made from (a DHCP proto, which may hold keys
    or passwords): an existing target keeps its own mode and owner, a new one
    takes like's mode and group, and the .bak the same, so a regenerated output
    is never more readable than what the admin set.
    """
    try:
        old: bytes | None = target.read_bytes()
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise SsiError(f"cannot read {target}: {e.strerror}") from None
    if old == content:
        return False
    owner = _owner(target, like)
    if owner is not None:
        mode = owner[0]
    try:
        with staged_file(target, mode) as tmp:
            tmp.write_bytes(content)
            _apply(tmp, owner)
            if validate is not None:
                validate(tmp)
            if backup and old is not None:
                bak = target.with_name(target.name + ".bak")
                with staged_file(bak, mode) as tmp_bak:
                    tmp_bak.write_bytes(old)
                    _apply(tmp_bak, owner)
    except OSError as e:
        raise SsiError(f"cannot write {target}: {e.strerror}") from None
    return True


def _owner(target: Path, like: Path | None) -> tuple[int, int, int] | None:
    """(mode, uid, gid) the output should have: the target's own, else like's mode and
    group (with the owner the writer is); None when there is no like."""
    if like is None:
        return None
    try:
        st = target.stat()
        return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    except FileNotFoundError:
        pass
    try:
        st = like.stat()
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode), -1, st.st_gid


def _apply(path: Path, owner: tuple[int, int, int] | None) -> None:
    """The owner and group; staged_file sets the mode once the file is written."""
    if owner is None:
        return
    _mode, uid, gid = owner
    if (uid, gid) != (-1, -1):
        # Not root: the output stays ours, with the mode still right.
        with contextlib.suppress(PermissionError):
            os.chown(path, uid, gid)
