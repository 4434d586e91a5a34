"""The pure half of the push: which nodes, how each one ended, and how that is shown.

Nothing here touches the network, so the whole of it is unit-tested.
"""

from __future__ import annotations

import enum
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ClusterShell.NodeSet import NodeSet, NodeSetParseError
from ClusterShell.RangeSet import RangeSet, RangeSetParseError

from linuxrc_agent.ssitab import Node
from linuxrc_agent.units import human_size
from mkinitrd_ssi.errors import SsiError


class Status(enum.StrEnum):
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    STALE = "stale"  # dry run: would be updated
    NO_BOOT_PARTITION = "no-boot-partition"
    SKIPPED = "skipped"
    DOWN = "down"
    FAILED = "failed"


# The order of the counts in the progress line and the summary.
COUNTED = (Status.UNCHANGED, Status.UPDATED, Status.STALE, Status.NO_BOOT_PARTITION,
           Status.SKIPPED, Status.DOWN, Status.FAILED)

# What ssh prints when the node's sshd did not answer. Anything else with
# exit 255 (a refused key, a changed host key, a name that does not resolve)
# is a configuration fault the admin must see as a failure, not hide among
# the nodes that are off.
_UNREACHABLE = (
    "connection refused", "connection timed out", "no route to host",
    "network is unreachable", "host is down", "connection reset by peer",
    "operation timed out",
)

_BARE_RANGE_RE = re.compile(r"[0-9][0-9,\-]*")


# What of a node's words reaches the admin's screen.
MAX_DETAIL = 300


def shown(text: str) -> str:
    """A node's text made safe to print: control characters (an escape sequence
    could repaint the admin's terminal) as \\xNN, and at most MAX_DETAIL characters."""
    if len(text) > MAX_DETAIL:
        text = text[:MAX_DETAIL - 3] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in text)


@dataclass(frozen=True)
class Target:
    """A local-boot node and the name ClusterShell addresses it by."""

    node: Node
    address: str


@dataclass
class NodeResult:
    target: Target
    status: Status
    detail: str = ""
    sent_bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        node = self.target.node
        return {"node": node.number, "hostname": node.hostname, "address": self.target.address,
                "status": str(self.status), "detail": self.detail,
                "sent_bytes": self.sent_bytes, "seconds": round(self.seconds, 3)}


def select_nodes(nodes: Iterable[Node], spec: str | None) -> list[Node]:
    """The local-boot nodes named by spec: node numbers ('1-4,7'), or a ClusterShell
    node set of hostnames or addresses ('node[1-4]'); None means all of them."""
    local = sorted((n for n in nodes if n.local), key=lambda n: n.number)
    if spec is None:
        return local
    try:
        names = list(RangeSet(spec)) if _BARE_RANGE_RE.fullmatch(spec) else list(NodeSet(spec))
    except (NodeSetParseError, RangeSetParseError) as e:
        raise SsiError(f"--nodes {spec!r}: {e}", hint="use node numbers like 1-4,7 or a "
                       "node set of hostnames like node[1-4]") from None
    everyone = sorted(nodes, key=lambda n: n.number)
    chosen: dict[int, Node] = {}
    unknown, not_local = [], []
    for name in names:
        node = _lookup(everyone, name)
        if node is None:
            unknown.append(name)
        elif not node.local:
            not_local.append(name)
        else:
            chosen[node.number] = node
    if unknown:
        raise SsiError(f"--nodes: not in the node table: {_fold(unknown)}",
                       hint="name ssitab node numbers, hostnames or addresses")
    if not_local:
        raise SsiError(f"--nodes: no local boot flag in the node table: "
                       f"{_fold(not_local)}",
                       hint="only nodes with local=1 have a boot partition to sync")
    return [chosen[k] for k in sorted(chosen)]


def _fold(names: list[str]) -> str:
    """1-3,7 for node numbers, node[1-3] for names: as the admin would write them."""
    if all(name.isdigit() for name in names):
        return str(RangeSet.fromlist(names))
    return str(NodeSet.fromlist(names))


def _lookup(nodes: Sequence[Node], name: str) -> Node | None:
    if name.isdigit():
        return next((n for n in nodes if n.number == int(name)), None)
    lowered = name.lower()
    return next((n for n in nodes if n.hostname.lower() == lowered or n.ip == name), None)


