"""The push half of `lilo.ssi`: pick the local-boot nodes, stage the pair, fan out, report."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkinitrd_ssi import cli
from mkinitrd_ssi.push import fanout, report, spool
from mkinitrd_ssi.run import log


@dataclass(frozen=True)
class PushJob:
    ssitab: Path
    ssitab_given: bool
    nodes: str | None  # --nodes SET; None: every local-boot node
    address: str  # "ip" or "hostname"
    json: bool
    verbose: bool
    transport: fanout.PushOptions


def run(job: PushJob, kernel: Path, initrd: Path, cmdline: str,
        published: dict[str, Any]) -> int:
    path = job.ssitab
    if job.nodes is None and not job.ssitab_given and not path.exists():
        # Publishing alone needs no node table; without one there is nobody to push to.
        log.info("%s does not exist: no local-boot nodes to push to", path)
        return 0
    nodes = report.select_nodes(cli.load_ssitab(path), job.nodes)
    targets = report.targets(nodes, job.address)
    if not targets:
        if job.json:
            print(report.as_json([], {"published": published}))
        else:
            print("no local-boot nodes to push to")
        return 0
    opts = job.transport
    progress = report.Progress.for_stream(len(targets), sys.stderr, job.verbose)
    with spool.staged(kernel, initrd, cmdline) as staged:
        log.info("pushing %s (%d bytes) to %d node(s), fan-out %d", staged.path.name,
                 staged.payload_bytes, len(targets), opts.fanout)
        results = fanout.push(targets, staged, opts, progress)
        pair = {"id": staged.pair.ident(), **staged.pair.as_dict()}
    if job.json:
        print(report.as_json(results, {"published": published, "pair": pair}))
    else:
        print(report.table(results), end="")
    return report.exit_code(results)
