"""mkinitrd.ssi against dracut and Debian's mkinitramfs on one minimal module set.

    .venv/bin/python bench/bench_initrd.py [--boots 3] [--rebuilds 5] [--json FILE]

Root needed (the anchors' chroot). In one run, with the same kernel (the VM
tests' Debian cloud kernel), the same modules (virtio_blk, virtio_net,
virtio_pci, ext4 and their dependencies: the closure mkinitrd.ssi computes is
handed verbatim to dracut --drivers and to mkinitramfs' MODULES=list), the
same shared-root disk and the same QEMU (TCG) machine:

- build time: `cold` is the first build (mkinitrd.ssi: empty caches, its own
  and PyInstaller's, so the agent is frozen; `agent cached` is a build whose
  frozen agent exists but nothing else), `rebuild` the median of --rebuilds builds,
  each after adding a node to ssitab (the anchors read no ssitab: theirs is
  simply another build). Every mkinitrd.ssi build is a whole fresh process.
- image size: as written (each tool's own zstd level), and decompressed.
- boot: kernel start to the shared root's /sbin/init, read by that init from
  /proc/uptime (guest time: host load matters less), median of --boots, the
  builders interleaved so that load drift hits them alike. `floor` is a
  busybox /init alone in the ramdisk: what the kernel costs without any
  userspace.

dracut and initramfs-tools run in a cached debootstrap chroot (bench/anchors.py),
never on the host. Then the report: ratios (ours / anchor), where our bytes go
(by part, decompressed and zstd-compressed on their own), and where our boot
time goes (the agent's own timestamps, plus one boot with ssi.debug).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import anchors  # noqa: E402

from mkinitrd_ssi import image, kmod  # noqa: E402
from mkinitrd_ssi.initrd.build import AGENT_PACKAGE  # noqa: E402
from mkinitrd_ssi.initrd.cpio import Archive  # noqa: E402
from vm_tests import cluster, images  # noqa: E402
from vm_tests.kernel import Kernel, kernel  # noqa: E402
from vm_tests.qemu import Disk, Nic, Vm, VmConfig, console_args  # noqa: E402

WANTED = ("virtio_blk", "virtio_net", "virtio_pci", "ext4")
MARK = "SSI-BENCH-INIT"
# The kernel's own timestamps of the steps every builder shares, from the log buffer
# (complete whatever the console's loglevel), printed by the shared root's init.
KMSG = {
    "unpack": r"Trying to unpack rootfs image as initramfs",
    "unpacked": r"Freeing initrd memory",
    "init": r"Run /init as init process",
    "vda": r"virtio_blk virtio[0-9]+: \[vda\]",
    "mounted": r"EXT4-fs \(vda\): mounted filesystem",
}
_REPORT = f"""read up rest < /proc/uptime
echo "{MARK} uptime=$up"
/bin/busybox dmesg | /bin/busybox grep -E '{"|".join(KMSG.values())}' \\
    | /bin/busybox sed 's/^/{MARK}-KMSG /'
