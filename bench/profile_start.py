"""Where the frozen agent's start-up goes, measured inside the guest (QEMU TCG; issue 14).

    .venv/bin/python bench/profile_start.py [--rounds 5] [--keep DIR] [--json FILE]

One ramdisk, one boot per --boots: busybox is /init and runs every probe as its
child, round after round, timing each from just before the exec ($EPOCHREALTIME,
microseconds) to the stamps the probe prints itself. The probes:

- `nop`: a C program that returns at once (fork, exec, ld.so and libc): the floor
  under every other probe;
- `libpython`: a C program that dlopens the frozen agent's libpython as
  PyInstaller's bootloader does (RTLD_NOW | RTLD_GLOBAL), then initialises the
  interpreter as it does (isolated, no site, base_library.zip and lib-dynload
  on the path, optimize 2): the dynamic linking of libpython and the
  interpreter's own initialisation, each timed;
- `frozen`: the frozen agent as the kernel runs it (mkinitrd.ssi's recipe),
  stopped before main by SSI_STARTUP_PROBE (linuxrc_agent/__main__.py), which
  stamps the first Python code (a runtime hook), the start and the end of the
  agent's imports;
- `frozen, no restart`: the same with the bootloader's re-exec skipped
  (_PYI_PARENT_PROCESS_LEVEL=0 and LD_LIBRARY_PATH given): what that re-exec costs;
- `frozen, PyInstaller defaults`: the agent frozen as before issue 14 (zlib
  level 6/9, optimize 0, the whole graph of the standard library, every codec,
  PyInstaller's inspect runtime hook);
- `python3.11 + zip`: Debian's python3.11 (libpython linked in, no bootloader)
  with the same bytecode in one stored zip, imported by zipimport: the
  alternative README proposes.

A last probe runs a freeze with `-X importtime` once: the agent's imports one by
one. Every probe has its own copy of its files, so round 1 is cold for each (QEMU
translates code the first time it runs, as in a real boot, where /init runs once);
rounds 2.. are warm. Medians are over --boots boots (round 1) and boots x rounds
(warm).
"""

from __future__ import annotations

import argparse
import json
import marshal
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_initrd import add_icount_option, icount_args  # noqa: E402

from mkinitrd_ssi.initrd import contents, elf, freeze, image  # noqa: E402
from mkinitrd_ssi.initrd.build import AGENT_PACKAGE, cache_root  # noqa: E402
from mkinitrd_ssi.initrd.cpio import Archive  # noqa: E402
from vm_tests.kernel import kernel  # noqa: E402
from vm_tests.qemu import Vm, VmConfig, console_args  # noqa: E402

PROBE_C = r"""
#include <Python.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

#define SYM(name) __typeof__(&name) p_##name = (__typeof__(&name))dlsym(lib, #name); \
    if (!p_##name) return 2;

/* pyprobe | pyprobe LIBPYTHON HOME: dlopen libpython, initialise it like the PyInstaller
   bootloader, print the stamps, _exit (no finalisation). */
int main(int argc, char **argv) {
    double t0 = now();
    if (argc < 3) return 0;
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    double t1 = now();
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 2; }
    SYM(PyPreConfig_InitIsolatedConfig)
    SYM(Py_PreInitialize)
    SYM(PyConfig_InitIsolatedConfig)
    SYM(PyConfig_SetBytesString)
    SYM(PyWideStringList_Append)
    SYM(Py_DecodeLocale)
    SYM(Py_InitializeFromConfig)
    SYM(PyStatus_Exception)
    PyPreConfig pre;
    p_PyPreConfig_InitIsolatedConfig(&pre);
    pre.utf8_mode = -1;
    pre.configure_locale = 1;
    if (p_PyStatus_Exception(p_Py_PreInitialize(&pre))) return 3;
    PyConfig c;
    p_PyConfig_InitIsolatedConfig(&c);
    c.site_import = 0;
    c.write_bytecode = 0;
    c.configure_c_stdio = 1;
    c.install_signal_handlers = 1;
    c.optimization_level = 2;
    p_PyConfig_SetBytesString(&c, &c.program_name, argv[0]);
    p_PyConfig_SetBytesString(&c, &c.home, argv[2]);
    char path[4096];
    const char *sub[] = {"/base_library.zip", "/python3.11/lib-dynload", ""};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s%s", argv[2], sub[i]);
        p_PyWideStringList_Append(&c.module_search_paths, p_Py_DecodeLocale(path, NULL));
    }
    c.module_search_paths_set = 1;
    if (p_PyStatus_Exception(p_Py_InitializeFromConfig(&c))) return 4;
    double t2 = now();
    printf("pyprobe main=%.6f dlopen=%.6f init=%.6f\n", t0, t1, t2);
    fflush(stdout);
    _exit(0);
}
"""

