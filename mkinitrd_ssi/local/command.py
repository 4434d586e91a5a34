"""`lilo.ssi --local-only`: sync this node's boot partition, report its pair
(--hashes), or install a pair pushed by the admin node (--from SPOOL).

What it prints is what the admin side's push reads back: one JSON object with
--json or --hashes, else one line for a person.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linuxrc_agent.ssitab import Node
from mkinitrd_ssi import cli
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.local import node
from mkinitrd_ssi.local.partition import local_only
from mkinitrd_ssi.netboot.cmdline_file import cluster_cmdline
from mkinitrd_ssi.push import spool
from mkinitrd_ssi.run import log


@dataclass(frozen=True)
class LocalOptions:
    root: cli.Root
    ssitab: Path
    boot_dir: Path | None = None  # the partition already mounted here; else ssitab's bootdev
    hashes: bool = False  # report the pair, change nothing
    from_spool: Path | None = None  # install the pair the admin node pushed there
    json: bool = False
    dry_run: bool = False
    kernel: Path | None = None  # default ROOT/boot/vmlinuz
    initrd: Path | None = None  # default ROOT/boot/initrd.img
    cmdline: str | None = None  # for this sync only; default the kept one


def _report(args: LocalOptions, where: str, status: str, reason: str = "",
            **extra: Any) -> int:
    if args.json or args.hashes:
        print(json.dumps({"status": status, "reason": reason, "boot_dir": where, **extra}))
    else:
        print(f"{where}: {status}" + (f" ({reason})" if reason else ""))
    return 1 if status == "failed" else 0


def _source(args: LocalOptions) -> tuple[Path, Path, str]:
    """Kernel, ramdisk and kernel arguments to install."""
    if args.from_spool is not None:
        kernel, initrd, pair = spool.receive(args.from_spool)
        assert pair.append is not None  # receive() refuses a manifest without one
        return kernel, initrd, pair.append
    # A node must not rewrite the cluster's kept arguments: --cmdline here is for this sync.
    cmdline = cluster_cmdline(args.root, args.cmdline, keep=False, dry_run=args.dry_run)
    return (args.kernel or args.root("/boot/vmlinuz"),
            args.initrd or args.root("/boot/initrd.img"), cmdline)


def _sync(args: LocalOptions, boot: Path, kernel: Path, initrd: Path,
          cmdline: str) -> int:
    if args.dry_run:
        have = node.installed_pair(boot)
        want = spool.wanted_pair(kernel, initrd, cmdline)
        if have is not None and have.satisfies(want):
            return _report(args, str(boot), "unchanged")
        return _report(args, str(boot), "stale", "would update (dry run)")
    log.info("syncing %s from %s + %s with: %s", boot, kernel, initrd, cmdline)
    result = local_only(boot, kernel, initrd, cmdline, loader_root=args.root.path)
    return _report(args, str(boot), result.status.value, result.reason)


def run(args: LocalOptions) -> int:
    where = str(args.boot_dir) if args.boot_dir is not None else "boot partition"

    def node_of() -> Node:
        return node.this_node(cli.load_ssitab(args.ssitab))

    try:
        # The pair is checked before the partition is touched: a bad push fails
        # without mounting anything.
        source = None if args.hashes else _source(args)
        with node.boot_partition(args.boot_dir, node_of,
                                      read_only=args.hashes or args.dry_run) as boot:
            if source is None:
                pair = node.installed_pair(boot)
                return _report(args, str(boot), "ok",
                               pair=None if pair is None else pair.as_dict())
            return _sync(args, boot, *source)
    except node.NoBootPartition as e:
        return _report(args, where, "no-boot-partition", str(e))
    except node.NotLocal as e:
        return _report(args, where, "skipped", str(e))
    except SsiError as e:
        if not args.json and not args.hashes:
            raise
        # The admin side reads stdout: give it the reason there too.
        print(f"lilo.ssi: {e}", file=sys.stderr)
        return _report(args, where, "failed", str(e))
    finally:
        if args.from_spool is not None and not args.dry_run:
            spool.discard(args.from_spool)