/bin/busybox poweroff -f
"""
BENCH_INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc 2>/dev/null
{_REPORT}"""
# The floor: busybox as the ramdisk's /init, reporting at once.
FLOOR_INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
{_REPORT}"""
APPEND = console_args(["root=/dev/vda", "ro"])
# mkinitrd.ssi from a snapshot of the agent's sources, in a fresh interpreter: someone
# editing linuxrc_agent/ during the run cannot make a rebuild re-freeze.
RUN_OURS = """
import sys, time
t0 = time.perf_counter()
from pathlib import Path
import mkinitrd_ssi.initrd.build as b
import mkinitrd_ssi.mkinitrd as m
b.AGENT_PACKAGE = Path(sys.argv[1])
t1 = time.perf_counter()
code = m.main(sys.argv[2:])
print(f"BENCH-TIMES import={t1 - t0:.4f} main={time.perf_counter() - t1:.4f}")
sys.exit(code)
"""
# One anchor build inside the chroot; prints its wall time in ms (the chroot's set-up
# and the private mount namespace's excluded).
ANCHOR_BUILD = r"""
set -eu
t0=$(date +%s%N)
{command} >>/bench/{tool}.log 2>&1
t1=$(date +%s%N)
echo "BENCH-MS $(( (t1 - t0) / 1000000 ))"
"""
ANCHOR_COMMANDS = {
    "dracut": "dracut --force --no-hostonly --no-hostonly-cmdline --no-early-microcode --zstd "
              "-m '{dracut_modules}' --drivers '{drivers}' --kver {kver} /bench/dracut.img",
    "mkinitramfs": "mkinitramfs -d /bench/itconf -o /bench/mkinitramfs.img {kver}",
}
DRACUT_MODULES = "base rootfs-block kernel-modules"


@dataclass
class Row:
    name: str
    image: Path
    cold: float | None = None
    cold_agent_cached: float | None = None
    rebuilds: list[float] = field(default_factory=list)
    cold_cpu: float | None = None  # CPU seconds (user + sys) of the build's processes
    rebuilds_cpu: list[float] = field(default_factory=list)
    inproc: list[float] = field(default_factory=list)  # ours: main() alone, no start-up
    compress: str = ""
    size: int = 0
    raw: int = 0
    entries: int = 0
    uptimes: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    agent_start: list[float] = field(default_factory=list)  # ours: uptime at the agent's main
    agent_run: list[float] = field(default_factory=list)  # ours: /init exec to switch_root
    kmsg: dict[str, list[float]] = field(default_factory=dict)  # KMSG step -> timestamps

    @property
    def rebuild(self) -> float | None:
        return statistics.median(self.rebuilds) if self.rebuilds else None

    @property
    def rebuild_cpu(self) -> float | None:
        return statistics.median(self.rebuilds_cpu) if self.rebuilds_cpu else None

    @property
    def boot(self) -> float | None:
        return statistics.median(self.uptimes) if self.uptimes else None


# --- builds ------------------------------------------------------------------------------


def snapshot_agent(base: Path) -> Path:
    dest = base / "agent" / "linuxrc_agent"
    shutil.copytree(AGENT_PACKAGE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def module_args(k: Kernel) -> list[str]:
    omit = [m for m in kmod.DEFAULT_MODULES if m not in WANTED]
    return ["--moddir", str(k.moddir), "--add-modules", ",".join(WANTED),
            "--omit-modules", ",".join(omit)]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_ours(agent: Path, cache: Path, argv: list[str], pyinstaller_cache: Path | None = None
             ) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, seconds inside main(), stdout) of one build."""
    env = {**os.environ, "SSI_CACHE": str(cache)}
    if pyinstaller_cache is not None:  # PyInstaller keeps stripped copies of libraries
        env["PYINSTALLER_CONFIG_DIR"] = str(pyinstaller_cache)
    env.pop("SOURCE_DATE_EPOCH", None)
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN_OURS, str(agent), *argv], env=env,
                          capture_output=True, text=True, cwd=REPO, check=False)
    seconds, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"mkinitrd.ssi failed:\n{proc.stdout}\n{proc.stderr}")
    times = re.search(r"BENCH-TIMES import=([0-9.]+) main=([0-9.]+)", proc.stdout)
    assert times is not None
    return seconds, cpu, float(times.group(2)), proc.stdout


def bench_ours(base: Path, k: Kernel, rebuilds: int) -> tuple[Row, list[str]]:
    agent = snapshot_agent(base)
    root = base / "ours"
    (root / "etc").mkdir(parents=True)
    table = root / "etc/ssitab"
    table.write_text(cluster.SSITAB)
    row = Row("mkinitrd.ssi", base / "ssi.img", compress="zstd -9")
    argv = ["--root", str(root), *module_args(k), "--no-dhcpd", "-o", str(row.image)]
    row.cold, row.cold_cpu, _, _ = run_ours(agent, base / "cache-cold", argv,
                                            base / "pyinstaller-cold")
    warm = base / "cache-warm"
    warm.mkdir()
    shutil.copytree(base / "cache-cold" / "agent", warm / "agent")
    row.cold_agent_cached, _, _, _ = run_ours(agent, warm, argv)
    for i in range(rebuilds):
        with table.open("a") as f:
            f.write(f"{100 + i} 10.77.0.{100 + i}/24 52:54:00:aa:00:{i:02x} 0 -\n")
        seconds, cpu, inproc, out = run_ours(agent, warm, argv)
        if "written" not in out:
            raise SystemExit(f"an ssitab edit did not change the image:\n{out}")
        row.rebuilds.append(seconds)
        row.rebuilds_cpu.append(cpu)
        row.inproc.append(inproc)
    modules = [line.rsplit("/", 1)[1].removesuffix(".ko")
               for line in member(row.image, "etc/ssi/modules").decode().split()]
    return row, modules


