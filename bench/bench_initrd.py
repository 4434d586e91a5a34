"""mkinitrd.ssi against the busybox floor, dracut and Debian's mkinitramfs on one module set.

    .venv/bin/python bench/bench_initrd.py [--boots 5] [--rebuilds 5] [--icount 0]
        [--sync-boots 3] [--compressions zstd:3,zstd:19,lz4:9] [--json FILE] [--keep DIR]

Root needed (the anchors' chroot, the local disk of the sync boots). In one run,
with the same kernel (the VM tests' Debian cloud kernel), the same modules
(virtio_blk, virtio_net, virtio_pci, ext4 and their dependencies: the closure
mkinitrd.ssi computes is handed verbatim to dracut --drivers, to mkinitramfs'
MODULES=list and to the floor), the same shared-root disk and the same QEMU
(TCG) machine:

- build time: `cold` is the first build (mkinitrd.ssi: empty caches, its own
  and PyInstaller's, so the agent is frozen; `agent cached` is a build whose
  frozen agent exists but nothing else), `rebuild` the median of --rebuilds builds,
  each after adding a node to ssitab (the anchors read no ssitab: theirs is
  simply another build). Every mkinitrd.ssi build is a whole fresh process.
- image size: as written (each tool's own compression), and decompressed; ours
  by part (interpreter, standard library, agent, libraries, modules, busybox).
- boot: kernel start to the shared root's /sbin/init, read by that init from
  /proc/uptime (guest time: host load matters less), median of --boots, the
  builders interleaved so that load drift hits them alike. With --icount the
  guest's clock counts instructions (QEMU -icount shift=N,sleep=on: 2^N ns
  each), so the figures no longer depend on the host's load at all.
- the floor: busybox alone as /init, loading the same modules (insmod, in
  dependency order), waiting for /dev/vda, mounting it and switch_root: what
  any ramdisk has to do for this boot, and nothing more.
- `mkinitrd.ssi, before issue 14`: the agent frozen with PyInstaller's defaults
  (freeze.PLAIN) and zstd -9, as the README measured before.

dracut and initramfs-tools run in a cached debootstrap chroot (bench/anchors.py),
never on the host. Then the report: ratios (ours / floor and / anchors), the
goals of issue 14, where our bytes go, where our boot goes (the kernel's
timestamps, the agent's, SSI_STAGES_MS of node.env), and optionally the
unchanged-sync check of a local-boot node (--sync-boots) and the initramfs
compressions against each other (--compressions).
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

from mkinitrd_ssi.initrd import contents, image, kmod  # noqa: E402
from mkinitrd_ssi.initrd.build import AGENT_PACKAGE  # noqa: E402
from mkinitrd_ssi.initrd.cpio import Archive  # noqa: E402
from vm_tests import cluster, images  # noqa: E402
from vm_tests.kernel import Kernel, kernel  # noqa: E402
from vm_tests.qemu import Disk, Nic, Vm, VmConfig, console_args, parse_env  # noqa: E402

WANTED = ("virtio_blk", "virtio_net", "virtio_pci", "ext4")
MARK = "SSI-BENCH-INIT"
# The kernel's own timestamps of the steps every builder shares, from the log buffer
# (complete whatever the console's loglevel), printed by the shared root's init.
KMSG = {
    "unpack": r"Trying to unpack rootfs image as initramfs",
    "unpacked": r"Freeing initrd memory",
    "init": r"Run /init as init process",
    "crng": r"random: crng init done",
    "vda": r"virtio_blk virtio[0-9]+: \[vda\]",
    "mounted": r"EXT4-fs \(vda\): mounted filesystem",
}
_REPORT = f"""read up rest < /proc/uptime
echo "{MARK} uptime=$up"
/bin/busybox dmesg | /bin/busybox grep -E '{"|".join(KMSG.values())}' \\
    | /bin/busybox sed 's/^/{MARK}-KMSG /'
