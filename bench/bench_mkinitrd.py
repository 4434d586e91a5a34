"""mkinitrd.ssi against dracut and Debian's mkinitramfs: build time, image size, boot time.

    .venv/bin/python bench/bench_mkinitrd.py [--boots 3] [--rebuilds 3] [--no-others]
        [--no-boot] [--json FILE]

Same kernel (the VM tests' Debian cloud kernel), same module set (the one
mkinitrd.ssi selects by default, handed to dracut --drivers and to
mkinitramfs' MODULES=list), same shared-root disk, same QEMU (TCG) machine.

- mkinitrd.ssi: `cold` is a build with an empty cache (freezing the agent
  included), `cold, agent cached` one whose frozen agent was already there,
  `edit` a rebuild after adding a node to ssitab (best of --rebuilds), each a
  whole fresh process. The agent's sources are snapshotted first, so an edit
  by someone else during the run cannot trigger a re-freeze.
- dracut and mkinitramfs are installed with apt into a throwaway overlay of /
  (tmpfs upper layer, private mount namespace; root needed), never on the
  host. They have no cache: `edit` is simply their second build.
- Boot: kernel start to the shared root's /sbin/init, read from /proc/uptime
  by that init (median of --boots), and the wall clock of the whole QEMU run.
  The VM has the virtio disk and a virtio NIC whose MAC is node 1's.

Goals (issue 3): rebuild after an ssitab edit < 1 s, image no larger than
dracut's, time to the shared root's init no worse than dracut's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mkinitrd_ssi import image  # noqa: E402
from mkinitrd_ssi.mkinitrd import AGENT_PACKAGE  # noqa: E402
from vm_tests import cluster, images  # noqa: E402
from vm_tests.kernel import Kernel, kernel  # noqa: E402
from vm_tests.qemu import Disk, Nic, Vm, VmConfig, console_args  # noqa: E402

MARK = "SSI-BENCH-INIT"
BENCH_INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc 2>/dev/null
read up rest < /proc/uptime
echo "{MARK} uptime=$up"
/bin/busybox poweroff -f
"""
# Runs mkinitrd.ssi from the snapshot of the agent, in a fresh interpreter each time.
RUN_OURS = """
import sys
from pathlib import Path
import mkinitrd_ssi.mkinitrd as m
m.AGENT_PACKAGE = Path(sys.argv[1])
sys.exit(m.main(sys.argv[2:]))
"""
# In a private mount namespace: an overlay of / on tmpfs, dracut and initramfs-tools
# installed into it with apt, each run twice. Prints one JSON line per build.
OTHERS = r"""
set -eu
T=$(mktemp -d /tmp/bench-ovl.XXXXXX)
cleanup() { umount -R "$T" 2>/dev/null || umount -l "$T" 2>/dev/null || true; rmdir "$T"; }
trap cleanup EXIT
mount -t tmpfs -o size=4g tmpfs "$T"
mkdir "$T/upper" "$T/work" "$T/m"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/upper,workdir=$T/work" "$T/m"
mount --rbind /dev "$T/m/dev"; mount -t proc proc "$T/m/proc"; mount -t sysfs sys "$T/m/sys"
mkdir -p "$T/m/bench" "$T/m/lib/modules/$KVER"
mount --bind "$OUT" "$T/m/bench"
mount --bind "$MODDIR" "$T/m/lib/modules/$KVER"
cp "$CONFIG" "$T/m/boot/config-$KVER"
chroot "$T/m" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends dracut-core initramfs-tools >"$OUT/apt.log" 2>&1
now() { date +%s%N; }
for i in 1 2; do
  t0=$(now)
  chroot "$T/m" dracut --quiet --force --no-hostonly --no-hostonly-cmdline --zstd \
      --no-early-microcode --kver "$KVER" --drivers "$MODULES" /bench/dracut.img \
      >>"$OUT/dracut.log" 2>&1
  t1=$(now)
  echo "{\"tool\": \"dracut\", \"run\": $i, \"ms\": $(( (t1 - t0) / 1000000 ))}"
done
for i in 1 2; do
  t0=$(now)
  chroot "$T/m" mkinitramfs -d /bench/itconf -o /bench/mkinitramfs.img "$KVER" \
      >>"$OUT/mkinitramfs.log" 2>&1
  t1=$(now)
  echo "{\"tool\": \"mkinitramfs\", \"run\": $i, \"ms\": $(( (t1 - t0) / 1000000 ))}"
done
"""


