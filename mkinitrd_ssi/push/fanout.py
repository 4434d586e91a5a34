"""Push the published pair to every running local-boot node, over ssh, with ClusterShell.

Three steps, each one ClusterShell worker over the whole node set of that step
(so the fan-out limit, ssh options and, with a topology.conf, tree mode through
gateways all come from ClusterShell):

 1. ask:     `lilo.ssi --local-only --hashes` on every target (a bounded ssh
             connect): down nodes drop out here, up-to-date ones stop here;
 2. copy:    the spool directory, once per stale node (scp);
 3. install: `lilo.ssi --local-only --json --from SPOOL` on the nodes that got it.

Steps rather than a pipeline per node: one worker per step keeps the same
command and the same destination on every node, which tree mode needs to send
the payload across each gateway once; the cost is waiting for the slowest node
of a step, which the per-step timeout bounds.
"""

from __future__ import annotations

import json
import shlex
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from ClusterShell.Event import EventHandler
from ClusterShell.NodeSet import NodeSet
from ClusterShell.Task import Task, task_self

from linuxrc_agent.units import human_size
from mkinitrd_ssi.push.report import NodeResult, Progress, Status, Target, shown, ssh_failure
from mkinitrd_ssi.push.spool import Pair, Staged

# Options every ssh and scp of a push gets after the admin's own (ssh keeps
# the first value it is given, so --ssh-option overrides these).
BASE_SSH_OPTIONS = ("BatchMode=yes", "LogLevel=ERROR")
SSH_UNREACHABLE_RC = 255
# Reading the local pair once takes a second or two; anything much slower is a
# node that accepted the connection and then hung.
ASK_SECONDS = 60.0
# What is kept of one node's reply. A healthy answer is one JSON line of a few
# hundred bytes; a node that sends more is broken or hostile, and the admin's
# memory must not grow with it.
MAX_LINE = 64 * 1024
MAX_REPLY = 1 << 20
# A JSON answer nested deeper than this is no answer of ours (and would
# exhaust the parser's recursion).
MAX_DEPTH = 32


@dataclass(frozen=True)
class PushOptions:
    fanout: int = 64
    connect_timeout: int = 5
    timeout: float = 600.0  # per node, for the copy and for the install
    ssh_options: tuple[str, ...] = ()
    remote_lilo: str = "lilo.ssi"
    remote_spool: str = "/run"
    dry_run: bool = False


@dataclass
class _Outcome:
    rc: int | None
    out: list[str]
    err: list[str]
    timed_out: bool

    def json(self) -> Any:
        """The last stdout line that is a JSON object (a login banner may precede it)."""
        for line in reversed(self.out):
            if line.startswith("{"):
                if _depth(line) > MAX_DEPTH:
                    break
                try:
                    return json.loads(line)
                except (ValueError, RecursionError):
                    break
        return None


Outcome = _Outcome  # what run_step hands its callers


def _depth(text: str) -> int:
    """How deep brackets nest in text (strings not excluded: an upper bound is enough)."""
    depth = deepest = 0
    for c in text:
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


class _Collector(EventHandler):  # type: ignore[misc]
    def __init__(self, on_hup: Callable[[str], None]) -> None:
        super().__init__()
        self.out: defaultdict[str, list[str]] = defaultdict(list)
        self.err: defaultdict[str, list[str]] = defaultdict(list)
        self.rc: dict[str, int | None] = {}
        self.kept: defaultdict[str, int] = defaultdict(int)
        self.on_hup = on_hup

    def ev_read(self, worker: Any, node: str, sname: str, msg: bytes) -> None:
        stream = self.err if sname == "stderr" else self.out
        if self.kept[node] >= MAX_REPLY:
            return  # the rest of a flood: dropped, the node is judged by what came first
        line = msg[:MAX_LINE].decode(errors="replace")
        self.kept[node] += len(line)
        if self.kept[node] >= MAX_REPLY:
            line = "(reply cut: over 1 MiB)"
        stream[node].append(line)

    def ev_hup(self, worker: Any, node: str, rc: int | None) -> None:
        self.rc[node] = rc
        self.on_hup(node)