def python_startup(repeat: int = 5) -> float:
    """A fresh interpreter importing mkinitrd.ssi and exiting: the fixed cost of a build."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mkinitrd_ssi.mkinitrd"], cwd=REPO,
                       check=True)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def frozen_startup(cache: Path, repeat: int = 5) -> dict[str, float]:
    """Host CPU seconds (median) of the frozen agent up to its main, which exits at once
    when not PID 1, against a bare interpreter: what PyInstaller's start-up costs before
    TCG multiplies it."""
    frozen = next((cache / "agent").glob("*/linuxrc"))
    argvs = {"frozen agent to main (bootloader, interpreter, imports)": [str(frozen)],
             "bare interpreter (python3 -I -S -c pass)":
                 [sys.executable, "-I", "-S", "-c", "pass"],
             "interpreter importing the agent's modules from source":
                 [sys.executable, "-I", "-c", "import linuxrc_agent.main"]}
    out = {}
    for name, argv in argvs.items():
        runs = []
        for _ in range(repeat):
            cpu0 = children_cpu()
            # An empty environment, as the kernel gives /init.
            subprocess.run(argv, env={}, cwd=REPO, capture_output=True, check=False)
            runs.append(children_cpu() - cpu0)
        out[name] = statistics.median(runs)
    return out


def member(path: Path, name: str) -> bytes:
    return next(m.data for m in image.read_image(path.read_bytes()) if m.path == name)


def bench_anchors(base: Path, k: Kernel, modules: list[str], rebuilds: int) -> list[Row]:
    out = base / "anchors"
    conf = out / "itconf"
    for d in ("conf.d", "hooks", "scripts"):
        (conf / d).mkdir(parents=True)
    (conf / "initramfs.conf").write_text("MODULES=list\nBUSYBOX=auto\nCOMPRESS=zstd\n"
                                         "RUNSIZE=10%\nFSTYPE=ext4\n")
    (conf / "modules").write_text("".join(f"{m}\n" for m in modules))
    # mkinitramfs checks the kernel's config for the compressor.
    config = anchors.chroot_dir() / "boot" / f"config-{k.kver}"
    shutil.copyfile(k.vmlinuz.parent / f"config-{k.kver}", config)
    levels = {"dracut": "zstd -15", "mkinitramfs": "zstd -9"}
    rows = []
    try:
        for tool, command in ANCHOR_COMMANDS.items():
            row = Row(tool, out / f"{tool}.img", compress=levels[tool])
            script = ANCHOR_BUILD.format(tool=tool, command=command.format(
                dracut_modules=DRACUT_MODULES, drivers=" ".join(modules), kver=k.kver))
            for i in range(1 + rebuilds):
                cpu0 = children_cpu()
                proc = anchors.run_in_chroot(script, moddir=k.moddir, kver=k.kver, out=out)
                cpu = children_cpu() - cpu0
                m = re.search(r"BENCH-MS (\d+)", proc.stdout)
                if proc.returncode != 0 or m is None:
                    log = (out / f"{tool}.log").read_text()[-3000:]
                    raise SystemExit(f"{tool} failed:\n{proc.stderr}\n{log}")
                if i == 0:
                    row.cold, row.cold_cpu = int(m.group(1)) / 1000, cpu
                else:
                    row.rebuilds.append(int(m.group(1)) / 1000)
                    row.rebuilds_cpu.append(cpu)
            rows.append(row)
    finally:
        config.unlink(missing_ok=True)
    return rows


def floor_image(base: Path) -> Row:
    arc = Archive()
    for d in ("bin", "dev", "proc"):
        arc.dir(d)
    arc.file("bin/busybox", images.BUSYBOX)
    arc.data("init", FLOOR_INIT.encode(), 0o755)
    segments = image.SegmentCache(base / "floor-cache")
    data = image.build(list(arc.entries.values()), image.Compression.ZSTD, 0, segments, 9)
    row = Row("floor (busybox /init)", base / "floor.img", compress="zstd -9")
    row.image.write_bytes(data)
    return row


# --- sizes -------------------------------------------------------------------------------


def measure_size(row: Row) -> None:
    row.size = row.image.stat().st_size
    members = image.read_image(row.image.read_bytes())
    row.raw = sum(len(m.data) for m in members)  # file contents, decompressed
    row.entries = len(members)


PARTS: list[tuple[str, Callable[[str], bool]]] = [
    ("Python runtime: libpython", lambda p: "/libpython" in p),
    ("Python stdlib: base_library.zip", lambda p: p.endswith("base_library.zip")),
    ("PyInstaller bootloader + agent bytecode (/ssi/agent/linuxrc)",
     lambda p: p == "ssi/agent/linuxrc"),
    ("Python extensions and their libraries (_internal/*.so)",
     lambda p: p.startswith("ssi/agent/_internal/")),
    ("glibc, libm, ld.so and the rest of the ELF closure", lambda p: p.startswith("lib/")
     and "/modules/" not in p and not p.startswith("lib/modules")),
    ("busybox (rescue shell)", lambda p: p == "bin/busybox"),
    ("kernel modules (.ko)", lambda p: p.startswith("lib/modules/") and p.endswith(".ko")),
    ("modules.alias/builtin/dep", lambda p: p.startswith("lib/modules/")),
    ("everything else (ssitab, skeleton, dirs)", lambda p: True),
]


def size_breakdown(path: Path) -> list[tuple[str, int, int, int]]:
    """(part, files, bytes, zstd -9 bytes of that part alone) for our image."""
    groups: dict[str, list[bytes]] = {name: [] for name, _ in PARTS}
    for m in image.read_image(path.read_bytes()):
        name = next(n for n, test in PARTS if test(m.path))
        groups[name].append(m.data)
    cctx = zstandard.ZstdCompressor(level=9)
    return [(name, len(datas), sum(map(len, datas)), len(cctx.compress(b"".join(datas))))
            for name, datas in groups.items() if datas]


def top_entries(path: Path, n: int = 6) -> list[tuple[str, int]]:
    members = image.read_image(path.read_bytes())
    return sorted(((m.path, len(m.data)) for m in members), key=lambda x: -x[1])[:n]


# --- boots -------------------------------------------------------------------------------


def root_disk(base: Path) -> Path:
    tree = images.shared_root_tree(base / "roottree", init=BENCH_INIT)
    (tree / "etc/os-release").write_text('NAME="ssi bench root"\nID=ssibench\n')
    return images.ext4_image(base / "root.img", tree, size_mb=64, label=cluster.ROOT_LABEL)


@dataclass
class BootResult:
    uptime: float
    wall: float
    console: str


def boot_once(k: Kernel, initrd: Path, disk: Path, log: Path, append: str = APPEND
              ) -> BootResult:
    config = VmConfig(kernel=k.vmlinuz, initrd=initrd, append=append,
                      disks=[Disk(disk, extra=",snapshot=on")], nics=[Nic(cluster.MAC_N1)])
    t0 = time.perf_counter()
    with Vm(config, log) as vm:
        match = vm.wait_for(MARK + r" uptime=([0-9.]+)", timeout=600)
        vm.wait_exit(60)
        text = vm.output()
    return BootResult(float(match.group(1)), time.perf_counter() - t0, text)


def kmsg_steps(console: str) -> dict[str, float]:
    """The first kernel timestamp of each KMSG step the shared root's init reported."""
    found: dict[str, float] = {}
    for line in console.splitlines():
        m = re.match(rf"{MARK}-KMSG \[\s*([0-9.]+)\] (.*)", line.strip())
        if m is None:
            continue
        for step, pattern in KMSG.items():
            if step not in found and re.search(pattern, m.group(2)):
                found[step] = float(m.group(1))
    return found


