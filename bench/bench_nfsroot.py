"""Kernel start to the shared root's init: the root over NFS against the root on a virtio disk,
and against dracut's own NFS root.

    .venv/bin/python bench/bench_nfsroot.py [--repeats 5] [--keep DIR] [--no-dracut]

Root needed. One run, one ramdisk (mkinitrd.ssi's default build), one
shared root tree: as an ext4 image on a virtio disk, and exported by a real
nfs-ganesha in a private namespace (vm_tests/nfs.py). Every node is node 1
with its NIC on a tap in that namespace, so the network stage is the same
for all; the disk variant simply has the disk too. Variants are interleaved
(disk, nfs4, nfs4 + overlay, nfs v3, disk, ...) and booted one at a time
(TCG on a shared machine: two at once would measure each other).

The anchor: dracut (Debian 12's, from the anchors' chroot, bench/anchors.py)
builds one generic image for the same kernel, `--no-hostonly -m "base
rootfs-block kernel-modules nfs"` (nfs pulls in network, network-legacy and
kernel-network-modules: dracut's NIC drivers, dhclient, udev) with
`--drivers` our default module list, as bench_initrd gives it its module
set. It boots the same tree from the same server as `root=nfs4:SERVER:PATH
ro ip=CLIENT:::MASK:n1:eth0:off net.ifnames=0` (dracut.cmdline's static form,
node 1's address from ssitab), and the same disk as root=LABEL=, interleaved
with ours. A dracut boot that fails (its emergency shell, or no init within
--timeout) is reported as such and not retried.

Per boot, from the guest's own clocks: the shared root's init prints its
uptime first thing (kernel start to init, the figure) and what is mounted on
/ (the NFS version both sides negotiated); for ours node.env gives
SSI_BOOT_MS (the agent: exec of /init to switch_root) and SSI_STAGES_MS
(each stage; `root` is where NFS differs: its modules, the server, the mount).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import anchors  # noqa: E402

from linuxrc_agent import ssitab  # noqa: E402
from mkinitrd_ssi.initrd.kmod import DEFAULT_MODULES  # noqa: E402
from mkinitrd_ssi.mkinitrd import main as mkinitrd  # noqa: E402
from vm_tests import cluster, images  # noqa: E402
from vm_tests.kernel import Kernel, kernel  # noqa: E402
from vm_tests.nfs import NfsNet, nfs_network  # noqa: E402
from vm_tests.qemu import BootTimeout, Disk, Nic, Vm, VmConfig, console_args  # noqa: E402

UPTIME = "SSI-BENCH-UPTIME"
ROOT_MOUNT = "SSI-BENCH-ROOT"
# The uptime is read before anything else; then the last mount on / (an initramfs
# root may be listed under it) and on to the test init.
BENCH_INIT = f"""#!/bin/busybox sh
read up rest < /proc/uptime 2>/dev/null || {{ /bin/busybox mount -t proc proc /proc;
    read up rest < /proc/uptime; }}
echo "{UPTIME} $up"
root=
while read dev mnt fs opts rest; do [ "$mnt" = / ] && root="$fs $opts"; done < /proc/mounts
echo "{ROOT_MOUNT} $root"
exec /sbin/init
"""
DRACUT_MODULES = "base rootfs-block kernel-modules nfs"
# dracut's own failure markers: the emergency shell, or (rd.shell=0) init giving up, which
# panics the kernel, and panic=-1 with -no-reboot ends QEMU.
DRACUT_FAILED = r"Entering emergency mode|Could not boot|dracut: FATAL|Kernel panic"


@dataclass(frozen=True)
class Variant:
    args: str  # root= and friends
    disks: list[Disk]
    dracut: bool = False  # dracut's image, not ours: no node.env, its own failure markers


def dracut_ip() -> str:
    """dracut's static ip= for node 1 (dracut.cmdline: client:server:gw:netmask:host:if:off)."""
    node = next(n for n in ssitab.parse(cluster.SSITAB).nodes if n.number == 1)
    mask = ssitab.int_to_ip((0xFFFFFFFF << (32 - node.prefix)) & 0xFFFFFFFF)
    # net.ifnames=0 keeps the kernel's name, so the line can name the interface.
    return f"ip={node.ip}:::{mask}:{node.hostname}:eth0:off net.ifnames=0"