def run_step(task: Task, nodes: Sequence[str], timeout: float, *, command: str | None = None,
             copy: tuple[str, str] | None = None,
             on_done: Callable[[str, _Outcome], None]) -> None:
    """One ClusterShell worker over nodes: command (shell) or copy (source, destination);
    on_done(node, outcome) as each node ends, timed out ones last."""
    if not nodes:
        return
    collector: _Collector

    def hup(node: str) -> None:
        on_done(node, _Outcome(collector.rc[node], collector.out.pop(node, []),
                              collector.err.pop(node, []), False))

    collector = _Collector(hup)
    nodeset = NodeSet.fromlist(nodes)
    if command is not None:
        worker = task.shell(command, nodes=nodeset, handler=collector, stderr=True,
                            stdin=False, timeout=timeout)
    else:
        assert copy is not None
        worker = task.copy(copy[0], copy[1], nodes=nodeset, handler=collector,
                           stderr=True, timeout=timeout)
    task.resume()
    for node in worker.iter_keys_timeout():
        on_done(str(node), _Outcome(None, collector.out.pop(node, []),
                                   collector.err.pop(node, []), True))


@dataclass
class _Push:
    task: Task
    targets: dict[str, Target]
    staged: Staged
    opts: PushOptions
    progress: Progress
    results: dict[str, NodeResult] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)

    def finish(self, address: str, status: Status, detail: str = "", sent: int = 0) -> None:
        result = NodeResult(self.targets[address], status, shown(detail), sent,
                            time.monotonic() - self.started[address])
        self.results[address] = result
        self.progress.finished(result)

    def step(self, nodes: Sequence[str], timeout: float, *, command: str | None = None,
             copy: tuple[str, str] | None = None,
             on_done: Callable[[str, _Outcome], None]) -> None:
        """run_step over nodes; a reply that on_done cannot take is that node's failure."""

        def done(node: str, outcome: _Outcome) -> None:
            # One node's reply, however strange, is that node's failure: the
            # run goes on for every other node.
            try:
                on_done(node, outcome)
            except Exception as e:
                if node not in self.results:
                    self.finish(node, Status.FAILED, f"unexpected reply ({type(e).__name__}: "
                                f"{str(e)[:200]})")

        run_step(self.task, nodes, timeout, command=command, copy=copy, on_done=done)

    def remote(self, *args: str) -> str:
        return f"{self.opts.remote_lilo} --local-only " + shlex.join(args)

    # -- the three steps

    def ask(self, node: str, o: _Outcome) -> list[str]:
        """Classify one answer to --hashes: [node] when it needs the pair, else []."""
        if o.timed_out:
            self.finish(node, Status.DOWN, f"no answer within {ASK_SECONDS:.0f} s")
            return []
        if o.rc == SSH_UNREACHABLE_RC:
            down, why = ssh_failure(o.err)
            self.finish(node, Status.DOWN if down else Status.FAILED, why)
            return []
        answer = o.json()
        if o.rc != 0 or not isinstance(answer, dict):
            self.finish(node, Status.FAILED, _why(o, "--hashes"))
            return []
        if answer.get("status") != "ok":
            status = Status.NO_BOOT_PARTITION if answer.get("status") == str(
                Status.NO_BOOT_PARTITION) else Status.SKIPPED
            self.finish(node, status, str(answer.get("reason", "")))
            return []
        try:
            have = None if answer.get("pair") is None else Pair.from_dict(answer["pair"])
        except ValueError as e:
            self.finish(node, Status.FAILED, f"unexpected answer to --hashes: {e}")
            return []
        if have is not None and have.satisfies(self.staged.pair):
            self.finish(node, Status.UNCHANGED)
            return []
        if self.opts.dry_run:
            self.finish(node, Status.STALE, "would send " + human_size(self.staged.payload_bytes))
            return []
        return [node]

    def copied(self, node: str, o: _Outcome) -> list[str]:
        if o.rc == 0:
            return [node]
        why = f"copy timed out after {self.opts.timeout:.0f} s" if o.timed_out \
            else ssh_failure(o.err)[1]
        self.finish(node, Status.FAILED, f"copy: {why}")
        return []

    def installed(self, node: str, o: _Outcome) -> None:
        answer = o.json()
        sent = self.staged.payload_bytes
        if o.timed_out:
            self.finish(node, Status.FAILED,
                        f"--local-only timed out after {self.opts.timeout:.0f} s", sent)
        elif isinstance(answer, dict) and answer.get("status") in {str(s) for s in Status}:
            status, reason = Status(answer["status"]), str(answer.get("reason", ""))
            if status is Status.SKIPPED:
                # At boot a skipped sync waits for the next one; here the admin
                # asked for this pair now and the node does not have it.
                status, reason = Status.FAILED, f"skipped: {reason}"
            self.finish(node, status, reason, sent)
        else:
            self.finish(node, Status.FAILED, _why(o, "--local-only"), sent)

    def run(self) -> list[NodeResult]:
        for address in self.targets:
            self.started[address] = time.monotonic()
        stale: list[str] = []
        ask_timeout = min(self.opts.timeout, self.opts.connect_timeout + ASK_SECONDS)
        self.step(list(self.targets), ask_timeout, command=self.remote("--hashes"),
                  on_done=lambda n, o: stale.extend(self.ask(n, o)))
        arrived: list[str] = []
        # The trailing slash makes both scp (direct) and ClusterShell's tar
        # (tree mode) create SPOOL/lilo.ssi-<id>; without it tree mode would
        # unpack the pair as SPOOL itself.
        self.step(stale, self.opts.timeout,
                  copy=(str(self.staged.path), self.opts.remote_spool.rstrip("/") + "/"),
                  on_done=lambda n, o: arrived.extend(self.copied(n, o)))
        spool = str(PurePosixPath(self.opts.remote_spool) / self.staged.path.name)
        self.step(arrived, self.opts.timeout, command=self.remote("--json", "--from", spool),
                  on_done=self.installed)
        for address in self.targets:
            if address not in self.results:
                # In tree mode a node behind a gateway that never answered can
                # end with no event at all: say so rather than guess "down".
                self.finish(address, Status.FAILED, "ClusterShell reported no outcome "
                            "(unreachable gateway?)")
        return [self.results[a] for a in self.targets]