def targets(nodes: Iterable[Node], address: str) -> list[Target]:
    """address 'ip': the ssitab address (what the agent configured; needs no DNS);
    'hostname': the ssitab hostname, for ssh configs and tree-mode topologies by name."""
    if address not in ("ip", "hostname"):
        raise SsiError(f"--address {address!r}: expected ip or hostname")
    return [Target(n, n.ip if address == "ip" else n.hostname) for n in nodes]


def ssh_failure(stderr: Sequence[str]) -> tuple[bool, str]:
    """(node is down, one-line reason) from the stderr of an ssh or scp that failed."""
    lines = [line.strip() for line in stderr if line.strip()]
    for line in lines:
        if any(p in line.lower() for p in _UNREACHABLE):
            return True, _strip_prefix(line)
    # The last line says what went wrong; earlier ones are warnings and banners.
    return False, _strip_prefix(lines[-1]) if lines else "no message"


def _strip_prefix(line: str) -> str:
    for prefix in ("ssh: ", "scp: "):
        if line.startswith(prefix):
            return line[len(prefix):]
    return line


def counts(results: Iterable[NodeResult]) -> Counter[Status]:
    return Counter(r.status for r in results)


@dataclass
class Progress:
    """One status line on stderr: redrawn in place on a terminal, a line per node with -v."""

    total: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    enabled: bool = False
    verbose: bool = False
    min_interval: float = 0.2
    done: Counter[Status] = field(default_factory=Counter)
    _last: float = 0.0
    _drawn: bool = False

    @classmethod
    def for_stream(cls, total: int, stream: TextIO, verbose: bool) -> Progress:
        tty = stream.isatty()
        return cls(total, stream, enabled=tty or verbose, verbose=verbose and not tty)

    def line(self) -> str:
        finished = sum(self.done.values())
        parts = [f"{self.done[s]} {s}" for s in COUNTED if self.done[s] or s in
                 (Status.UNCHANGED, Status.UPDATED, Status.DOWN, Status.FAILED)]
        return f"push: {finished}/{self.total} done: " + ", ".join(parts)

    def finished(self, result: NodeResult) -> None:
        self.done[result.status] += 1
        if not self.enabled:
            return
        if self.verbose:
            node = result.target.node
            detail = f" ({result.detail})" if result.detail else ""
            print(f"lilo.ssi: node {node.number} {result.target.address}: {result.status}"
                  f"{detail} [{self.line()}]", file=self.stream, flush=True)
            return
        now = time.monotonic()
        if now - self._last >= self.min_interval or sum(self.done.values()) == self.total:
            self._last = now
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
            self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def table(results: Sequence[NodeResult]) -> str:
    """The final table, one row a node in node-number order, and a summary line."""
    rows = [("NODE", "HOSTNAME", "ADDRESS", "STATUS", "SENT", "DETAIL")]
    for r in sorted(results, key=lambda r: r.target.node.number):
        node = r.target.node
        rows.append((str(node.number), node.hostname, r.target.address, str(r.status),
                     human_size(r.sent_bytes) if r.sent_bytes else "-", r.detail))
    return aligned(rows) + summary(results) + "\n"


def aligned(rows: Sequence[tuple[str, ...]]) -> str:
    """Rows as columns two spaces apart; the last column (a free-form detail) unpadded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
             + "  " + row[-1] for row in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def summary(results: Sequence[NodeResult]) -> str:
    c = counts(results)
    parts = [f"{c[s]} {s}" for s in COUNTED if c[s]]
    text = f"{len(results)} local-boot node(s): " + (", ".join(parts) if parts else "none")
    failed = [str(r.target.node.number) for r in results if r.status is Status.FAILED]
    if failed:
        text += f"; failed: node {_fold(failed)}"
    sent = sum(r.sent_bytes for r in results)
    if sent:
        text += f"; {human_size(sent)} sent"
    return text


def as_json(results: Sequence[NodeResult], extra: dict[str, Any]) -> str:
    ordered = sorted(results, key=lambda r: r.target.node.number)
    document = {**extra, "counts": {str(s): n for s, n in counts(results).items()},
                "sent_bytes": sum(r.sent_bytes for r in results),
                "nodes": [r.as_dict() for r in ordered]}
    return json.dumps(document, indent=2, sort_keys=False)


def exit_code(results: Iterable[NodeResult]) -> int:
    return 1 if any(r.status is Status.FAILED for r in results) else 0