def variants(net: NfsNet, disk: Path, dracut: bool) -> dict[str, Variant]:
    on_disk = [Disk(disk, extra=",snapshot=on")]
    table = {
        "virtio disk (ext4)": Variant(f"root=LABEL={cluster.ROOT_LABEL}", on_disk),
        "NFS 4.2": Variant(f"root={net.server.root('nfs4')}", []),
        "NFS 4.2 + tmpfs overlay": Variant(f"root={net.server.root('nfs4')} ssi.overlay=tmpfs",
                                           []),
        "NFS 3": Variant(f"root={net.server.root('nfs', 'vers=3')}", []),
    }
    if dracut:
        # rd.shell=0: a failed dracut boot ends (see DRACUT_FAILED) instead of waiting in
        # a shell until the timeout; it changes nothing on the way to a good boot.
        table["dracut, virtio disk"] = Variant(
            f"root=LABEL={cluster.ROOT_LABEL} ro rd.shell=0", on_disk, dracut=True)
        table["dracut, NFS 4.2"] = Variant(
            f"root={net.server.root('nfs4')} ro {dracut_ip()} rd.shell=0", [], dracut=True)
    return table


def build_dracut(base: Path, k: Kernel) -> Path:
    """dracut's generic NFS-root image for this kernel, built in the anchors' chroot."""
    out = base / "dracut"
    out.mkdir()
    command = (f"dracut --force --no-hostonly --no-hostonly-cmdline --no-early-microcode --zstd "
               f"-m '{DRACUT_MODULES}' --drivers '{' '.join(DEFAULT_MODULES)}' "
               f"--kver {k.kver} /bench/dracut-nfs.img >/bench/dracut.log 2>&1")
    proc = anchors.run_in_chroot(command, moddir=k.moddir, kver=k.kver, out=out)
    if proc.returncode != 0:
        raise SystemExit(f"bench_nfsroot: dracut failed:\n{proc.stderr}\n"
                         f"{(out / 'dracut.log').read_text()[-3000:]}")
    return out / "dracut-nfs.img"


def boot_once(net: NfsNet, kern: Path, initrd: Path, variant: Variant,
              log: Path, timeout: float) -> dict[str, float | str]:
    config = VmConfig(kernel=kern, initrd=initrd,
                      append=console_args([variant.args, "init=/sbin/init-bench"]),
                      nics=[Nic(cluster.MAC_N1, netdev=net.netdev())], netns=net.ns,
                      disks=variant.disks)
    with Vm(config, log) as vm:
        if variant.dracut:
            try:
                seen = vm.wait_for(rf"{UPTIME} ([0-9.]+)|{DRACUT_FAILED}", timeout=timeout)
            except BootTimeout as e:
                what = "QEMU exited" if str(e).startswith("QEMU exited") else \
                    f"no init within {timeout:.0f} s"
                raise BootTimeout(f"dracut: {what}\n{e}") from None
            if seen.group(1) is None:
                raise BootTimeout(f"dracut: {seen.group(0)!r} on the console")
            up = seen
            result: dict[str, float | str] = {}
        else:
            env = vm.node_env(timeout=timeout)
            up = vm.wait_for(rf"{UPTIME} ([0-9.]+)", timeout=5)
            stages = {k: float(v) / 1000 for k, v in
                      (w.split(":") for w in env["SSI_STAGES_MS"].split())}
            result = {"agent": int(env["SSI_BOOT_MS"]) / 1000,
                      "root": stages.get("root", 0.0), "devices": stages.get("devices", 0.0)}
        mount = vm.wait_for(rf"{ROOT_MOUNT} (\S+) (\S+)", timeout=5)
    vers = re.search(r"(?:^|,)vers=([0-9.]+)", mount.group(2))
    result["init"] = float(up.group(1))
    result["mount"] = mount.group(1) + (f" {vers.group(1)}" if vers else "")
    return result


def median(rs: list[dict[str, float | str]], key: str) -> float:
    values = [v for r in rs if isinstance(v := r.get(key), float)]
    return statistics.median(values) if values else math.nan


def seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="boots per variant (default 5)")
    parser.add_argument("--timeout", type=float, default=300, help="per boot, seconds")
    parser.add_argument("--keep", type=Path, help="copy the consoles here")
    parser.add_argument("--no-dracut", action="store_true",
                        help="ours only (no anchors' chroot, no dracut image)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_nfsroot: needs root (namespace, taps, the anchors' chroot)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the cleanup runs on a kill
    k = kernel()
    versions = {} if args.no_dracut else anchors.ensure_chroot()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-nfsroot.") as tmp:
        base = Path(tmp)
        (base / "admin" / "etc").mkdir(parents=True)
        (base / "admin" / "etc" / "ssitab").write_text(cluster.SSITAB)
        initrd = base / "initrd.img"
        if mkinitrd(["--root", str(base / "admin"), "--moddir", str(k.moddir), "--no-dhcpd",
                     "-o", str(initrd)]) != 0:
            return 1
        images_used = {"ours": initrd}
        if not args.no_dracut:
            print("building: dracut's NFS-root image (anchors' chroot) ...", file=sys.stderr)
            images_used["dracut"] = build_dracut(base, k)
        tree = images.shared_root_tree(base / "tree")
        (tree / "sbin" / "init-bench").write_text(BENCH_INIT)
        (tree / "sbin" / "init-bench").chmod(0o755)
        disk = images.ext4_image(base / "root.img", tree, size_mb=64, label=cluster.ROOT_LABEL)
        logs = base / "logs"
        logs.mkdir()
        results: dict[str, list[dict[str, float | str]]] = {}
        failed: dict[str, str] = {}
        with nfs_network(base / "net", tree) as net:
            table = variants(net, disk, dracut=not args.no_dracut)
            for rep in range(args.repeats):
                for i, (name, variant) in enumerate(table.items()):
                    if name in failed:
                        continue
                    log = logs / f"v{i}-r{rep}.log"
                    image = images_used["dracut" if variant.dracut else "ours"]
                    try:
                        r = boot_once(net, k.vmlinuz, image, variant, log, args.timeout)
                    except BootTimeout as e:
                        if not variant.dracut:
                            raise
                        # dracut's row reports its failure; the others go on.
                        failed[name] = str(e).splitlines()[0]
                        print(f"  round {rep + 1}: {name:<24} FAILED: {failed[name]} "
                              f"(console: {log.name})\n{str(e)[-1500:]}", flush=True)
                        continue
                    results.setdefault(name, []).append(r)
                    extra = "" if variant.dracut else (
                        f", agent {r['agent']:5.2f} s, root stage {r['root']:5.2f} s")
                    print(f"  round {rep + 1}: {name:<24} init at {r['init']:6.2f} s{extra} "
                          f"({r['mount']})", flush=True)
        if args.keep:
            shutil.copytree(logs, args.keep, dirs_exist_ok=True)
        sizes = {name: path.stat().st_size for name, path in images_used.items()}
    print(f"\n{args.repeats} boots per variant, interleaved, one at a time, QEMU TCG; "
          f"{time.monotonic() - started:.0f} s in all; kernel {k.kver}; ramdisks: ours "
          f"{sizes['ours'] / 1e6:.2f} MB"
          + (f", dracut {versions.get('dracut-core', '?')} {sizes['dracut'] / 1e6:.2f} MB "
             f"(-m '{DRACUT_MODULES}', --drivers: our default modules)"
             if "dracut" in sizes else ""))
    print("| root | kernel start -> init (median, min-max) | / mounted as | agent | root stage "
          "| devices |")
    print("|---|---|---|---|---|---|")
    base_init = median(next(iter(results.values())), "init") if results else math.nan
    for name in table:
        if name not in results:
            print(f"| {name} | failed: {failed[name]} | | | | |")
            continue
        rs = results[name]
        if name in failed:
            name += f" (then failed: {failed[name]})"
        inits = [float(r["init"]) for r in rs]
        med = statistics.median(inits)
        delta = "" if med == base_init else f" ({med - base_init:+.2f} s)"
        mounts = ", ".join(sorted({str(r["mount"]) for r in rs}))
        print(f"| {name} | {med:.2f} s{delta}, {min(inits):.2f}-{max(inits):.2f} | {mounts} | "
              + " | ".join(seconds(median(rs, key)) for key in ("agent", "root", "devices"))
              + " |")
    for ours, theirs in (("NFS 4.2", "dracut, NFS 4.2"),
                         ("virtio disk (ext4)", "dracut, virtio disk")):
        if ours in results and theirs in results:
            a, b = median(results[ours], "init"), median(results[theirs], "init")
            print(f"ours / dracut, {ours}: {a:.2f} s / {b:.2f} s = {a / b:.2f} "
                  f"(medians, kernel start -> init)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