/bin/busybox sed 's/^/{MARK}-ENV /' /run/ssi/node.env 2>/dev/null
/bin/busybox poweroff -f
"""
BENCH_INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc 2>/dev/null
{_REPORT}"""
# The floor: what any ramdisk must do for this boot, with nothing else.
FLOOR_INIT = """#!/bin/busybox sh
b=/bin/busybox
$b mount -t proc proc /proc
$b mount -t sysfs sysfs /sys
$b mount -t devtmpfs devtmpfs /dev
while read -r m; do $b insmod "$m"; done < /etc/ssi/modules
while [ ! -b /dev/vda ]; do $b usleep 10000; done
$b mount -t ext4 -o ro /dev/vda /newroot
for d in dev proc sys; do $b mount --move /$d /newroot/$d; done
exec $b switch_root /newroot /sbin/init
"""
APPEND = ["root=/dev/vda", "ro"]
# mkinitrd.ssi from a snapshot of the agent's sources, in a fresh interpreter: someone
# editing linuxrc_agent/ during the run cannot make a rebuild re-freeze. BENCH_RECIPE=plain
# freezes with PyInstaller's defaults (the agent before issue 14).
RUN_OURS = """
import functools, os, sys, time
t0 = time.perf_counter()
from pathlib import Path
import mkinitrd_ssi.initrd.build as b
import mkinitrd_ssi.initrd.freeze as f
import mkinitrd_ssi.mkinitrd as m
b.AGENT_PACKAGE = Path(sys.argv[1])
if os.environ.get("BENCH_RECIPE") == "plain":
    f.frozen_agent = functools.partial(f.frozen_agent, recipe=f.PLAIN)
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
OURS = "mkinitrd.ssi"
BEFORE = "mkinitrd.ssi, before issue 14"
FLOOR = "floor (busybox /init)"
# Issue 14's goals.
GOAL_BOOT_FLOOR = 1.4  # ours / floor, kernel start to the root's init
GOAL_IMAGE = 4.5e6  # the 9-module image, bytes
GOAL_DEFAULT_IMAGE = 6.0e6  # the default build (every default module)
GOAL_REBUILD = 0.3  # seconds, after an ssitab edit
GOAL_SYNC = 0.1  # seconds the unchanged-sync check adds to a local-boot node's boot


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
    agent_main: list[float] = field(default_factory=list)  # ours: uptime at the agent's main
    switch: list[float] = field(default_factory=list)  # ours: uptime at switch_root
    kmsg: dict[str, list[float]] = field(default_factory=dict)  # KMSG step -> timestamps
    stages: dict[str, list[float]] = field(default_factory=dict)  # SSI_STAGES_MS, seconds

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


def python_env(base: Path) -> dict[str, str]:
    """The environment of every mkinitrd.ssi process: its bytecode cached (under base) as
    pip and Debian install it, whatever PYTHONDONTWRITEBYTECODE says here: a session
    that sets it would have every rebuild compile mkinitrd.ssi's sources again (80 million
    instructions, ~40 ms), which no installed copy does."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(base / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_ours(agent: Path, cache: Path, argv: list[str], pyinstaller_cache: Path | None = None,
             recipe: str = "") -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, seconds inside main(), stdout) of one build."""
    env = {**python_env(cache.parent), "SSI_CACHE": str(cache), "BENCH_RECIPE": recipe}
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


def ours_root(base: Path) -> Path:
    root = base / "ours"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    table = root / "etc/ssitab"
    if not table.exists():
        table.write_text(cluster.SSITAB)
    return root


def bench_ours(base: Path, agent: Path, k: Kernel, rebuilds: int, busybox: Path
               ) -> tuple[Row, list[str]]:
    root = ours_root(base)
    table = root / "etc/ssitab"
    row = Row(OURS, base / "ssi.img", compress=f"zstd -{image.DEFAULT_LEVEL['zstd']}")
    argv = ["--root", str(root), *module_args(k), "--no-dhcpd", "--busybox", str(busybox),
            "-o", str(row.image)]
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


def bench_before(base: Path, agent: Path, k: Kernel) -> Row:
    """Ours as it was: the agent frozen with PyInstaller's defaults, zstd -9. Cold as ours
    is: its own empty PyInstaller cache too (it had the user's, warm, before)."""
    row = Row(BEFORE, base / "ssi-before.img", compress="zstd -9")
    argv = ["--root", str(ours_root(base)), *module_args(k), "--no-dhcpd",
            "--compress-level", "9", "-o", str(row.image)]
    row.cold, row.cold_cpu, _, _ = run_ours(agent, base / "cache-before", argv,
                                            base / "pyinstaller-before", recipe="plain")
    return row


def default_build_size(base: Path, agent: Path, k: Kernel, busybox: Path
                       ) -> tuple[int, int, int]:
    """(bytes, modules) of the default build (every default module this kernel has), and
    the bytes of the 9-module image with busybox-static (/bin/busybox here) instead."""
    out = base / "ssi-default.img"
    _, _, _, text = run_ours(agent, base / "cache-warm",
                             ["--root", str(ours_root(base)), "--moddir", str(k.moddir),
                              "--no-dhcpd", "--busybox", str(busybox), "-o", str(out)])
    m = re.search(r"(\d+) modules", text)
    static = base / "ssi-static-busybox.img"
    run_ours(agent, base / "cache-warm", ["--root", str(ours_root(base)), *module_args(k),
                                          "--no-dhcpd", "-o", str(static)])
    return out.stat().st_size, int(m.group(1)) if m else 0, static.stat().st_size


def python_startup(base: Path, repeat: int = 5) -> float:
    """A fresh interpreter importing mkinitrd.ssi and exiting: the fixed cost of a build."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mkinitrd_ssi.mkinitrd"], cwd=REPO,
                       check=True, env=python_env(base))
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


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


def floor_image(base: Path, k: Kernel) -> Row:
    """Busybox as /init with the modules ours carries (the same selection, the same files,
    the same list in dependency order), compressed as ours is."""
    arc = Archive()
    contents.add_base(arc)
    contents.add_busybox(arc)
    omit = [m for m in kmod.DEFAULT_MODULES if m not in WANTED]
    contents.add_modules(arc, k.moddir, base / "cache-warm", base / "no-firmware", WANTED, omit)
    arc.data("init", FLOOR_INIT.encode(), 0o755)
    level = image.DEFAULT_LEVEL[image.Compression.ZSTD]
    data = image.build(list(arc.entries.values()), image.Compression.ZSTD, 0,
                       image.SegmentCache(base / "floor-cache"), level)
    row = Row(FLOOR, base / "floor.img", compress=f"zstd -{level}")
    row.image.write_bytes(data)
    return row


# --- sizes -------------------------------------------------------------------------------


def measure_size(row: Row) -> None:
    row.size = row.image.stat().st_size
    members = image.read_image(row.image.read_bytes())
    row.raw = sum(len(m.data) for m in members)  # file contents, decompressed
    row.entries = len(members)


AGENT_EXE = "ssi/agent/linuxrc"
PARTS: list[tuple[str, Callable[[str], bool]]] = [
    ("interpreter: libpython, PyInstaller's bootloader, extension modules",
     lambda p: p.startswith("ssi/agent/") and not p.endswith("base_library.zip")),
    ("standard library: base_library.zip and the stdlib in the PYZ",
     lambda p: p.endswith("base_library.zip")),
    ("agent: its bytecode in the PYZ", lambda p: False),  # split out of the executable
    ("libraries: glibc, libm, ld.so (ELF closure)", lambda p: p.startswith("lib/")
     and not p.startswith("lib/modules/")),
    ("kernel modules and their index", lambda p: p.startswith("lib/modules/")),
    ("busybox (rescue shell)", lambda p: p == "bin/busybox"),
    ("everything else (ssitab, skeleton, manifest, dirs)", lambda p: True),
]


def pyz_split(exe: bytes) -> tuple[bytes, bytes, bytes]:
    """The frozen executable cut in three: (bootloader and PyInstaller's own modules, the
    standard library's entries of its PYZ, the agent's entries): parts of the same file,
    each compressed on its own below."""
    from PyInstaller.archive.readers import CArchiveReader

    with tempfile.NamedTemporaryFile() as tmp:
        tmp.write(exe)
        tmp.flush()
        carchive = CArchiveReader(tmp.name)
        pyz = carchive.open_embedded_archive("PYZ.pyz")
        start = pyz._start_offset  # the PYZ's offset in the file
        std, agent = bytearray(), bytearray()
        covered = 0
        for name, (_, offset, length) in pyz.toc.items():
            blob = exe[start + offset:start + offset + length]
            (agent if name.split(".")[0] == "linuxrc_agent" else std).extend(blob)
            covered += length
    rest = len(exe) - covered
    return exe[:rest], bytes(std), bytes(agent)  # rest: only its size is used


def size_breakdown(path: Path, level: int = image.DEFAULT_LEVEL[image.Compression.ZSTD]
                   ) -> list[tuple[str, int, int, int]]:
    """(part, files, bytes, zstd -level bytes of that part alone) of one of our images."""
    groups: dict[str, list[bytes]] = {name: [] for name, _ in PARTS}
    files: dict[str, int] = dict.fromkeys(groups, 0)
    for m in image.read_image(path.read_bytes()):
        name = next(n for n, test in PARTS if test(m.path))
        if m.path == AGENT_EXE:
            loader, std, agent = pyz_split(m.data)
            groups[PARTS[0][0]].append(loader)
            groups[PARTS[1][0]].append(std)
            groups[PARTS[2][0]].append(agent)
            files[PARTS[2][0]] += 1
            continue
        groups[name].append(m.data)
        files[name] += 1
    cctx = zstandard.ZstdCompressor(level=level)
    return [(name, files[name], sum(map(len, datas)), len(cctx.compress(b"".join(datas))))
            for name, datas in groups.items() if datas]


def top_entries(path: Path, n: int = 6) -> list[tuple[str, int]]:
    members = image.read_image(path.read_bytes())
    return sorted(((m.path, len(m.data)) for m in members), key=lambda x: -x[1])[:n]


# --- boots -------------------------------------------------------------------------------


def root_disk(base: Path, name: str = "root", pair: Path | None = None,
              k: Kernel | None = None) -> Path:
    tree = images.shared_root_tree(base / f"{name}tree", init=BENCH_INIT,
                                   kernel=k.vmlinuz if pair and k else None, initrd=pair)
    (tree / "etc/os-release").write_text('NAME="ssi bench root"\nID=ssibench\n')
    size = 64 if pair is None else 160
    return images.ext4_image(base / f"{name}.img", tree, size_mb=size,
                             label=cluster.ROOT_LABEL)


@dataclass
class BootResult:
    uptime: float
    wall: float
    console: str


def add_icount_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--icount", type=int, metavar="SHIFT",
                        help="QEMU -icount shift=SHIFT,sleep=on: the guest's clock counts "
                        "instructions (2^SHIFT ns each), whatever the host's load, and runs "
                        "at the host's pace while the guest idles (waiting for its disk: "
                        "sleep=off would jump to the next timer, seconds later)")


def icount_args(shift: int | None) -> list[str]:
    return [] if shift is None else ["-icount", f"shift={shift},sleep=on"]


def boot_once(k: Kernel, initrd: Path, disks: list[Disk], log: Path, append: list[str],
              icount: int | None, mac: str = cluster.MAC_N1) -> BootResult:
    config = VmConfig(kernel=k.vmlinuz, initrd=initrd, append=console_args(append),
                      disks=disks, nics=[Nic(mac)], extra=icount_args(icount))
    t0 = time.perf_counter()
    with Vm(config, log) as vm:
        match = vm.wait_for(MARK + r" uptime=([0-9.]+)", timeout=900)
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


def node_env(console: str) -> dict[str, str]:
    lines = [line.strip().removeprefix(f"{MARK}-ENV ") for line in console.splitlines()
             if line.strip().startswith(f"{MARK}-ENV ")]
    return parse_env("\n".join(lines))


AGENT_MAIN = re.compile(r"linuxrc: ssi-boot agent on kernel \S+, ([0-9.]+) s after kernel start")
AGENT_SWITCH = re.compile(r"linuxrc: switching to \S+ on \S+ after ([0-9.]+) s")


def record(row: Row, r: BootResult) -> None:
    row.uptimes.append(r.uptime)
    row.walls.append(r.wall)
    steps = kmsg_steps(r.console)
    for step, stamp in steps.items():
        row.kmsg.setdefault(step, []).append(stamp)
    if (m := AGENT_MAIN.search(r.console)) is not None:
        row.agent_main.append(float(m.group(1)))
    if (m := AGENT_SWITCH.search(r.console)) is not None and "init" in steps:
        row.switch.append(steps["init"] + float(m.group(1)))
    for word in node_env(r.console).get("SSI_STAGES_MS", "").split():
        stage, _, ms = word.partition(":")
        row.stages.setdefault(stage, []).append(int(ms) / 1000)


def boot_all(rows: list[Row], k: Kernel, disk: Path, boots: int, logs: Path,
             loads: list[float], icount: int | None) -> None:
    for i in range(boots):
        for row in rows:  # interleaved: load drift hits every builder alike
            log = logs / f"{row.name.split()[0].strip(',')}-{len(row.uptimes)}.log"
            r = boot_once(k, row.image, [Disk(disk, extra=",snapshot=on")], log, APPEND,
                          icount)
            loads.append(os.getloadavg()[0])
            record(row, r)
            print(f"  boot {i + 1}/{boots} {row.name}: init at {r.uptime:.2f} s uptime, "
                  f"QEMU {r.wall:.1f} s", file=sys.stderr)


def debug_boot(row: Row, k: Kernel, disk: Path, logs: Path, icount: int | None) -> list[str]:
    """One boot of our image with ssi.debug: the agent's own stage timings."""
    r = boot_once(k, row.image, [Disk(disk, extra=",snapshot=on")], logs / "ours-debug.log",
                  [*APPEND, "ssi.debug"], icount)
    return [line.strip() for line in r.console.splitlines() if line.startswith("linuxrc:")]


@dataclass
class SyncFigures:
    boots: int = 0
    sync_ms: list[float] = field(default_factory=list)  # the sync stage, unchanged pair
    statuses: list[str] = field(default_factory=list)


def sync_boots(base: Path, row: Row, k: Kernel, n: int, logs: Path,
               icount: int | None) -> SyncFigures:
    """Node 2 (local boot flag, LABEL=ssiboot): a first boot puts the pair on its stale
    disk, then n boots find it unchanged; their sync stage is what the check costs."""
    from vm_tests import localdisk

    shared = root_disk(base, "syncroot", pair=row.image, k=k)
    append = " ".join(console_args(APPEND).split())
    local = localdisk.stale_disk(base, k.vmlinuz, append)
    figures = SyncFigures()
    for i in range(n + 1):
        r = boot_once(k, row.image, [Disk(shared, extra=",snapshot=on"),
                                     Disk(local)], logs / f"sync-{i}.log", APPEND, icount,
                      mac=cluster.MAC_N2)
        env = node_env(r.console)
        figures.statuses.append(env.get("SSI_SYNC", "?"))
        stages = dict(w.split(":") for w in env.get("SSI_STAGES_MS", "").split() if ":" in w)
        if i > 0 and env.get("SSI_SYNC") == "unchanged" and "sync" in stages:
            figures.sync_ms.append(int(stages["sync"]) / 1000)
        print(f"  sync boot {i}: {env.get('SSI_SYNC')} sync {stages.get('sync')} ms",
              file=sys.stderr)
    figures.boots = n
    return figures


# --- compressions ------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    image: Path
    size: int = 0
    build_s: float = 0.0
    unpack: list[float] = field(default_factory=list)  # kernel: unpack start to freed
    init: list[float] = field(default_factory=list)  # kernel start to the exec of /init
    uptimes: list[float] = field(default_factory=list)


def compression_variants(base: Path, agent: Path, k: Kernel, spec: str, busybox: Path
                         ) -> list[Variant]:
    """Our image in each compression of spec: zstd:N and gzip:N as mkinitrd.ssi writes them
    (--compress-level N, cached segments), lz4:N the legacy frame format the kernel reads
    (`lz4 -l -N` of the uncompressed archive), xz:N (`xz --x86`, CRC32), none."""
    argv = ["--root", str(ours_root(base)), *module_args(k), "--no-dhcpd", "--busybox",
            str(busybox)]
    raw = base / "ssi-none.img"
    run_ours(agent, base / "cache-warm", [*argv, "--compress", "none", "-o", str(raw)])
    out = []
    for item in spec.split(","):
        how, _, level = item.partition(":")
        v = Variant(item, base / f"ssi-{how}{level}.img")
        t0 = time.perf_counter()
        if how == "lz4":
            subprocess.run(["lz4", "-q", "-f", "-l", f"-{level}", str(raw), str(v.image)],
                           check=True)
        elif how == "xz":  # CRC32 and the x86 BCJ filter: what the kernel's unxz reads
            with open(v.image, "wb") as f:
                subprocess.run(["xz", "-c", "-T1", "--check=crc32", "--x86",
                                f"--lzma2=preset={level}e,dict=16MiB", str(raw)], stdout=f,
                               check=True)
        elif how == "none":
            shutil.copyfile(raw, v.image)
        else:  # no compressed segment cached: the time is the compression's
            cache = base / f"cache-{how}{level}"
            shutil.copytree(base / "cache-warm" / "agent", cache / "agent")
            run_ours(agent, cache, [*argv, "--compress", how, "--compress-level", level,
                                    "-o", str(v.image)])
        v.build_s = time.perf_counter() - t0
        v.size = v.image.stat().st_size
        out.append(v)
    return out


def boot_variants(variants: list[Variant], k: Kernel, disk: Path, boots: int, logs: Path,
                  icount: int | None) -> None:
    for i in range(boots):
        for v in variants:
            r = boot_once(k, v.image, [Disk(disk, extra=",snapshot=on")],
                          logs / f"variant-{v.name.replace(':', '')}-{i}.log", APPEND, icount)
            steps = kmsg_steps(r.console)
            if "unpack" in steps and "unpacked" in steps:
                v.unpack.append(steps["unpacked"] - steps["unpack"])
            if "init" in steps:
                v.init.append(steps["init"])
            v.uptimes.append(r.uptime)
            print(f"  variant boot {i + 1}/{boots} {v.name}: /init at "
                  f"{steps.get('init', float('nan')):.2f} s", file=sys.stderr)


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


def met(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def time_breakdown(rows: list[Row]) -> list[str]:
    """Each builder's boot split at the kernel's timestamps (medians over the boots)."""
    out = ["Where the boot time goes (guest seconds since kernel start, medians; from the "
           "kernel log, read by the shared root's init):", "",
           "| builder | initramfs unpacked | exec of /init | crng ready | /dev/vda probed "
           "| root mounted | shared root's init | /init to shared root's init |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = {step: med(v) for step, v in r.kmsg.items()}

        def at(step: str, k: dict[str, float] = k) -> str:
            return f"{k[step]:.2f}" if step in k else "-"
        after = f"{r.boot - k['init']:.2f} s" if r.boot is not None and "init" in k else "-"
        out.append(f"| {r.name} | {at('unpacked')} | {at('init')} | {at('crng')} | {at('vda')} "
                   f"| {at('mounted')} | {fmt_s(r.boot)} | {after} |")
    return out


def ours_phases(row: Row, floor: Row | None) -> list[str]:
    """Our boot, phase by phase (medians), beside the floor's where it has the phase."""
    if not row.uptimes or "init" not in row.kmsg or not row.agent_main:
        return []
    init, main, boot = med(row.kmsg["init"]), med(row.agent_main), med(row.uptimes)
    phases = [("kernel start to the exec of /init (incl. unpacking the image)", init)]
    phases.append(("exec of /init to the agent's main (PyInstaller bootloader, libpython, "
                   "interpreter, imports)", main - init))
    for stage, values in row.stages.items():
        phases.append((f"stage {stage}", med(values)))
    if row.switch:
        phases.append(("switch_root to the shared root's init", boot - med(row.switch)))
    phases.append(("total: kernel start to the shared root's init", boot))
    out = ["Our boot by phase (medians; stages from SSI_STAGES_MS in node.env):", "",
           "| phase | seconds | share |", "|---|---|---|"]
    out += [f"| {name} | {s:.3f} | {100 * s / boot:.0f} % |" for name, s in phases]
    if floor is not None and floor.uptimes and "init" in floor.kmsg:
        finit = med(floor.kmsg["init"])
        out += ["", f"The floor: exec of /init at {finit:.2f} s, then "
                f"{med(floor.uptimes) - finit:.2f} s to the shared root's init (insmod of the "
                "same modules, /dev/vda, mount, switch_root)."]
    return out


def report(rows: list[Row], floor: Row | None, k: Kernel, modules: list[str],
           versions: dict[str, str], args: argparse.Namespace, loads: list[float],
           startup: float, debug_lines: list[str], default_size: tuple[int, int],
           sync: SyncFigures | None, variants: list[Variant]) -> str:
    ours = rows[0]
    clock = ("QEMU TCG, guest clock counting instructions (-icount shift="
             f"{args.icount}: 1 instruction = {2 ** args.icount} ns)" if args.icount is not None
             else "QEMU TCG, guest clock = wall clock")
    out = [f"Kernel {k.kver}; modules ({len(modules)}, ext4 built in): {' '.join(modules)}",
           f"Anchors: dracut-core {versions.get('dracut-core', '?')}, initramfs-tools "
           f"{versions.get('initramfs-tools', '?')} (debootstrap {anchors.SUITE} chroot); "
           f"dracut -m '{DRACUT_MODULES}' --drivers <the modules>; mkinitramfs MODULES=list.",
           f"Machine: {os.cpu_count()} cores, load average {min(loads):.1f}-{max(loads):.1f} "
           f"(median {statistics.median(loads):.1f}) while measuring; {clock}"
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
    out += ["", "| ratio (ours / other) | cold build | rebuild | rebuild, CPU | image "
            "| decompressed | kernel start to init |", "|---|---|---|---|---|---|---|"]
    for a in [*rows[1:], *([floor] if floor else [])]:
        out.append(f"| ours / {a.name} | {ratio(ours.cold, a.cold)} | "
                   f"{ratio(ours.rebuild, a.rebuild)} | {ratio(ours.rebuild_cpu, a.rebuild_cpu)} "
                   f"| {ratio(ours.size, a.size)} | {ratio(ours.raw, a.raw)} "
                   f"| {ratio(ours.boot, a.boot)} |")
    goals = []
    if floor is not None and ours.boot is not None and floor.boot is not None:
        r = ours.boot / floor.boot
        goals.append(f"kernel start to the shared root's init <= {GOAL_BOOT_FLOOR}x the "
                     f"floor: {ours.boot:.2f} s / {floor.boot:.2f} s = {r:.2f}x "
                     f"({met(r <= GOAL_BOOT_FLOOR)})")
    dsize, dmods, static = default_size
    goals.append(f"image of the {len(modules)}-module set <= {GOAL_IMAGE / 1e6:.1f} MB: "
                 f"{ours.size / 1e6:.2f} MB ({met(ours.size <= GOAL_IMAGE)}); with "
                 f"busybox-static instead of {args.busybox_used}: {static / 1e6:.2f} MB")
    dracut = next((r for r in rows if r.name == "dracut"), None)
    below = f", dracut's {len(modules)}-module image {dracut.size / 1e6:.2f} MB" if dracut else ""
    goals.append(f"default build ({dmods} modules) <= {GOAL_DEFAULT_IMAGE / 1e6:.1f} MB and "
                 f"below dracut's: {dsize / 1e6:.2f} MB{below} "
                 f"({met(dsize <= GOAL_DEFAULT_IMAGE and (not dracut or dsize < dracut.size))})")
    if ours.rebuild is not None:
        goals.append(f"rebuild after an ssitab edit <= {GOAL_REBUILD} s: {ours.rebuild:.2f} s "
                     f"wall, {fmt_s(ours.rebuild_cpu)} CPU; of it interpreter start-up and "
                     f"imports {startup:.2f} s, the build itself "
                     f"{statistics.median(ours.inproc):.2f} s "
                     f"({met(ours.rebuild <= GOAL_REBUILD)})")
    before = next((r for r in rows if r.name == BEFORE), None)
    if before is not None and ours.cold is not None and before.cold is not None:
        goals.append(f"cold build no slower than before: {ours.cold:.2f} s vs "
                     f"{before.cold:.2f} s ({met(ours.cold <= before.cold * 1.1)}: "
                     f"10 % allowed for noise)")
    if sync is not None:
        s = med(sync.sync_ms) if sync.sync_ms else None
        goals.append(f"unchanged-sync check on a local-boot node <= {GOAL_SYNC} s: sync stage "
                     f"{fmt_s(s)} (median of {len(sync.sync_ms)} boots; statuses "
                     f"{' '.join(sync.statuses)}) ({met(s is not None and s <= GOAL_SYNC)})")
    out += ["", "Goals (issue 14):", *[f"- {g}" for g in goals]]
    level = image.DEFAULT_LEVEL[image.Compression.ZSTD]
    out += ["", f"Where our bytes go (each part compressed alone at zstd -{level}; the image "
            "compresses in a few segments, so the parts add up to about the image):", "",
            f"| part | files | decompressed | zstd -{level} |", "|---|---|---|---|"]
    for name, files, raw, packed in size_breakdown(ours.image):
        out.append(f"| {name} | {files} | {raw / 1e6:.2f} MB | {packed / 1e6:.2f} MB |")
    for r in rows[1:]:
        if r.name == BEFORE:
            continue
        tops = ", ".join(f"{p} {n / 1e6:.2f}" for p, n in top_entries(r.image))
        out.append(f"\nLargest in {r.name} (MB decompressed): {tops}")
    if ours.uptimes:
        out += ["", *time_breakdown([*rows, *([floor] if floor else [])])]
        out += ["", *ours_phases(ours, floor)]
        if debug_lines:
            out += ["", "One boot of ours with ssi.debug (its timestamps count from the exec "
                    "of /init):", "```", *debug_lines, "```"]
    if variants:
        out += ["", "Initramfs compression, our image (the kernel unpacks it before /init "
                "runs; medians):", "",
                "| compression | image | compress time | unpack (kernel) | exec of /init "
                "| shared root's init |", "|---|---|---|---|---|---|"]
        for v in variants:
            out.append(f"| {v.name} | {v.size / 1e6:.2f} MB | {v.build_s:.2f} s "
                       f"| {fmt_s(med(v.unpack) if v.unpack else None)} "
                       f"| {fmt_s(med(v.init) if v.init else None)} "
                       f"| {fmt_s(med(v.uptimes) if v.uptimes else None)} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--rebuilds", type=int, default=5)
    add_icount_option(parser)
    parser.add_argument("--sync-boots", type=int, default=0, metavar="N",
                        help="also boot a local-boot node N times with its pair unchanged")
    parser.add_argument("--compressions", default="", metavar="LIST",
                        help="also boot our image compressed each way, e.g. "
                        "zstd:3,zstd:9,zstd:19,lz4:9,gzip:6,none")
    parser.add_argument("--busybox", type=Path, help="the busybox of our images (default: "
                        "Debian's dynamic busybox from the anchors' chroot, what a Debian host "
                        "with the busybox package carries; else /bin/busybox)")
    parser.add_argument("--no-anchors", action="store_true", help="no dracut, no mkinitramfs")
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
    versions = {} if args.no_anchors else anchors.ensure_chroot()
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-initrd.") as tmp:
        base = Path(tmp)
        agent = snapshot_agent(base)
        print("building: mkinitrd.ssi ...", file=sys.stderr)
        busybox = args.busybox or next(
            (p for p in (anchors.chroot_dir() / "bin/busybox", contents.BUSYBOX)
             if p.is_file()), contents.BUSYBOX)
        print(f"busybox: {busybox}", file=sys.stderr)
        args.busybox_used = busybox
        ours, modules = bench_ours(base, agent, k, args.rebuilds, busybox)
        before = bench_before(base, agent, k)
        default_size = default_build_size(base, agent, k, busybox)
        startup = python_startup(base)
        rows = [ours, before]
        if not args.no_anchors:
            print("building: dracut, mkinitramfs (chroot) ...", file=sys.stderr)
            rows += bench_anchors(base, k, modules, args.rebuilds)
        floor = floor_image(base, k)
        loads.append(os.getloadavg()[0])
        for r in [*rows, floor]:
            measure_size(r)
        debug_lines: list[str] = []
        logs = base / "logs"
        logs.mkdir()
        sync = None
        variants: list[Variant] = []
        if not args.no_boot:
            disk = root_disk(base)
            boot_all([*rows, floor], k, disk, args.boots, logs, loads, args.icount)
            debug_lines = debug_boot(ours, k, disk, logs, args.icount)
            if args.sync_boots:
                sync = sync_boots(base, ours, k, args.sync_boots, logs, args.icount)
            if args.compressions:
                variants = compression_variants(base, agent, k, args.compressions, busybox)
                boot_variants(variants, k, disk, args.boots, logs, args.icount)
        text = report(rows, None if args.no_boot else floor, k, modules, versions, args,
                      loads, startup, debug_lines, default_size, sync, variants)
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
