"""A 1,000,000-line ssitab: parse time and peak memory, valid and with errors near its end.

Each case runs in a fresh Python process so the peak resident set (ru_maxrss) is the
parse's own; the table is read from a file with ssitab.load, as mkdhcpd.ssi does.

    .venv/bin/python bench/bench_ssitab_1m.py              # 1,000,000 lines
    .venv/bin/python bench/bench_ssitab_1m.py --lines 100000

Cases: `valid` (a header and 999,999 nodes, the most node numbers allow), `errors`
(the same with three broken lines near the end: a bad address, a duplicate MAC of
line 2, a bad flag), whose reported FILE:LINE:COL must be exactly those lines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from linuxrc_agent.ssitab import MAX_NODE  # noqa: E402


def node_line(n: int) -> str:
    """Node n of a big table: its own address in 10.0.0.0/8 (n < 2**20) and its own MAC."""
    return f"{n} 10.{n >> 16}.{n >> 8 & 255}.{n & 255}/8 52:54:00:{n >> 16:02x}:" \
           f"{n >> 8 & 255:02x}:{n & 255:02x} 0 -"


def big_table(lines: int) -> list[str]:
    """`lines` lines: a comment, then nodes 1.. (at most MAX_NODE of them)."""
    nodes = min(lines - 1, MAX_NODE)
    return ["# node ip mac local bootdev", *(node_line(n) for n in range(1, nodes + 1))]


def broken(table: list[str]) -> tuple[list[str], list[tuple[int, int, str]]]:
    """Three errors among the last lines; returns the table and the (line, col, message
    start) each must be reported with."""
    out = list(table)
    n = len(out)
    a, b, c = n - 7, n - 4, n - 1  # 0-based indexes of the lines to break
    num, _ip, mac = out[a].split()[:3]
    out[a] = f"{num} 10.0.0.256/8 {mac} 0 -"
    num, ip, _mac = out[b].split()[:3]
    dup = out[1].split()[2]  # line 2's MAC
    out[b] = f"{num}  {ip}  {dup} 0 -"
    num, ip, mac = out[c].split()[:3]
    out[c] = f"{num} {ip} {mac} maybe -"
    return out, [
        (a + 1, out[a].index("10.0.0.256") + 1, "bad IPv4 address '10.0.0.256'"),
        (b + 1, out[b].index(dup) + 1, f"duplicate MAC {dup} (first on line 2)"),
        (c + 1, out[c].index("maybe") + 1, "bad local boot flag 'maybe'"),
    ]


CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from linuxrc_agent import ssitab
def hwm():
    # VmHWM: this process's own peak; ru_maxrss would count the parent's before exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
before = hwm()
t0 = time.perf_counter()
problems = []
try:
    table = ssitab.load(sys.argv[2])
    nodes = len(table)
except ssitab.SsitabError as e:
    nodes = 0
    problems = [[p.line, p.col, p.message] for p in e.problems]
seconds = time.perf_counter() - t0
peak = hwm()
print(json.dumps({"seconds": seconds, "peak_kib": peak, "before_kib": before,
                  "nodes": nodes, "problems": problems}))
"""


def measure(path: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(path)], check=True,
                         capture_output=True, text=True).stdout
    result: dict[str, object] = json.loads(out)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; best time kept")
    args = parser.parse_args()
    table = big_table(args.lines)
    bad, expected = broken(table)
    failed = False
    with tempfile.TemporaryDirectory(prefix="ssitab-1m-") as tmp:
        for name, lines in (("valid", table), ("errors", bad)):
            path = Path(tmp) / f"ssitab-{name}"
            path.write_text("\n".join(lines) + "\n")
            runs = [measure(path) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: float(r["seconds"]))  # type: ignore[arg-type]
            peak = max(int(r["peak_kib"]) for r in runs)  # type: ignore[call-overload]
            base = min(int(r["before_kib"]) for r in runs)  # type: ignore[call-overload]
            size = path.stat().st_size
            print(f"{name:7s} {len(lines):>9,} lines ({size / 1e6:.1f} MB): "
                  f"{best['seconds']:.2f} s (best of {args.repeat}), peak RSS "
                  f"{peak / 1024:.0f} MiB ({(peak - base) / 1024:.0f} MiB over the "
                  f"interpreter's {base / 1024:.0f} MiB), {best['nodes']:,} nodes")
            if name == "errors":
                got = [tuple(p) for p in best["problems"]]  # type: ignore[attr-defined]
                for (line, col, text), problem in zip(expected, got, strict=False):
                    ok = problem[0] == line and problem[1] == col and text in problem[2]
                    failed |= not ok
                    print(f"  {'ok ' if ok else 'BAD'} line {problem[0]:,} col {problem[1]}: "
                          f"{problem[2]}  (expected line {line:,} col {col})")
                failed |= len(got) != len(expected)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