def _why(o: _Outcome, what: str) -> str:
    answer = o.json()
    if isinstance(answer, dict) and answer.get("reason"):
        return str(answer["reason"])
    lines = [line.strip() for line in o.err if line.strip()]
    if lines:
        return lines[-1]
    return f"{what} exited with {o.rc} and said nothing"


def ssh_options_string(options: Sequence[str]) -> str:
    return " ".join(shlex.quote(f"-o{opt}") for opt in (*options, *BASE_SSH_OPTIONS))


def configured_task(opts: PushOptions) -> Task:
    """ClusterShell's task with the fan-out, ssh options and timeouts of opts."""
    task = task_self()
    task.set_info("fanout", opts.fanout)
    # Our handler keeps what it needs of each reply; ClusterShell's own copy
    # of every line would grow with a node that floods.
    task.set_default("stdout_msgtree", False)
    task.set_default("stderr_msgtree", False)
    task.set_info("connect_timeout", opts.connect_timeout)
    task.set_info("ssh_options", ssh_options_string(opts.ssh_options))
    # scp reads the same options; unset scp_options makes ClusterShell use ssh's.
    task.set_info("scp_options", None)
    return task


def push(targets: Sequence[Target], staged: Staged, opts: PushOptions,
         progress: Progress) -> list[NodeResult]:
    """Bring every target's boot partition to the staged pair; one result per target."""
    task = configured_task(opts)
    by_address = {t.address: t for t in targets}
    try:
        return _Push(task, by_address, staged, opts, progress).run()
    finally:
        progress.close()
