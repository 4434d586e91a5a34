"""The push half of `lilo.ssi`: pick the local-boot nodes, stage the pair, fan out, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mkinitrd_ssi import cli, fanout, fanout_report, pairspool
from mkinitrd_ssi.run import log


def run(args: argparse.Namespace, kernel: Path, initrd: Path, cmdline: str,
        published: dict[str, Any]) -> int:
    path = cli.ssitab_path(args)
    if args.nodes is None and args.ssitab is None and not path.exists():
        # Publishing alone needs no node table; without one there is nobody to push to.
        log.info("%s does not exist: no local-boot nodes to push to", path)
        return 0
    nodes = fanout_report.select_nodes(cli.load_ssitab(path), args.nodes)
    targets = fanout_report.targets(nodes, args.address)
    if not targets:
        if args.json:
            print(fanout_report.as_json([], {"published": published}))
        else:
            print("no local-boot nodes to push to")
        return 0
    opts = fanout.PushOptions(
        fanout=args.fanout, connect_timeout=args.connect_timeout, timeout=args.timeout,
        ssh_options=tuple(args.ssh_option), remote_lilo=args.remote_lilo,
        remote_spool=args.remote_spool, dry_run=args.dry_run)
    progress = fanout_report.Progress.for_stream(len(targets), sys.stderr, args.verbose)
    with pairspool.staged(kernel, initrd, cmdline) as staged:
        log.info("pushing %s (%d bytes) to %d node(s), fan-out %d", staged.path.name,
                 staged.payload_bytes, len(targets), opts.fanout)
        results = fanout.push(targets, staged, opts, progress)
        pair = {"id": staged.pair.ident(), **staged.pair.as_dict()}
    if args.json:
        print(fanout_report.as_json(results, {"published": published, "pair": pair}))
    else:
        print(fanout_report.table(results), end="")
    return fanout_report.exit_code(results)
