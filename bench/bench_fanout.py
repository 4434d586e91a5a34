"""Wall time and bytes of `lilo.ssi` pushing a pair to N local-boot nodes, by fan-out.

Every node is a network namespace with its own sshd on this machine
(vm_tests.sshnodes), so the figures are those of real ssh, scp and
`lilo.ssi --local-only` processes, all sharing this machine's CPUs: they show
how the push grows with N and with the fan-out, not what a real cluster's
network would give. Bytes are counted on the nodes' interfaces (everything
the nodes received, ssh overhead included).

    sudo .venv/bin/python bench/bench_fanout.py                # N = 1, 8, 32, 64
    sudo .venv/bin/python bench/bench_fanout.py --nodes 8 --fanouts 1,8 --kernel-mib 10 \\
        --initrd-mib 60

Each (N, fan-out) run starts from empty boot directories (every node stale),
then pushes again (every node unchanged: the cost of the hash check alone, with
the bytes each node received for it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vm_tests import netns
from vm_tests.sshnodes import SshCluster

MIB = 1 << 20


def _ints(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",")})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=_ints, default=[1, 8, 32, 64], metavar="N,...")
    parser.add_argument("--fanouts", type=_ints, default=[1, 8, 64], metavar="F,...",
                        help="fan-outs to try; those above N are left out (same as N)")
    parser.add_argument("--max-serial", type=int, default=8, metavar="N",
                        help="try fan-out 1 only up to this many nodes (it is N times one)")
    parser.add_argument("--kernel-mib", type=int, default=8)
    parser.add_argument("--initrd-mib", type=int, default=24)
    parser.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    return parser


def _push(cluster: SshCluster, n: int, root: Path, fanout: int,
          extra: list[str]) -> tuple[float, int, dict[str, int]]:
    # Only the N targets count: the other namespaces hear broadcasts (ARP) too.
    targets = [cluster.nodes[k] for k in range(1, n + 1)]
    rx = [node.rx_bytes() for node in targets]
    started = time.monotonic()
    rc, out, err = cluster.lilo(["--root", str(root), "--json", "--fanout", str(fanout),
                                 *cluster.push_args(), *extra], timeout=3600)
    wall = time.monotonic() - started
    if rc != 0:
        raise SystemExit(f"lilo.ssi failed ({rc}):\n{err}\n{out}")
    sent = sum(node.rx_bytes() - before for node, before in zip(targets, rx, strict=True))
    return wall, sent, json.loads(out)["counts"]


def _empty(boot: Path) -> None:
    for child in boot.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def main() -> int:
    args = _parser().parse_args()
    why = netns.available()
    if why:
        raise SystemExit(f"bench_fanout: {why}")
    extra = [a for opt in args.ssh_option for a in ("--ssh-option", opt)]
    rows = []
    if not args.json:
        print(f"pair {args.kernel_mib} + {args.initrd_mib} MiB, {os.cpu_count()} CPUs "
              "shared by the admin side and every node")
        print(HEADER)
    with tempfile.TemporaryDirectory(prefix="bench-fanout.") as tmp:
        work = Path(tmp)
        root = work / "root"
        (root / "boot").mkdir(parents=True)
        (root / "etc/ssi").mkdir(parents=True)
        (root / "boot/vmlinuz").write_bytes(os.urandom(args.kernel_mib * MIB))
        (root / "boot/initrd.img").write_bytes(os.urandom(args.initrd_mib * MIB))
        (root / "etc/ssi/cmdline").write_text("root=LABEL=ssiroot console=ttyS0\n")
        payload = (args.kernel_mib + args.initrd_mib) * MIB
        with SshCluster(work / "cluster", max(args.nodes)) as cluster:
            for n in args.nodes:
                (root / "etc/ssitab").write_text(cluster.ssitab(range(1, n + 1)))
                fanouts = sorted({min(f, n) for f in args.fanouts
                                  if f > 1 or n <= args.max_serial})
                for fanout in fanouts:
                    for node in list(cluster.nodes.values())[:n]:
                        _empty(node.boot)
                    wall, sent, counts = _push(cluster, n, root, fanout, extra)
                    assert counts == {"updated": n}, counts
                    check, check_sent, counts = _push(cluster, n, root, fanout, extra)
                    assert counts == {"unchanged": n}, counts
                    row = {"nodes": n, "fanout": fanout, "push_s": round(wall, 2),
                           "sent_mib": round(sent / MIB, 1),
                           "payload_mib": round(n * payload / MIB, 1),
                           "unchanged_s": round(check, 2),
                           "unchanged_kib_per_node": round(check_sent / 1024 / n, 1)}
                    rows.append(row)
                    if not args.json:
                        print(_row(row), flush=True)
    if args.json:
        print(json.dumps({"pair_mib": args.kernel_mib + args.initrd_mib,
                          "cpus": os.cpu_count(), "rows": rows}, indent=2))
    return 0


HEADER = f"{'nodes':>5} {'fanout':>6} {'push s':>7} {'sent MiB':>9} {'pair x N MiB':>12} " \
         f"{'unchanged s':>11} {'KiB/node':>8}"


def _row(r: dict[str, float]) -> str:
    return (f"{r['nodes']:>5} {r['fanout']:>6} {r['push_s']:>7.2f} {r['sent_mib']:>9.1f} "
            f"{r['payload_mib']:>12.1f} {r['unchanged_s']:>11.2f} "
            f"{r['unchanged_kib_per_node']:>8.1f}")


if __name__ == "__main__":
    sys.exit(main())
