"""Crash-safe output files: temp file in the same directory, fsync, rename, fsync dir."""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from mkinitrd_ssi.errors import SsiError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_file(target: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temp path beside target; on clean exit fsync and rename it over target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


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
