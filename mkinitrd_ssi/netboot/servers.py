"""lilo.ssi --servers SET: the published tree, copied to every boot server with ClusterShell.

A boot server is a machine that runs a TFTP server (and a web server, for
--http-url) whose root is its own copy of tftpboot; DHCP sends each node to
one (ssitab server=). Every server gets the same bytes: the content-named set
and the files around it (loaders, configs) exactly as this host published them.

Three steps, each one ClusterShell worker over the servers, as the push
(push/fanout.py: fan-out, ssh options, tree mode through gateways):

 1. ask:     does the server hold the set already? (`test -d`); a server that
             cannot be reached is down here;
 2. copy:    a spool `lilo.ssi-pub-<id>/` holding the manifest, the set (only
             to servers that lack it) and the small files; once per server;
 3. install: `lilo.ssi --install-published SPOOL --tftpboot DIR` on the server.

The server side is lilo.ssi itself (on an SSI cluster every machine runs the
shared root, so it is installed there) rather than `mv` in a shell: it checks
every received byte against the manifest before anything is renamed (a copy cut
short fails loudly), and installs through the same code as a local publish: the
set staged and renamed into sets/ and fsynced, then the configs renamed over the
old ones last, then the old sets pruned. A node booting from that server during
the install gets the old set or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import xxhash
from ClusterShell.NodeSet import NodeSet, NodeSetParseError

from linuxrc_agent.bootpair.fileops import hash_file
from linuxrc_agent.bootpair.manifest import file_id_from_json, file_id_json
from linuxrc_agent.bootpair.pair import FileId
from linuxrc_agent.units import human_size
from mkinitrd_ssi.atomic import replace_if_changed
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.netboot import publish
from mkinitrd_ssi.push import spool
from mkinitrd_ssi.push.fanout import Outcome, PushOptions, configured_task, run_step
from mkinitrd_ssi.push.report import COUNTED, Status, aligned, shown, ssh_failure

PREFIX = f"{spool.PREFIX}pub-"  # spool.PREFIX: receive-side ownership checks apply
MANIFEST = "publish.json"
TREE = "tree"
# Renamed into place last, in this order: they name the set (commit points).
CONFIGS = (publish.PXELINUX_CFG, publish.GRUB_CFG, publish.IPXE_SCRIPT)
ASK_SECONDS = 30.0


class ServerResult(NamedTuple):
    server: str
    status: Status
    detail: str
    sent_bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {**self._asdict(), "status": str(self.status), "seconds": round(self.seconds, 3)}


def parse_servers(spec: str) -> list[str]:
    try:
        servers = list(NodeSet(spec))
    except NodeSetParseError as e:
        raise SsiError(f"--servers {spec!r}: {e}", hint="a ClusterShell node set of boot "
                       "servers, e.g. boot[1-4] or 10.77.0.2,10.77.0.3") from None
    if not servers:
        raise SsiError(f"--servers {spec!r}: no server")
    return servers


def tree_files(tftpboot: Path, set_name: str) -> list[str]:
    """What a server's copy must hold: the set, and every file outside sets/ (loaders,
    configs), as paths relative to tftpboot; configs last."""
    files = [f"{publish.SETS_DIR}/{set_name}/{n}" for n in ("vmlinuz", "initrd.img")]
    others = sorted(str(p.relative_to(tftpboot)) for p in tftpboot.rglob("*")
                    if p.is_file() and not p.is_relative_to(tftpboot / publish.SETS_DIR)
                    and not p.name.startswith("."))
    return files + [f for f in others if f not in CONFIGS] + [f for f in CONFIGS if f in others]


@dataclass(frozen=True)
class Payload:
    """What the servers are sent: one manifest naming every file, and per group of
    servers that lack the same files a spool holding just those."""

    files: list[str]
    ids: dict[str, FileId]
    manifest: bytes

    @property
    def name(self) -> str:
        return PREFIX + xxhash.xxh3_128_hexdigest(self.manifest)[:16]

    def size(self, wanted: Sequence[str]) -> int:
        return sum(self.ids[f].size for f in wanted)


def payload(tftpboot: Path, set_name: str) -> Payload:
    files = tree_files(tftpboot, set_name)
    ids = {f: hash_file(tftpboot / f) for f in files}
    # A list, not an object: its order is the install order (configs last).
    doc = {"set": set_name, "files": [[f, file_id_json(ids[f])] for f in files]}
    return Payload(files, ids, json.dumps(doc, indent=1).encode())


@contextlib.contextmanager
def staged(tftpboot: Path, load: Payload, groups: Sequence[tuple[str, ...]]) -> Iterator[
        list[Path]]:
    """One spool directory per group of wanted files (hard links: nothing copied here),
    all of the same name, so one install command serves every server."""
    with tempfile.TemporaryDirectory(prefix="lilo.ssi-servers.") as tmp:
        spools = []
        for index, wanted in enumerate(groups):
            top = Path(tmp) / str(index) / load.name
            top.mkdir(parents=True)
            for f in wanted:
                (top / TREE / f).parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(tftpboot / f, top / TREE / f)
                except OSError:
                    shutil.copyfile(tftpboot / f, top / TREE / f)
            (top / MANIFEST).write_bytes(load.manifest)
            spools.append(top)
        yield spools


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _remote(opts: PushOptions, tftpboot: str, *args: str) -> str:
    return f"{opts.remote_lilo} " + shlex.join(["--tftpboot", tftpboot, *args])


class _Run:
    def __init__(self, servers: Sequence[str], opts: PushOptions, remote_dir: str) -> None:
        self.opts = opts
        self.remote_dir = remote_dir
        self.task = configured_task(opts)
        self.started = {s: time.monotonic() for s in servers}
        self.results: dict[str, ServerResult] = {}

    def finish(self, server: str, status: Status, detail: str = "", sent: int = 0) -> None:
        if server not in self.results:
            self.results[server] = ServerResult(server, status, shown(detail), sent,
                                                time.monotonic() - self.started[server])

    def reached(self, server: str, o: Outcome, what: str) -> bool:
        """False (and the server's result) when ssh itself failed or timed out."""
        if o.timed_out:
            self.finish(server, Status.DOWN if what == "ask" else Status.FAILED,
                        f"{what}: no answer in time")
            return False
        if o.rc == 255:
            down, why = ssh_failure(o.err)
            self.finish(server, Status.DOWN if down else Status.FAILED, f"{what}: {why}")
            return False
        return True

    def ask(self, tftpboot: Path, load: Payload) -> dict[str, tuple[str, ...]]:
        """server -> the files it lacks or holds in another version (sha256sum there:
        coreutils, nothing of ours needed to answer)."""
        local = {f: _sha256(tftpboot / f) for f in load.files}
        spool_dir = self.opts.remote_spool.rstrip("/") + "/"
        command = (f"mkdir -p {shlex.quote(self.remote_dir)} {shlex.quote(spool_dir)} && "
                   f"cd {shlex.quote(self.remote_dir)} && "
                   f"{{ sha256sum -- {shlex.join(load.files)} 2>/dev/null; echo end; }}")
        needs: dict[str, tuple[str, ...]] = {}

        def asked(server: str, o: Outcome) -> None:
            if not self.reached(server, o, "ask"):
                return
            if o.rc != 0 or not o.out or o.out[-1] != "end":
                why = o.err[-1] if o.err else f"exit {o.rc}"
                self.finish(server, Status.FAILED, f"cannot prepare {self.remote_dir}: {why}")
                return
            same = {path for digest, _, path in (line.partition("  ") for line in o.out)
                    if local.get(path) == digest}
            needs[server] = tuple(f for f in load.files if f not in same)

        run_step(self.task, list(self.started), min(self.opts.timeout, ASK_SECONDS +
                 self.opts.connect_timeout), command=command, on_done=asked)
        return needs

    def run(self, tftpboot: Path, load: Payload) -> list[ServerResult]:
        needs = self.ask(tftpboot, load)
        if self.opts.dry_run:
            for server, wanted in needs.items():
                self.finish(server, Status.STALE if wanted else Status.UNCHANGED,
                            f"would send {human_size(load.size(wanted))}" if wanted else "")
            return self.ordered()
        groups = sorted(set(needs.values()))
        arrived: list[str] = []

        def copied(server: str, o: Outcome) -> None:
            if self.reached(server, o, "copy"):
                if o.rc == 0:
                    arrived.append(server)
                else:
                    self.finish(server, Status.FAILED, f"copy: {ssh_failure(o.err)[1]}")

        with staged(tftpboot, load, groups) as spools:
            for wanted, source in zip(groups, spools, strict=True):
                # The trailing slash: scp and tree mode's tar both make SPOOL/<name>.
                run_step(self.task, [s for s, w in needs.items() if w == wanted],
                         self.opts.timeout, copy=(str(source),
                                                  self.opts.remote_spool.rstrip("/") + "/"),
                         on_done=copied)
        remote_spool = str(PurePosixPath(self.opts.remote_spool) / load.name)

        def installed(server: str, o: Outcome) -> None:
            sent = load.size(needs[server])
            if not self.reached(server, o, "install"):
                return
            answer = o.json()
            if o.rc == 0 and isinstance(answer, dict) and answer.get("status") in (
                    "updated", "unchanged"):
                changed = answer.get("changed") or []
                self.finish(server, Status(answer["status"]),
                            ", ".join(str(c) for c in changed), sent)
            else:
                why = answer.get("reason") if isinstance(answer, dict) else None
                self.finish(server, Status.FAILED, str(why or (o.err[-1] if o.err else
                                                               f"exit {o.rc}")), sent)

        run_step(self.task, arrived, self.opts.timeout,
                 command=_remote(self.opts, self.remote_dir, "--json", "--install-published",
                                 remote_spool), on_done=installed)
        for server in self.started:
            self.finish(server, Status.FAILED, "ClusterShell reported no outcome "
                        "(unreachable gateway?)")
        return self.ordered()

    def ordered(self) -> list[ServerResult]:
        return [self.results[s] for s in self.started if s in self.results]


def publish_to_servers(servers: Sequence[str], tftpboot: Path, set_name: str,
                       opts: PushOptions, remote_dir: str) -> list[ServerResult]:
    """Copy what tftpboot publishes for set_name to every server's remote_dir."""
    return _Run(servers, opts, remote_dir).run(tftpboot, payload(tftpboot, set_name))


def table(results: Sequence[ServerResult]) -> str:
    rows = [("SERVER", "STATUS", "SENT", "DETAIL")]
    rows += [(r.server, str(r.status), human_size(r.sent_bytes) if r.sent_bytes else "-",
              r.detail) for r in results]
    counts = {s: sum(r.status is s for r in results) for s in COUNTED}
    text = f"{len(results)} boot server(s): " + ", ".join(
        f"{n} {s}" for s, n in counts.items() if n)
    bad = [r.server for r in results if r.status in (Status.FAILED, Status.DOWN)]
    if bad:
        text += f"; not serving this set: {NodeSet.fromlist(bad)}"
    sent = sum(r.sent_bytes for r in results)
    if sent:
        text += f"; {human_size(sent)} sent"
    return aligned(rows) + text + "\n"


def exit_code(results: Sequence[ServerResult]) -> int:
    # A boot server that is down keeps serving the old set to its nodes when it
    # comes back: unlike a powered-off node, that is a fault the admin must see.
    return 1 if any(r.status in (Status.FAILED, Status.DOWN) for r in results) else 0


# -- the server side: lilo.ssi --install-published SPOOL --tftpboot DIR


def install(spool_dir: Path, tftpboot: Path) -> dict[str, Any]:
    """Check every file of a received spool against its manifest, then install it as a
    local publish does: set first (staged, renamed, fsynced), configs last, old sets
    pruned. The spool is removed afterwards, whatever happened."""
    try:
        spool._check_spool(spool_dir)
        if not spool_dir.name.startswith(PREFIX):
            raise SsiError(f"{spool_dir}: not a lilo.ssi --servers spool ({PREFIX}<id>)")
        try:
            doc = json.loads((spool_dir / MANIFEST).read_bytes())
            set_name = str(doc["set"])
            files = {str(f): file_id_from_json(v, str(f)) for f, v in doc["files"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SsiError(f"{spool_dir / MANIFEST}: unreadable manifest: {e}") from None
        for rel in files:
            if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
                raise SsiError(f"{spool_dir / MANIFEST}: bad path {rel!r}")
        set_files = {f for f in files if f.startswith(f"{publish.SETS_DIR}/{set_name}/")}
        present = {f for f in files if (spool_dir / TREE / f).is_file()}
        for rel in files:
            # What was not sent must be here already, as lilo.ssi saw it when it asked.
            path = spool_dir / TREE / rel if rel in present else tftpboot / rel
            got = hash_file(path) if path.is_file() else None
            if got != files[rel]:
                what = "missing" if got is None else "not the published file"
                how = "received" if rel in present else "kept on the server"
                raise SsiError(f"{path}: {what} ({how})",
                               hint="the copy was cut short, or the server's tree changed "
                               "meanwhile; publish again")
        final = tftpboot / publish.SETS_DIR / set_name
        changed = []
        if set_files <= present:
            src = spool_dir / TREE / publish.SETS_DIR / set_name
            if publish._publish_set(tftpboot, set_name, src / "vmlinuz", src / "initrd.img"):
                changed.append(f"{publish.SETS_DIR}/{set_name}/")
        for rel in [f for f in files if f in present - set_files]:  # configs last
            data = (spool_dir / TREE / rel).read_bytes()
            (tftpboot / rel).parent.mkdir(parents=True, exist_ok=True)
            if replace_if_changed(tftpboot / rel, data, backup=False):
                changed.append(rel)
        os.utime(final)  # the newest set survives pruning
        publish._prune(tftpboot, set_name)
    except OSError as e:
        raise SsiError(f"cannot install into {tftpboot}: {e.strerror}: {e.filename}") from None
    finally:
        spool.discard(spool_dir)
    return {"status": "updated" if changed else "unchanged", "set": set_name,
            "changed": changed}
