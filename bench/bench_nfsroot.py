"""Kernel start to the shared root's init: the root over NFS against the root on a virtio disk.

    .venv/bin/python bench/bench_nfsroot.py [--repeats 5] [--keep DIR]

Root needed. One run, one ramdisk (mkinitrd.ssi's default build), one
shared root tree: as an ext4 image on a virtio disk, and exported by a real
nfs-ganesha in a private namespace (vm_tests/nfs.py). Every node is node 1
with its NIC on a tap in that namespace, so the network stage is the same
for all; the disk variant simply has the disk too. Variants are interleaved
(disk, nfs4, nfs4 + overlay, nfs v3, disk, ...) and booted one at a time
(TCG on a shared machine: two at once would measure each other).

Per boot, from the guest's own clocks: the shared root's init prints its
uptime first thing (kernel start to init, the figure), and node.env gives
SSI_BOOT_MS (the agent: exec of /init to switch_root) and SSI_STAGES_MS
(each stage; `root` is where NFS differs: its modules, the server, the mount).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mkinitrd_ssi.mkinitrd import main as mkinitrd  # noqa: E402
from vm_tests import cluster, images  # noqa: E402
from vm_tests.kernel import kernel  # noqa: E402
from vm_tests.nfs import NfsNet, nfs_network  # noqa: E402
from vm_tests.qemu import Disk, Nic, Vm, VmConfig, console_args  # noqa: E402

UPTIME = "SSI-BENCH-UPTIME"
BENCH_INIT = f"""#!/bin/busybox sh
read up rest < /proc/uptime 2>/dev/null || {{ /bin/busybox mount -t proc proc /proc;
    read up rest < /proc/uptime; }}
echo "{UPTIME} $up"
exec /sbin/init
"""


def variants(net: NfsNet, disk: Path) -> dict[str, tuple[str, list[Disk]]]:
    """name -> (root= and friends, disks)."""
    on_disk = [Disk(disk, extra=",snapshot=on")]
    return {
        "virtio disk (ext4)": (f"root=LABEL={cluster.ROOT_LABEL}", on_disk),
        "NFS 4.2": (f"root={net.server.root('nfs4')}", []),
        "NFS 4.2 + tmpfs overlay": (f"root={net.server.root('nfs4')} ssi.overlay=tmpfs", []),
        "NFS 3": (f"root={net.server.root('nfs', 'vers=3')}", []),
    }


def boot_once(net: NfsNet, kern: Path, initrd: Path, args: str, disks: list[Disk],
              log: Path, timeout: float) -> dict[str, float]:
    config = VmConfig(kernel=kern, initrd=initrd,
                      append=console_args([args, "init=/sbin/init-bench"]),
                      nics=[Nic(cluster.MAC_N1, netdev=net.netdev())], netns=net.ns,
                      disks=disks)
    with Vm(config, log) as vm:
        env = vm.node_env(timeout=timeout)
        up = vm.wait_for(rf"{UPTIME} ([0-9.]+)", timeout=5)
    stages = {k: float(v) / 1000 for k, v in
              (w.split(":") for w in env["SSI_STAGES_MS"].split())}
    return {"init": float(up.group(1)), "agent": int(env["SSI_BOOT_MS"]) / 1000,
            "root": stages.get("root", 0.0), "devices": stages.get("devices", 0.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="boots per variant (default 5)")
    parser.add_argument("--timeout", type=float, default=300, help="per boot, seconds")
    parser.add_argument("--keep", type=Path, help="copy the consoles here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_nfsroot: needs root (namespace, taps)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the cleanup runs on a kill
    k = kernel()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-nfsroot.") as tmp:
        base = Path(tmp)
        (base / "admin" / "etc").mkdir(parents=True)
        (base / "admin" / "etc" / "ssitab").write_text(cluster.SSITAB)
        initrd = base / "initrd.img"
        if mkinitrd(["--root", str(base / "admin"), "--moddir", str(k.moddir), "--no-dhcpd",
                     "-o", str(initrd)]) != 0:
            return 1
        tree = images.shared_root_tree(base / "tree")
        (tree / "sbin" / "init-bench").write_text(BENCH_INIT)
        (tree / "sbin" / "init-bench").chmod(0o755)
        disk = images.ext4_image(base / "root.img", tree, size_mb=64, label=cluster.ROOT_LABEL)
        logs = base / "logs"
        logs.mkdir()
        results: dict[str, list[dict[str, float]]] = {}
        with nfs_network(base / "net", tree) as net:
            table = variants(net, disk)
            for rep in range(args.repeats):
                for i, (name, (root, disks)) in enumerate(table.items()):
                    r = boot_once(net, k.vmlinuz, initrd, root, disks,
                                  logs / f"v{i}-r{rep}.log", args.timeout)
                    results.setdefault(name, []).append(r)
                    print(f"  round {rep + 1}: {name:<24} init at {r['init']:6.2f} s, agent "
                          f"{r['agent']:5.2f} s, root stage {r['root']:5.2f} s", flush=True)
        if args.keep:
            shutil.copytree(logs, args.keep, dirs_exist_ok=True)
    print(f"\n{args.repeats} boots per variant, interleaved, one at a time, QEMU TCG; "
          f"{time.monotonic() - started:.0f} s in all; kernel {k.kver}")
    print("| root | kernel start -> init (median, min-max) | agent | root stage | devices |")
    print("|---|---|---|---|---|")
    base_init = statistics.median(r["init"] for r in next(iter(results.values())))
    for name, rs in results.items():
        inits = [r["init"] for r in rs]
        med = statistics.median(inits)
        delta = "" if med == base_init else f" ({med - base_init:+.2f} s)"
        print(f"| {name} | {med:.2f} s{delta}, {min(inits):.2f}-{max(inits):.2f} | "
              + " | ".join(f"{statistics.median(r[key] for r in rs):.2f} s"
                           for key in ("agent", "root", "devices")) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
