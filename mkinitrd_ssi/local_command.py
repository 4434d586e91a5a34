"""`lilo.ssi --local-only`: sync this node's boot partition, report its pair
(--hashes), or install a pair pushed by the admin node (--from SPOOL).

What it prints is what the admin side's push reads back: one JSON object with
--json or --hashes, else one line for a person.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from linuxrc_agent.ssitab import Node
from mkinitrd_ssi import cli, localnode, pairspool
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.localsync import local_only
from mkinitrd_ssi.run import log


def _report(args: argparse.Namespace, where: str, status: str, reason: str = "",
            **extra: Any) -> int:
    if args.json or args.hashes:
        print(json.dumps({"status": status, "reason": reason, "boot_dir": where, **extra}))
    else:
        print(f"{where}: {status}" + (f" ({reason})" if reason else ""))
    return 1 if status == "failed" else 0


def _source(args: argparse.Namespace, root: cli.Root) -> tuple[Path, Path, str]:
    """Kernel, ramdisk and kernel arguments to install."""
    if args.from_spool is not None:
        kernel, initrd, pair = pairspool.receive(args.from_spool)
        assert pair.append is not None  # receive() refuses a manifest without one
        return kernel, initrd, pair.append
    from mkinitrd_ssi.lilo import cluster_cmdline

    # A node must not rewrite the cluster's kept arguments: --cmdline here is for this sync.
    cmdline = cluster_cmdline(args, root, keep=False)
    return (args.kernel or root("/boot/vmlinuz"), args.initrd or root("/boot/initrd.img"),
            cmdline)


def _sync(args: argparse.Namespace, boot: Path, kernel: Path, initrd: Path,
          cmdline: str) -> int:
    if args.dry_run:
        have = localnode.installed_pair(boot)
        want = pairspool.wanted_pair(kernel, initrd, cmdline)
        if have is not None and have.satisfies(want):
            return _report(args, str(boot), "unchanged")
        return _report(args, str(boot), "stale", "would update (dry run)")
    log.info("syncing %s from %s + %s with: %s", boot, kernel, initrd, cmdline)
    result = local_only(boot, kernel, initrd, cmdline)
    return _report(args, str(boot), result.status.value, result.reason)


def run(args: argparse.Namespace, root: cli.Root) -> int:
    where = str(args.boot_dir) if args.boot_dir is not None else "boot partition"

    def node_of() -> Node:
        return localnode.this_node(cli.load_ssitab(cli.ssitab_path(args)))

    try:
        # The pair is checked before the partition is touched: a bad push fails
        # without mounting anything.
        source = None if args.hashes else _source(args, root)
        with localnode.boot_partition(args.boot_dir, node_of,
                                      read_only=args.hashes or args.dry_run) as boot:
            if source is None:
                pair = localnode.installed_pair(boot)
                return _report(args, str(boot), "ok",
                               pair=None if pair is None else pair.as_dict())
            return _sync(args, boot, *source)
    except localnode.NoBootPartition as e:
        return _report(args, where, "no-boot-partition", str(e))
    except localnode.NotLocal as e:
        return _report(args, where, "skipped", str(e))
    except SsiError as e:
        if not args.json and not args.hashes:
            raise
        # The admin side reads stdout: give it the reason there too.
        print(f"lilo.ssi: {e}", file=sys.stderr)
        return _report(args, where, "failed", str(e))
    finally:
        if args.from_spool is not None and not args.dry_run:
            pairspool.discard(args.from_spool)