# The agent's start-up stamps, as the plain interpreter runs it: the first line of this code
# is its first Python code; it installs the same start-up cache the frozen agent's runtime
# hook does (the zip holds the same modules), then imports the agent.
PLAIN_PY = ("import time,os;t=time.clock_gettime(time.CLOCK_BOOTTIME)\n"
            "try:\n  __import__('_ssi_startcache')\nexcept ImportError:\n  pass\n"
            "s=time.clock_gettime(time.CLOCK_BOOTTIME)\n"
            "from linuxrc_agent.main import main\n"
            "i=time.clock_gettime(time.CLOCK_BOOTTIME);n=time.clock_gettime(time.CLOCK_BOOTTIME)\n"
            "os.write(1,('ssi-startup-probe times first_code=%f import_start=%f imported=%f "
            "now=%f realtime=%f\\n'%(t,s,i,n,time.time())).encode());os._exit(0)\n")

A = "/ssi/agent"  # the layout of a real image: the frozen agent here, its libraries in /lib


@dataclass
class Probe:
    name: str
    argv: str  # shell words
    env: str = ""


@dataclass
class Runs:
    cold: list[dict[str, float]] = field(default_factory=list)
    warm: list[dict[str, float]] = field(default_factory=list)


def compile_probe(work: Path) -> Path:
    src = work / "pyprobe.c"
    src.write_text(PROBE_C)
    out = work / "pyprobe"
    include = subprocess.run([sys.executable, "-c", "import sysconfig;"
                              "print(sysconfig.get_paths()['include'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["gcc", "-O2", "-I", include, str(src), "-o", str(out), "-ldl"], check=True)
    return out


def zip_of_frozen(frozen: Path, dest: Path) -> list[str]:
    """The frozen agent's bytecode (its PYZ and base_library.zip) as one stored zip of .pyc
    files, as zipimport reads them; returns the module names."""
    from PyInstaller.archive.readers import CArchiveReader

    pyz = CArchiveReader(str(frozen / freeze.NAME)).open_embedded_archive("PYZ.pyz")
    header = importlib_magic() + (1).to_bytes(4, "little") + bytes(8)  # unchecked hash pyc
    names = []
    with zipfile.ZipFile(dest, "w") as out, \
            zipfile.ZipFile(frozen / "_internal" / "base_library.zip") as base:
        for info in base.infolist():
            out.writestr(zipfile.ZipInfo(info.filename), base.read(info))
        for name in sorted(pyz.toc):
            typecode = pyz.toc[name][0]
            code = pyz.extract(name)
            path = name.replace(".", "/") + ("/__init__.pyc" if typecode == 1 else ".pyc")
            out.writestr(zipfile.ZipInfo(path), header + marshal.dumps(code))
            names.append(name)
    return names


def importlib_magic() -> bytes:
    import importlib.util

    return importlib.util.MAGIC_NUMBER


def add_tree_copy(arc: Archive, frozen: Path, dest: str) -> None:
    arc.tree(frozen, dest)


def add_elf_closure(arc: Archive, roots: Iterable[str], library_path: list[str]) -> None:
    resolver = elf.Resolver(library_path=library_path)
    for inst in resolver.closure(roots, extra=elf.DLOPENED_BY_LIBC):
        if inst.symlink is not None:
            arc.symlink(inst.path, inst.symlink)
        else:
            arc.file(inst.path, inst.source)


def init_script(probes: list[Probe], rounds: int, importtime: str) -> str:
    lines = ["#!/bin/busybox sh", "/bin/busybox mount -t proc proc /proc",
             "/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null", "export PATH=/bin",
             "probe() {  # NAME ROUND ENV... -- ARGV...",
             '  name=$1; round=$2; shift 2',
             '  s=$EPOCHREALTIME',
             '  out=$(/bin/busybox env -i "$@" 2>&1)',
             '  e=$EPOCHREALTIME',
             '  echo "PROF $name $round start=$s end=$e"',
             '  echo "$out" | /bin/busybox sed "s/^/PROFOUT $name $round /"',
             "}"]
    # probe=NAME on the kernel command line (the kernel hands it to /init as a variable):
    # that probe alone, once, then wait for the monitor's `info jit` (--jit).
    lines.append('case "${probe:-}" in')
    for p in probes:
        lines.append(f"  '{p.name}') probe '{p.name}' 1 {p.env} {p.argv}; echo JIT-READY; "
                     "/bin/busybox sleep 3600;;")
    lines.append("esac")
    for r in range(1, rounds + 1):
        for p in probes:
            lines.append(f"probe '{p.name}' {r} {p.env} {p.argv}")
    lines += [f"/bin/busybox env -i SSI_STARTUP_PROBE= {importtime} 2>&1 "
              "| /bin/busybox sed 's/^/IMPORTTIME /'",
              "echo PROFILE-DONE", "/bin/busybox poweroff -f"]
    return "\n".join(lines) + "\n"


def build_image(work: Path, rounds: int) -> tuple[Path, list[Probe]]:
    cache = cache_root()
    trees = {
        "default": freeze.frozen_agent(AGENT_PACKAGE, cache),
        "plain": freeze.frozen_agent(AGENT_PACKAGE, cache, recipe=freeze.PLAIN),
        "importtime": freeze.frozen_agent(AGENT_PACKAGE, cache, recipe=freeze.Recipe(
            python_options=("X importtime",))),
    }
    arc = Archive()
    contents.add_base(arc)
    contents.add_busybox(arc)
    # Each probe its own copy of what it runs, so that each one's first round is cold.
    places = {"default": A, "norestart": "/ssi/agent-nr", "plain": "/ssi/agent-plain",
              "importtime": "/ssi/agent-it", "libpython": "/ssi/agent-lp"}
    for place, tree in (("default", "default"), ("norestart", "default"), ("plain", "plain"),
                        ("importtime", "importtime"), ("libpython", "default")):
        arc.tree(trees[tree], places[place])
    for tree in trees.values():
        elves = sorted(str(p) for p in tree.rglob("*") if p.is_file() and elf.is_elf(p))
        contents.add_libraries(arc, tree, elves, [])
    pyprobe = compile_probe(work)
    arc.file("bin/pyprobe", pyprobe, 0o755)
    add_elf_closure(arc, [str(pyprobe)], [])
    # The plain interpreter: Debian's python3.11, the same bytecode in one zip, the
    # extension modules in lib-dynload, the stdlib landmark getpath looks for.
    py = Path(sys.executable).resolve()
    arc.file("usr/bin/python3.11", py, 0o755)
    stdzip = work / "python311.zip"
    zip_of_frozen(trees["default"], stdzip)
    arc.file("usr/lib/python311.zip", stdzip, 0o644)
    arc.data("usr/lib/python3.11/os.py", b"", 0o644)
    arc.data("probe_plain.py", PLAIN_PY.encode(), 0o644)
    dynload = trees["default"] / "_internal" / "python3.11" / "lib-dynload"
    arc.tree(dynload, "usr/lib/python3.11/lib-dynload")
    add_elf_closure(arc, [str(py), *(str(p) for p in dynload.iterdir())], [])
    nr_env = f"_PYI_PARENT_PROCESS_LEVEL=0 LD_LIBRARY_PATH={places['norestart']}/_internal"
    probes = [
        Probe("nop", "/bin/pyprobe"),
        Probe("libpython", f"/bin/pyprobe {places['libpython']}/_internal/"
              f"libpython3.11.so.1.0 {places['libpython']}/_internal"),
        Probe("frozen", f"{A}/linuxrc", "SSI_STARTUP_PROBE="),
        Probe("frozen-norestart", f"{places['norestart']}/linuxrc",
              f"SSI_STARTUP_PROBE= {nr_env}"),
        Probe("frozen-plain", f"{places['plain']}/linuxrc", "SSI_STARTUP_PROBE="),
        Probe("python-zip", "/usr/bin/python3.11 -I -S -OO /probe_plain.py"),
    ]
    arc.data("init", init_script(probes, rounds, f"{places['importtime']}/linuxrc").encode(),
             0o755)
    out = work / "profile.img"
    out.write_bytes(image.build(list(arc.entries.values()), image.Compression.ZSTD, 0,
                                image.SegmentCache(cache / "segments"), 3))
    return out, probes


STAMP = re.compile(r"(\w+)=([0-9.]+)")


def parse(console: str, rounds: Runs | None = None) -> dict[str, Runs]:
    """Per probe: each run's phases in seconds."""
    runs: dict[str, Runs] = {}
    shell: dict[tuple[str, str], dict[str, float]] = {}
    inner: dict[tuple[str, str], dict[str, float]] = {}
    for line in console.replace("\r", "").splitlines():
        if line.startswith("PROF "):
            _, name, rnd, rest = line.split(" ", 3)
            shell[(name, rnd)] = {k: float(v) for k, v in STAMP.findall(rest)}
        elif line.startswith("PROFOUT ") and (" pyprobe " in line or " times " in line):
            _, name, rnd, rest = line.split(" ", 3)
            inner[(name, rnd)] = {k: float(v) for k, v in STAMP.findall(rest)}
    for (name, rnd), sh in shell.items():
        st = inner.get((name, rnd), {})
        phases = {"total": sh["end"] - sh["start"]}
        if "realtime" in st:  # the agent's CLOCK_BOOTTIME stamps, in the shell's clock
            off = st["realtime"] - st["now"]
            first = (st["first_code"] or st["import_start"]) + off
            phases.update(to_first_code=first - sh["start"],
                          first_code_to_import=st["import_start"] + off - first,
                          imports=st["imported"] - st["import_start"],
                          to_main=st["imported"] + off - sh["start"])
        elif "init" in st:
            phases.update(exec_to_main=st["main"] - sh["start"],
                          dlopen=st["dlopen"] - st["main"], init=st["init"] - st["dlopen"],
                          to_initialised=st["init"] - sh["start"])
        r = runs.setdefault(name, Runs())
        (r.cold if rnd == "1" else r.warm).append(phases)
    return runs


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def importtime_top(console: str, n: int = 25) -> tuple[list[tuple[str, int, int]], int]:
    """(the n costliest imports by self time: name, self us, cumulative us; the total us
    of the agent's main import)."""
    rows = []
    total = 0
    for line in console.replace("\r", "").splitlines():
        if not line.startswith("IMPORTTIME "):
            continue
        m = IMPORT_LINE.search(line)
        if m is None:
            continue
        name, self_us, cum = m.group(4), int(m.group(1)), int(m.group(2))
        rows.append((name, self_us, cum))
        if name == "linuxrc_agent.main":
            total = cum
    return sorted(rows, key=lambda r: -r[1])[:n], total


def boot(img: Path, log: Path, icount: int | None) -> str:
    k = kernel()
    config = VmConfig(kernel=k.vmlinuz, initrd=img, append=console_args(["rdinit=/init"]),
                      extra=icount_args(icount))
    with Vm(config, log) as vm:
        vm.wait_for("PROFILE-DONE", timeout=1800)
        vm.wait_exit(60)
        return vm.output()


JIT = {"tbs": re.compile(r"TB count\s+(\d+)"),
       "code": re.compile(r"gen code size\s+(\d+)"),
       "target": re.compile(r"TB avg target size\s+(\d+)")}


def jit_boot(img: Path, work: Path, probe: str) -> dict[str, int]:
    """One boot running `probe` alone; QEMU's translation counters (HMP `info jit`) after it:
    how much guest code TCG translated, a cost the host's load does not change."""
    import socket

    k = kernel()
    sock = work / f"mon-{probe}.sock"
    config = VmConfig(kernel=k.vmlinuz, initrd=img,
                      append=console_args(["rdinit=/init", f"probe={probe}"]),
                      extra=["-monitor", f"unix:{sock},server=on,wait=off"])
    with Vm(config, work / f"jit-{probe}.log") as vm:
        vm.wait_for("JIT-READY", timeout=1800)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.settimeout(30)
            s.sendall(b"info jit\n")
            text = b""
            while b"TLB elided" not in text:
                chunk = s.recv(65536)
                if not chunk:
                    break
                text += chunk
    out = {}
    for key, pattern in JIT.items():
        m = pattern.search(text.decode(errors="replace"))
        if m:
            out[key] = int(m.group(1))
    return out


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(runs: dict[str, Runs]) -> list[str]:
    out = ["| probe | phase | cold (round 1) | warm |", "|---|---|---|---|"]
    for name, r in runs.items():
        phases = list((r.cold or r.warm)[0])
        for ph in phases:
            cold = med([x[ph] for x in r.cold if ph in x])
            warm = med([x[ph] for x in r.warm if ph in x])
            out.append(f"| {name} | {ph} | {cold * 1000:.0f} ms | {warm * 1000:.0f} ms |")
    return out


def breakdown(runs: dict[str, Runs]) -> list[str]:
    """The frozen agent's start-up split into phases, cold (what a boot pays), in ms."""
    def c(name: str, ph: str, which: str = "cold") -> float:
        r = runs.get(name)
        values = [x[ph] for x in (getattr(r, which) if r else []) if ph in x]
        return med(values) * 1000

    out = []
    for which in ("cold", "warm"):
        nop = c("nop", "total", which)
        lp_main, dl, init = (c("libpython", "exec_to_main", which),
                             c("libpython", "dlopen", which), c("libpython", "init", which))
        nr_first = c("frozen-norestart", "to_first_code", which)
        first = c("frozen", "to_first_code", which)
        rows = [
            ("exec of a small C program, ld.so, libc, exit (nop)", nop),
            ("PyInstaller's bootloader re-exec'ing itself (frozen - frozen, no restart)",
             first - nr_first),
            ("dynamic linking of libpython (dlopen, RTLD_NOW)", dl),
            ("interpreter initialisation (isolated; getpath, encodings, frozen modules)", init),
            ("bootloader's own work and PyInstaller's bootstrap (frozen, no restart, to the "
             "first Python code, minus the probe's exec, dlopen and init)",
             nr_first - lp_main - dl - init),
            ("runtime hooks and entry script", c("frozen", "first_code_to_import", which)),
            ("the agent's imports", c("frozen", "imports", which)),
            ("total: exec of /init to the agent's main (frozen)", c("frozen", "to_main", which)),
        ]
        out += [f"{which}:"] + [f"  {ms:7.0f} ms  {what}" for what, ms in rows]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--boots", type=int, default=1)
    add_icount_option(parser)
    parser.add_argument("--jit", action="store_true",
                        help="instead: one boot per probe, QEMU's count of translated code")
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="profile-start.") as tmp:
        work = Path(tmp)
        img, probes = build_image(work, args.rounds)
        if args.jit:
            base = jit_boot(img, work, "nop")
            lines = ["| probe | TBs translated beyond nop's boot | guest code translated |",
                     "|---|---|---|"]
            for p in probes:
                j = jit_boot(img, work, p.name)
                tbs = j["tbs"] - base["tbs"]
                lines.append(f"| {p.name} | {tbs} | ~{tbs * j['target'] / 1e3:.0f} KB |")
            print("\n".join(lines))
            return 0
        runs: dict[str, Runs] = {}
        consoles = []
        for i in range(args.boots):
            text = boot(img, work / f"boot{i}.log", args.icount)
            consoles.append(text)
            for name, r in parse(text).items():
                agg = runs.setdefault(name, Runs())
                agg.cold += r.cold
                agg.warm += r.warm
            print(f"boot {i + 1}/{args.boots} done, load {os.getloadavg()[0]:.1f}",
                  file=sys.stderr)
        top, total = importtime_top(consoles[0])
        lines = [f"Frozen agent start-up inside the guest (QEMU TCG), {args.boots} boot(s) x "
                 f"{args.rounds} rounds; load average {os.getloadavg()[0]:.1f}", "",
                 *table(runs), "", "Breakdown (medians):", *breakdown(runs), "",
                 f"-X importtime, cold, linuxrc_agent.main cumulative {total / 1000:.0f} ms; "
                 "costliest by self time:", "| module | self ms | cumulative ms |",
                 "|---|---|---|",
                 *(f"| {n} | {s / 1000:.1f} | {cu / 1000:.1f} |" for n, s, cu in top)]
        print("\n".join(lines))
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy2(img, args.keep / img.name)
            for i, text in enumerate(consoles):
                (args.keep / f"boot{i}.log").write_text(text)
            (args.keep / "report.md").write_text("\n".join(lines) + "\n")
        if args.json:
            args.json.write_text(json.dumps({n: vars(r) for n, r in runs.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