def snapshot_agent(base: Path) -> Path:
    dest = base / "agent" / "linuxrc_agent"
    shutil.copytree(AGENT_PACKAGE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def run_ours(agent: Path, cache: Path, argv: list[str]) -> tuple[float, str]:
    env = {**os.environ, "SSI_CACHE": str(cache)}
    env.pop("SOURCE_DATE_EPOCH", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN_OURS, str(agent), *argv], env=env,
                          capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"mkinitrd.ssi failed:\n{proc.stderr}")
    return seconds, proc.stdout


def bench_ours(base: Path, k: Kernel, rebuilds: int) -> tuple[dict[str, object], list[str]]:
    agent = snapshot_agent(base)
    root = base / "ours"
    (root / "etc").mkdir(parents=True)
    table = root / "etc/ssitab"
    table.write_text(cluster.SSITAB)
    out = base / "ssi.img"
    argv = ["--root", str(root), "--moddir", str(k.moddir), "--no-dhcpd", "-o", str(out)]
    cold, _ = run_ours(agent, base / "cache-cold", argv)
    # Same agent, empty segment cache: what a kernel or module-set change costs.
    warm_agent = base / "cache-warm"
    warm_agent.mkdir()
    shutil.copytree(base / "cache-cold" / "agent", warm_agent / "agent")
    cold_agent_cached, _ = run_ours(agent, warm_agent, argv)
    unchanged, _ = run_ours(agent, warm_agent, argv)
    edits = []
    for i in range(rebuilds):
        with table.open("a") as f:
            f.write(f"{100 + i} 10.77.0.{100 + i}/24 52:54:00:aa:00:{i:02x} 0 -\n")
        seconds, summary = run_ours(agent, warm_agent, argv)
        edits.append(seconds)
    modules = [line.rsplit("/", 1)[1].removesuffix(".ko")
               for line in image_member(out, "etc/ssi/modules").decode().split()]
    return {"image": out, "cold": cold, "cold_agent_cached": cold_agent_cached,
            "unchanged": unchanged, "edit": min(edits), "summary": summary.strip()}, modules


def image_member(path: Path, name: str) -> bytes:
    return next(m.data for m in image.read_image(path.read_bytes()) if m.path == name)


def bench_others(base: Path, k: Kernel, modules: list[str]) -> dict[str, dict[str, object]]:
    out = base / "others"
    conf = out / "itconf"
    conf.mkdir(parents=True)
    (conf / "initramfs.conf").write_text("MODULES=list\nBUSYBOX=auto\nCOMPRESS=zstd\n"
                                         "RUNSIZE=10%\nFSTYPE=ext4\n")
    (conf / "modules").write_text("".join(f"{m}\n" for m in modules))
    for d in ("conf.d", "hooks", "scripts"):
        (conf / d).mkdir()
    env = {**os.environ, "KVER": k.kver, "MODDIR": str(k.moddir), "OUT": str(out),
           "CONFIG": str(k.vmlinuz.parent / f"config-{k.kver}"),
           "MODULES": " ".join(modules)}
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           OTHERS], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        logs = "".join(p.read_text()[-1500:] for p in out.glob("*.log"))
        raise SystemExit(f"dracut/mkinitramfs bench failed:\n{proc.stderr}\n{logs}")
    runs: dict[str, list[float]] = {}
    for line in proc.stdout.splitlines():
        rec = json.loads(line)
        runs.setdefault(rec["tool"], []).append(rec["ms"] / 1000)
    return {tool: {"image": out / f"{tool}.img", "cold": times[0], "edit": times[1]}
            for tool, times in runs.items()}


