"""/run/ssi/node.env: what the agent learnt, for the shared root's init scripts (and tests).

Shell-readable `KEY=value` lines, values quoted so that `. /run/ssi/node.env`
in any POSIX shell gives back exactly the string, whatever it holds. Written
atomically: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, fields

from linuxrc_agent import atomic

PATH = "/run/ssi/node.env"


class SyncStatus(enum.Enum):
    """SSI_SYNC: what the boot did to the local boot partition."""

    UPDATED = "updated"
    UNCHANGED = "unchanged"
    NO_BOOT_PARTITION = "no-boot-partition"
    SKIPPED = "skipped"
    FAILED = "failed"


SYNC_STATES = tuple(s.value for s in SyncStatus)

_SAFE_RE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


@dataclass(frozen=True)
class NodeEnv:
    """Node fields stay empty until the identity stage knows the node."""

    node: int | None = None
    ip: str = ""
    prefix: int | None = None
    mac: str = ""
    iface: str = ""
    hostname: str = ""
    local_boot: bool = False
    sync: str = SyncStatus.SKIPPED.value
    boot_ms: int = 0
    stages_ms: str = ""  # `stage:ms` words, in boot order
    root: str = ""  # the root= the shared root was mounted from
    overlay: str = ""  # "tmpfs" when the shared root is under a per-node overlay
    firmware: str = "bios"
    secure_boot: bool = False

    def __post_init__(self) -> None:
        if self.sync not in SYNC_STATES:
            raise ValueError(f"SSI_SYNC={self.sync!r}; expected one of {', '.join(SYNC_STATES)}")

    def items(self) -> list[tuple[str, str]]:
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            text = "" if value is None else str(int(value)) if isinstance(value, bool) \
                else str(value)
            out.append((f"SSI_{f.name.upper()}", text))
        return out

    def render(self) -> str:
        body = "".join(f"{key}={quote(value)}\n" for key, value in self.items())
        return "# Written by the ssi-boot ramdisk agent (/linuxrc) at boot.\n" + body


def quote(value: str) -> str:
    """POSIX shell quoting, as shlex.quote (not imported: it costs boot time)."""
    if not value or _SAFE_RE.match(value):
        return value  # an empty value reads as empty in sh and in systemd's EnvironmentFile=
    return "'" + value.replace("'", "'\"'\"'") + "'"


def write(env: NodeEnv, path: str = PATH) -> None:
    """Write `env` to `path` atomically: temp file, fsync, rename."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    atomic.replace(path, env.render().encode())