AGENT_START = re.compile(r"linuxrc: ssi-boot agent on kernel \S+, ([0-9.]+) s after kernel start")
AGENT_SWITCH = re.compile(r"linuxrc: switching to \S+ on \S+ after ([0-9.]+) s")


def boot_all(rows: list[Row], k: Kernel, disk: Path, boots: int, logs: Path,
             loads: list[float]) -> None:
    for i in range(boots):
        for row in rows:  # interleaved: load drift hits every builder alike
            log = logs / f"{row.name.split()[0]}-{i}.log"
            r = boot_once(k, row.image, disk, log)
            loads.append(os.getloadavg()[0])
            row.uptimes.append(r.uptime)
            row.walls.append(r.wall)
            if (m := AGENT_START.search(r.console)) is not None:
                row.agent_start.append(float(m.group(1)))
            if (m := AGENT_SWITCH.search(r.console)) is not None:
                row.agent_run.append(float(m.group(1)))
            for step, stamp in kmsg_steps(r.console).items():
                row.kmsg.setdefault(step, []).append(stamp)
            print(f"  boot {i + 1}/{boots} {row.name}: init at {r.uptime:.2f} s uptime, "
                  f"QEMU {r.wall:.1f} s", file=sys.stderr)


def debug_boot(row: Row, k: Kernel, disk: Path, logs: Path) -> list[str]:
    """One boot of our image with ssi.debug: the agent's own stage timings."""
    r = boot_once(k, row.image, disk, logs / "ours-debug.log",
                  append=console_args(["root=/dev/vda", "ro", "ssi.debug"]))
    return [line.strip() for line in r.console.splitlines() if line.startswith("linuxrc:")]