def root_disk(base: Path) -> Path:
    tree = images.shared_root_tree(base / "roottree", init=BENCH_INIT)
    # systemd (in dracut's initrd) refuses to switch into a root without os-release.
    (tree / "etc/os-release").write_text('NAME="ssi bench root"\nID=ssibench\n')
    return images.ext4_image(base / "root.img", tree, size_mb=64, label=cluster.ROOT_LABEL)


def boot_once(k: Kernel, initrd: Path, disk: Path, log: Path) -> tuple[float, float]:
    config = VmConfig(kernel=k.vmlinuz, initrd=initrd,
                      append=console_args(["root=/dev/vda", "ro"]),
                      disks=[Disk(disk, extra=",snapshot=on")], nics=[Nic(cluster.MAC_N1)])
    t0 = time.perf_counter()
    with Vm(config, log) as vm:
        match = vm.wait_for(MARK + r" uptime=([0-9.]+)", timeout=300)
        vm.wait_exit(60)
    return float(match.group(1)), time.perf_counter() - t0


def size_and_files(path: Path) -> tuple[int, int | str]:
    try:
        files: int | str = len(image.read_image(path.read_bytes()))
    except Exception as e:  # a format our lister does not read is not a bench failure
        files = f"? ({e})"
    return path.stat().st_size, files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--rebuilds", type=int, default=3)
    parser.add_argument("--no-others", action="store_true", help="mkinitrd.ssi alone")
    parser.add_argument("--no-boot", action="store_true", help="build times and sizes only")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    k = kernel()
    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mkinitrd.") as tmp:
        base = Path(tmp)
        ours, modules = bench_ours(base, k, args.rebuilds)
        rows["mkinitrd.ssi"] = ours
        print(f"mkinitrd.ssi: {ours['summary']}", file=sys.stderr)
        if not args.no_others:
            if os.geteuid() != 0:
                print("dracut/mkinitramfs: skipped (needs root for the throwaway overlay)",
                      file=sys.stderr)
            else:
                rows.update(bench_others(base, k, modules))
        disk = None if args.no_boot else root_disk(base)
        for name, row in rows.items():
            img = Path(str(row["image"]))
            row["size"], row["files"] = size_and_files(img)
            if disk is not None:
                ups, walls = [], []
                for i in range(args.boots):
                    up, wall = boot_once(k, img, disk, base / f"{name}-{i}.log")
                    ups.append(up)
                    walls.append(wall)
                row["init_uptime"] = statistics.median(ups)
                row["qemu_wall"] = statistics.median(walls)
            row["image"] = str(img)
        print(table(rows, k, modules, args))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0


def fmt(value: object, unit: str = "s") -> str:
    if isinstance(value, float):
        return f"{value:.2f} {unit}"
    return "-" if value is None else str(value)


def table(rows: dict[str, dict[str, object]], k: Kernel, modules: list[str],
          args: argparse.Namespace) -> str:
    lines = [f"Kernel {k.kver}, {len(modules)} modules ({' '.join(modules)}), "
             f"QEMU TCG, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
             f"boot figures are medians of {args.boots}.", "",
             "| builder | cold build | cold, agent cached | rebuild after ssitab edit "
             "| image (zstd) | entries | kernel start to shared root's init | QEMU run |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        size = r.get("size")
        lines.append(" | ".join([
            f"| {name}", fmt(r.get("cold")), fmt(r.get("cold_agent_cached")), fmt(r.get("edit")),
            f"{int(str(size)) / 1e6:.1f} MB" if size is not None else "-",
            fmt(r.get("files")), fmt(r.get("init_uptime")), fmt(r.get("qemu_wall")) + " |"]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