# --- report ------------------------------------------------------------------------------


def fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def with_cpu(wall: float | None, cpu: float | None) -> str:
    if wall is None:
        return "-"
    return f"{wall:.2f} s" + (f" ({cpu:.2f} s CPU)" if cpu is not None else "")


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def med(values: list[float]) -> float:
    return statistics.median(values)


def time_breakdown(rows: list[Row]) -> list[str]:
    """Each builder's boot split at the kernel's timestamps (medians over the boots)."""
    out = ["Where the boot time goes (guest seconds since kernel start, medians; from the "
           "kernel log, read by the shared root's init):", "",
           "| builder | initramfs unpacked | exec of /init | /dev/vda probed "
           "| root mounted | shared root's init | /init to shared root's init |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        k = {step: med(v) for step, v in r.kmsg.items()}

        def at(step: str, k: dict[str, float] = k) -> str:
            return f"{k[step]:.2f}" if step in k else "-"
        after = f"{r.boot - k['init']:.2f} s" if r.boot is not None and "init" in k else "-"
        out.append(f"| {r.name} | {at('unpacked')} | {at('init')} | {at('vda')} "
                   f"| {at('mounted')} | {fmt_s(r.boot)} | {after} |")
    return out


def report(rows: list[Row], floor: Row | None, k: Kernel, modules: list[str],
           versions: dict[str, str], args: argparse.Namespace, loads: list[float],
           startup: float, debug_lines: list[str], host_start: dict[str, float]) -> str:
    ours = rows[0]
    out = [f"Kernel {k.kver}; modules ({len(modules)}, ext4 built in): {' '.join(modules)}",
           f"Anchors: dracut-core {versions.get('dracut-core', '?')}, initramfs-tools "
           f"{versions.get('initramfs-tools', '?')} (debootstrap {anchors.SUITE} chroot); "
           f"dracut -m '{DRACUT_MODULES}' --drivers <the modules>; mkinitramfs MODULES=list.",
           f"Machine: {os.cpu_count()} cores, load average {min(loads):.1f}-{max(loads):.1f} "
           f"(median {statistics.median(loads):.1f}) while measuring; QEMU TCG"
           + ("" if args.no_boot else f"; boot figures are medians of {args.boots} (min-max)")
           + f"; rebuilds medians of {args.rebuilds}.", "",
           "Build times: wall clock, then (CPU seconds, user + sys, of every process of "
           "the build: less sensitive to other users of the machine).", "",
           "| builder | cold build | rebuild | image | decompressed | entries "
           "| kernel start to shared root's init | QEMU run |",
           "|---|---|---|---|---|---|---|---|"]
    for r in [*rows, *([floor] if floor else [])]:
        cold = with_cpu(r.cold, r.cold_cpu)
        if r.cold_agent_cached is not None:
            cold += f"; agent cached {r.cold_agent_cached:.2f} s"
        out.append(f"| {r.name} | {cold} | {with_cpu(r.rebuild, r.rebuild_cpu)} "
                   f"| {r.size / 1e6:.2f} MB ({r.compress}) | {r.raw / 1e6:.2f} MB | {r.entries} "
                   f"| {spread(r.uptimes)} | {spread(r.walls)} |")
    out += ["", "| ratio (ours / anchor) | cold build | rebuild | rebuild, CPU | image "
            "| decompressed | kernel start to init |", "|---|---|---|---|---|---|---|"]
    for a in rows[1:]:
        out.append(f"| ours / {a.name} | {ratio(ours.cold, a.cold)} | "
                   f"{ratio(ours.rebuild, a.rebuild)} | {ratio(ours.rebuild_cpu, a.rebuild_cpu)} "
                   f"| {ratio(ours.size, a.size)} | {ratio(ours.raw, a.raw)} "
                   f"| {ratio(ours.boot, a.boot)} |")
    goals = [f"rebuild after an ssitab edit < 1 s: {fmt_s(ours.rebuild)} wall, "
             f"{fmt_s(ours.rebuild_cpu)} CPU "
             f"({'met' if ours.rebuild is not None and ours.rebuild < 1 else 'NOT met'}); "
             f"of it, interpreter start-up and imports {startup:.2f} s, the build itself "
             f"{statistics.median(ours.inproc):.2f} s"]
    dracut = next((r for r in rows if r.name == "dracut"), None)
    if dracut is not None:
        goals.append(f"image no larger than dracut's: {ours.size / 1e6:.2f} MB vs "
                     f"{dracut.size / 1e6:.2f} MB "
                     f"({'met' if ours.size <= dracut.size else 'NOT met'})")
        if ours.boot is not None and dracut.boot is not None:
            goals.append(f"init no later than dracut's: {ours.boot:.2f} s vs "
                         f"{dracut.boot:.2f} s "
                         f"({'met' if ours.boot <= dracut.boot else 'NOT met'})")
    out += ["", "Goals (issue 3):", *[f"- {g}" for g in goals]]
    out += ["", "Where our bytes go (each part compressed alone at zstd -9; the image "
            "compresses in a few segments, so the parts add up to about the image):", "",
            "| part | files | decompressed | zstd -9 |", "|---|---|---|---|"]
    for name, files, raw, packed in size_breakdown(ours.image):
        out.append(f"| {name} | {files} | {raw / 1e6:.2f} MB | {packed / 1e6:.2f} MB |")
    for r in rows[1:]:
        tops = ", ".join(f"{p} {n / 1e6:.2f}" for p, n in top_entries(r.image))
        out.append(f"\nLargest in {r.name} (MB decompressed): {tops}")
    if ours.uptimes:
        out += ["", *time_breakdown([*rows, *([floor] if floor else [])])]
        if ours.agent_start and "init" in ours.kmsg:
            start = med(ours.agent_start) - med(ours.kmsg["init"])
            out += ["", f"Ours after /init (the agent's own timestamps, medians): exec of /init "
                    f"to the agent's main (PyInstaller bootloader, dynamic loading of "
                    f"libpython, interpreter start-up, imports) {start:.2f} s; main to "
                    f"switch_root {med(ours.agent_run) - start:.2f} s."]
        out += ["", "The same start-up on the host, CPU time (medians of 5): "
                + "; ".join(f"{name} {v * 1000:.0f} ms" for name, v in host_start.items())
                + "."]
        if debug_lines:
            out += ["", "One boot of ours with ssi.debug (its timestamps count from the exec "
                    "of /init):", "```", *debug_lines, "```"]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--rebuilds", type=int, default=5)
    parser.add_argument("--no-boot", action="store_true", help="build times and sizes only")
    parser.add_argument("--keep", type=Path, help="copy images and console logs here")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_initrd: needs root (the anchors' chroot)", file=sys.stderr)
        return 1
    # A plain kill must still run the cleanup (VMs killed; the chroot's mounts live in
    # private mount namespaces and go with their processes anyway).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    k = kernel()
    versions = anchors.ensure_chroot()
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-initrd.") as tmp:
        base = Path(tmp)
        print("building: mkinitrd.ssi ...", file=sys.stderr)
        ours, modules = bench_ours(base, k, args.rebuilds)
        startup = python_startup()
        host_start = frozen_startup(base / "cache-warm")
        print("building: dracut, mkinitramfs (chroot) ...", file=sys.stderr)
        rows = [ours, *bench_anchors(base, k, modules, args.rebuilds)]
        floor = floor_image(base)
        loads.append(os.getloadavg()[0])
        for r in [*rows, floor]:
            measure_size(r)
        debug_lines: list[str] = []
        logs = base / "logs"
        logs.mkdir()
        if not args.no_boot:
            disk = root_disk(base)
            boot_all([*rows, floor], k, disk, args.boots, logs, loads)
            debug_lines = debug_boot(ours, k, disk, logs)
        text = report(rows, None if args.no_boot else floor, k, modules, versions, args,
                      loads, startup, debug_lines, host_start)
        print(text)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for r in [*rows, floor]:
                shutil.copy2(r.image, args.keep / r.image.name)
            shutil.copytree(logs, args.keep / "logs", dirs_exist_ok=True)
            (args.keep / "report.md").write_text(text + "\n")
        if args.json:
            args.json.write_text(json.dumps(
                {r.name: {**{k: v for k, v in vars(r).items() if k != "image"},
                          "image": str(r.image)} for r in [*rows, floor]},
                indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
