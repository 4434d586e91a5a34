"""Power-on to joined for N = 1, 2, 4, 8 PXE nodes booting at once from one server,
and for UEFI nodes (OVMF's PXE, shim, GRUB; Secure Boot off and on) beside them.

    .venv/bin/python bench/bench_pxe.py [--nodes 1,2,4,8] [--repeats 3] [--keep DIR]
        [--uefi uefi,uefi-sb] [--uefi-nodes 1]

Root needed. One private boot network for the whole run (its own namespace,
bridge, real ISC dhcpd on mkdhcpd.ssi's output, real tftpd-hpa on lilo.ssi's
/tftpboot), and a generated node table with 8 diskless nodes of distinct MACs.
Each round powers on N QEMU (TCG) nodes at once, each on its own tap, with
QEMU's iPXE ROM; `joined` is when the shared root's init prints the agent's
node.env (SSI-NODE-ENV-BEGIN) on that node's console. Rounds are interleaved
(1, 2, 4, 8, 1, 2, ...) so that load drift spreads over every N. The anchor
is N = 1 in the same run: the report gives each N's median and max against it.
UEFI rounds (--uefi-nodes machines each, 1 by default) are interleaved with
them: OVMF with no option ROM on the NIC, so its own PXE runs, DHCP hands it
shim by option 93 (mkdhcpd.ssi), shim fetches Debian's signed GRUB, GRUB reads
lilo.ssi's grub.cfg and loads the same pair over TFTP.

Where one boot's time goes, from timestamps on both sides:
- the console, read every 50 ms and stamped on the host: SeaBIOS's serial
  console (-machine graphics=off) carries iPXE's own output (DHCP done, each
  file fetched); OVMF's carries its PXE (its address, the boot file name and
  download), shim's fetch of GRUB, GRUB's banner and grub.cfg's echo; the
  agent prints its start and switch_root, the init joins;
- the guest's own clock: the init prints its uptime and the kernel's "Run
  /init" stamp, so kernel start on the host clock is `joined - uptime`;
- the servers: dhcpd's log lines stamped as they appear, and tftpd's RRQ
  lines (tftpd-hpa logs only to syslog: the bench runs it with a private
  /dev whose /dev/log is the bench's own syslog socket).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mkinitrd_ssi.lilo import main as lilo  # noqa: E402
from mkinitrd_ssi.mkinitrd import main as mkinitrd  # noqa: E402
from mkinitrd_ssi.run import run  # noqa: E402
from vm_tests import cluster, images  # noqa: E402
from vm_tests.kernel import Kernel, kernel  # noqa: E402
from vm_tests.pxe import PxeNet, Syslog, pxe_network  # noqa: E402
from vm_tests.qemu import (  # noqa: E402
    ENV_BEGIN,
    ENV_END,
    INIT_MARKER,
    Disk,
    Nic,
    Uefi,
    Vm,
    VmConfig,
)

MAX_NODES = 8
CMDLINE = f"root=LABEL={cluster.ROOT_LABEL} console=ttyS0 panic=-1 quiet"
UPTIME = "SSI-BENCH-UPTIME"
# The shared root's init: the tests' markers, plus the guest clock.
BENCH_INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc 2>/dev/null
read up rest < /proc/uptime
echo "{INIT_MARKER} pid=$$"
echo "{UPTIME} $up"
/bin/busybox dmesg | /bin/busybox grep -m1 'Run /init as init process' \\
    | /bin/busybox sed 's/^/{UPTIME}-KMSG /'
echo "{ENV_BEGIN}"
/bin/busybox cat /run/ssi/node.env
echo "{ENV_END}"
/bin/busybox poweroff -f
"""
# What a round boots: the label in the report. BIOS machines use QEMU's iPXE ROM;
# UEFI ones OVMF (vm_tests.qemu.Uefi), Secure Boot with Microsoft's keys enrolled.
FIRMWARES = {
    "bios": "BIOS (SeaBIOS, iPXE ROM)",
    "uefi": "UEFI (OVMF PXE, shim, GRUB)",
    "uefi-sb": "UEFI, Secure Boot on",
}
# Console milestones, in boot order; the first match of each is stamped. iPXE's and
# OVMF's never both appear on one console.
MILESTONES = {
    "dhcp_start": r"Configuring \(net0 ",
    "dhcp_ok": r"Configuring \(net0 [^)]*\)[. ]*ok",
    "kernel_ok": r"vmlinuz\.\.\.[ 0-9%\x08]*ok",
    "initrd_ok": r"initrd\.img\.\.\.[ 0-9%\x08]*ok",
    "pxe_start": r">>Start PXE over IPv4",
    "station_ip": r"Station IP address is",
    "nbp_ok": r"NBP file downloaded successfully",
    "grub": r"Welcome to GRUB!",
    "grub_cfg": r"lilo\.ssi: booting",
    "agent": r"linuxrc: ssi-boot agent on kernel \S+, ([0-9.]+) s after kernel start",
    "switch": r"linuxrc: switching to \S+ on \S+ after ([0-9.]+) s",
    "joined": ENV_BEGIN,
}
# Phases of one boot: (name, from, to) on the host clock, seconds.
LINUX_PHASES = (
    ("kernel start to exec of /init", "kernel_start", "run_init"),
    ("/init to the agent's main (unpacked, frozen Python started)", "run_init", "agent"),
    ("agent main to switch_root", "agent", "switch"),
    ("switch_root to joined (init prints node.env)", "switch", "joined"),
)
BIOS_PHASES = (
    ("firmware (SeaBIOS, iPXE start, its 2 Ctrl-B prompts)", "power_on", "dhcp_start"),
    ("DHCP: iPXE's DISCOVER to dhcpd's ACK", "dhcp_start", "dhcp_ack"),
    ("iPXE still configuring after the ACK (IPv6 router solicitation)", "dhcp_ack",
     "dhcp_ok"),
    ("TFTP: script + kernel", "dhcp_ok", "kernel_ok"),
    ("TFTP: ramdisk", "kernel_ok", "initrd_ok"),
    ("iPXE hand-over to kernel start", "initrd_ok", "kernel_start"),
    *LINUX_PHASES,
)
# Two splits come from tftpd's log: shim prints nothing between its start and GRUB's
# banner, and GRUB nothing between grub.cfg's echo and the kernel, but asks for the
# ramdisk once the kernel is in (and, with Secure Boot, checked).
UEFI_PHASES = (
    ("firmware (OVMF to its PXE start)", "power_on", "pxe_start"),
    ("OVMF PXE: DHCP", "pxe_start", "station_ip"),
    ("OVMF PXE: shim over TFTP (\"NBP filename is shimx64.efi\" to downloaded)",
     "station_ip", "nbp_ok"),
    ("shim: started, asks for its revocation lists, then for GRUB", "nbp_ok", "rrq_grub"),
    ("shim: GRUB over TFTP, checked, started (\"Welcome to GRUB!\")", "rrq_grub",
     "grub"),
    ("GRUB: grub.cfg looked up and read (\"lilo.ssi: booting\")", "grub", "grub_cfg"),
    ("GRUB: kernel over TFTP (to its ramdisk request)", "grub_cfg", "rrq_initrd"),
    ("GRUB: ramdisk over TFTP, hand-over to kernel start", "rrq_initrd", "kernel_start"),
    *LINUX_PHASES,
)


def table_for_bench(n: int = MAX_NODES) -> str:
    """A node table of n diskless nodes with distinct MACs (and none of the tests')."""
    lines = ["# bench_pxe: generated node table",
             "# node  ip             mac                local bootdev options"]
    lines += [f"{i}  10.77.0.{100 + i}/24  {mac(i)}  0  -  hostname=b{i}"
              for i in range(1, n + 1)]
    return "\n".join(lines) + "\n"


def mac(i: int) -> str:
    return f"52:54:00:5b:00:{i:02x}"


# --- the servers -------------------------------------------------------------------------


@contextlib.contextmanager
def boot_network(work: Path, dhcpd_conf: Path, tftpboot: Path, router_adverts: bool = False
                 ) -> Iterator[tuple[PxeNet, Syslog]]:
    """vm_tests.pxe's network, but tftpd's syslog captured: leaving it kills the servers
    and deletes the namespace (with bridge and taps)."""
    with Syslog(work / "syslog.sock") as syslog, \
            pxe_network(work, dhcpd_conf, tftpboot, router_adverts, syslog) as net:
        yield net, syslog


# --- one round ---------------------------------------------------------------------------


@dataclass
class Node:
    index: int
    vm: Vm
    tap: str
    t0: float  # power-on, host monotonic
    firmware: str = "bios"  # a key of FIRMWARES
    stamps: dict[str, float] = field(default_factory=dict)  # milestone -> seconds after t0
    values: dict[str, float] = field(default_factory=dict)  # numbers the console printed

    def joined(self) -> float | None:
        return self.stamps.get("joined")


def watch(nodes: list[Node], dhcpd_log: Path, timeout: float) -> list[tuple[float, str]]:
    """Stamp each node's milestones and dhcpd's new lines until every node joined."""
    regexes = {name: re.compile(p) for name, p in MILESTONES.items()}
    dhcp_lines: list[tuple[float, str]] = []
    dhcp_pos = dhcpd_log.stat().st_size
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        with open(dhcpd_log, "rb") as f:
            f.seek(dhcp_pos)
            chunk = f.read()
        cut = chunk.rfind(b"\n") + 1
        dhcp_pos += cut
        dhcp_lines += [(now, line) for line in chunk[:cut].decode(errors="replace").splitlines()]
        pending = 0
        for node in nodes:
            if "joined" in node.stamps:
                continue
            text = node.vm.output()
            for name, regex in regexes.items():
                if name not in node.stamps and (m := regex.search(text)) is not None:
                    node.stamps[name] = now - node.t0
                    if m.groups():
                        node.values[name] = float(m.group(1))
            if "joined" not in node.stamps:
                if node.vm.proc.poll() is not None:
                    raise SystemExit(f"node {node.index} stopped before joining:\n{text[-3000:]}")
                pending += 1
        if not pending:
            return dhcp_lines
        if now > deadline:
            raise SystemExit(f"{pending} node(s) not joined within {timeout:.0f} s")
        time.sleep(0.05)


def finish(node: Node) -> None:
    """After joined: the init's own numbers, then wait for its power-off."""
    try:
        node.vm.wait_exit(60)
    finally:
        node.vm.kill()
    text = node.vm.output()
    if (m := re.search(rf"{UPTIME} ([0-9.]+)", text)) is not None:
        node.values["uptime"] = float(m.group(1))
        # The guest clock runs with the host's under TCG: kernel start on the host clock.
        node.stamps["kernel_start"] = node.stamps["joined"] - node.values["uptime"]
        if (k := re.search(rf"{UPTIME}-KMSG \[\s*([0-9.]+)\]", text)) is not None:
            node.stamps["run_init"] = node.stamps["kernel_start"] + float(k.group(1))
    node.stamps["power_on"] = 0.0


def boot_round(net: PxeNet, n: int, disk: Path, logs: Path, tag: str,
               timeout: float, firmware: str = "bios"
               ) -> tuple[list[Node], list[tuple[float, str]], float]:
    nodes: list[Node] = []
    load = os.getloadavg()[0]
    try:
        for i in range(1, n + 1):
            tap = net.netns.add_tap(net.bridge)
            # graphics=off puts SeaBIOS (and iPXE through it) on the serial console;
            # OVMF writes there anyway, and its machine type is q35 (Uefi.argv).
            uefi = None if firmware == "bios" else \
                Uefi.fresh(logs / f"{tag}-node{i}-vars.fd", secure_boot=firmware == "uefi-sb")
            config = VmConfig(nics=[Nic(mac(i), netdev=f"tap,ifname={tap},script=no,"
                                    "downscript=no")], netboot=True, netns=net.ns,
                              disks=[Disk(disk, extra=",snapshot=on")], uefi=uefi,
                              extra=["-machine", "graphics=off"] if uefi is None else [])
            vm = Vm(config, logs / f"{tag}-node{i}.log")
            nodes.append(Node(i, vm, tap, vm.started, firmware))
        dhcp = watch(nodes, net.workdir / "dhcpd.log", timeout)
        for node in nodes:
            finish(node)
            acks = [t - node.t0 for t, line in dhcp
                    if f"DHCPACK on 10.77.0.{100 + node.index} to {mac(node.index)}" in line]
            if acks:
                node.stamps["dhcp_ack"] = acks[0]
    finally:
        for node in nodes:
            node.vm.kill()
            run(["ip", "-n", net.ns, "link", "del", node.tap], check=False, capture=True)
    return nodes, dhcp, load


# --- the report --------------------------------------------------------------------------


@dataclass
class Round:
    n: int
    nodes: list[Node]
    dhcp: list[tuple[float, str]]
    tftp: list[tuple[float, str]]
    load: float
    firmware: str = "bios"


RRQ = re.compile(r"RRQ from (\S+) filename (\S+)")
# Stamped from tftpd's log: each node's first request for these files.
REQUESTS = {"rrq_grub": "grubx64.efi", "rrq_initrd": "initrd.img"}


def stamp_requests(r: Round) -> None:
    for node in r.nodes:
        ip = f"10.77.0.{100 + node.index}"
        for stamp, name in REQUESTS.items():
            first = next((t for t, line in r.tftp if (x := RRQ.search(line)) is not None
                          and x.group(1) == ip and x.group(2).rsplit("/", 1)[-1] == name),
                         None)
            if first is not None:
                node.stamps[stamp] = first - node.t0


def med(values: list[float]) -> float:
    return statistics.median(values)


def round_joined(r: Round) -> list[float]:
    return [j for node in r.nodes if (j := node.joined()) is not None]


def joined_times(rounds: list[Round], n: int, firmware: str = "bios") -> list[float]:
    return [j for r in rounds if (r.n, r.firmware) == (n, firmware) for node in r.nodes
            if (j := node.joined()) is not None]


def phase_table(rounds: list[Round], phases: tuple[tuple[str, str, str], ...],
                columns: list[tuple[str, int]]) -> list[str]:
    """Median seconds of each phase, a column for each (firmware, N)."""
    bios_only = {f for f, _ in columns} == {"bios"}
    out = ["| phase | " + " | ".join(f"N={n}" if bios_only else f"{f}, N={n}"
                                     for f, n in columns) + " |",
           "|---|" + "---|" * len(columns)]
    for name, a, b in phases:
        cells = []
        for firmware, n in columns:
            spans = [node.stamps[b] - node.stamps[a] for r in rounds
                     if (r.n, r.firmware) == (n, firmware)
                     for node in r.nodes if a in node.stamps and b in node.stamps]
            cells.append(f"{med(spans):.2f}" if spans else "-")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def server_view(r: Round) -> list[str]:
    """dhcpd and tftpd as the server saw round r (seconds after power-on)."""
    t0 = min(node.t0 for node in r.nodes)
    out = []
    for node in r.nodes:
        m, ip = mac(node.index), f"10.77.0.{100 + node.index}"
        disc = [t - t0 for t, line in r.dhcp if f"DHCPDISCOVER from {m}" in line]
        # The client's REQUEST after dhcpd's OFFER: how long the firmware collected offers.
        reqs = [t - t0 for t, line in r.dhcp if f"DHCPREQUEST for {ip}" in line and m in line]
        acks = [t - t0 for t, line in r.dhcp if f"DHCPACK on {ip} to {m}" in line]
        rrqs = [(t - t0, f) for t, line in r.tftp
                if (x := RRQ.search(line)) and x.group(1) == ip
                for f in [x.group(2).rsplit("/", 1)[-1]]]
        parts = [f"DISCOVER {disc[0]:.1f}" if disc else "no DISCOVER seen",
                 f"REQUEST {reqs[0]:.1f}" if reqs else "no REQUEST seen",
                 f"ACKs {', '.join(f'{a:.1f}' for a in acks)}" if acks else "no ACK seen"]
        parts += [f"RRQ {f} {t:.1f}" for t, f in rrqs]
        out.append(f"- node {node.index}: " + "; ".join(parts))
    return out


def report(all_rounds: list[Round], ns: list[int], uefi: list[str], uefi_ns: list[int],
           k: Kernel, initrd: Path, args: argparse.Namespace) -> str:
    rounds = [r for r in all_rounds if r.firmware == "bios"]
    loads = [r.load for r in all_rounds]
    base = joined_times(rounds, ns[0])
    base_med = med(base)
    out = [f"Kernel {k.kver} ({k.vmlinuz.stat().st_size / 1e6:.1f} MB), ramdisk "
           f"{initrd.stat().st_size / 1e6:.1f} MB (mkinitrd.ssi, default modules); "
           f"QEMU TCG, 1 vCPU and 1 GiB per node, iPXE ROM -> ISC dhcpd -> tftpd-hpa, "
           f"one server, {os.cpu_count()} host cores; IPv6 router advertisements on the "
           f"boot network: {'yes' if args.router_adverts else 'no'}; ipxe.no-pxedhcp "
           f"from dhcpd: {'yes' if args.no_proxy_wait else 'no'}.",
           f"Machine load (1-min average at each round's start): {min(loads):.1f}-"
           f"{max(loads):.1f}, median {med(loads):.1f}. {args.repeats} round(s) per N, "
           f"interleaved; medians and max over every node of every round.", "",
           "BIOS:", "",
           f"| N | nodes | joined: median | max | min | median / N={ns[0]} | max / N={ns[0]} "
           f"| per round (median, max) |", "|---|---|---|---|---|---|---|---|"]
    for n in ns:
        times = joined_times(rounds, n)
        per = "; ".join(f"{med(js):.1f}, {max(js):.1f}" for r in rounds if r.n == n
                        if (js := round_joined(r)))
        out.append(f"| {n} | {len(times)} | {med(times):.1f} s | {max(times):.1f} s | "
                   f"{min(times):.1f} s | {med(times) / base_med:.2f} | "
                   f"{max(times) / base_med:.2f} | {per} |")
    out += ["", "Where one boot's time goes (median seconds per node, host clock; kernel "
            "start = joined - the guest's uptime at joined):", "",
            *phase_table(rounds, BIOS_PHASES, [("bios", n) for n in ns])]
    kernel_mb = k.vmlinuz.stat().st_size / 1e6
    ramdisk_mb = initrd.stat().st_size / 1e6
    for n in ns:
        spans = [node.stamps["initrd_ok"] - node.stamps["kernel_ok"] for r in rounds
                 if r.n == n for node in r.nodes if "initrd_ok" in node.stamps
                 and "kernel_ok" in node.stamps]
        kspans = [node.stamps["kernel_ok"] - node.stamps["dhcp_ok"] for r in rounds
                  if r.n == n for node in r.nodes if "kernel_ok" in node.stamps
                  and "dhcp_ok" in node.stamps]
        if spans and kspans:
            out.append(f"- TFTP at N={n}: ramdisk {ramdisk_mb / med(spans):.1f} MB/s, kernel "
                       f"(with the script) {kernel_mb / med(kspans):.1f} MB/s per node, "
                       f"{n * ramdisk_mb / med(spans):.1f} MB/s for all {n}")
    out += ["", f"The server's view of the first N={ns[-1]} round (s after power-on):",
            *server_view(next(r for r in rounds if r.n == ns[-1]))]
    if uefi:
        # initrd is ROOT/boot/initrd-ssi.img; lilo.ssi published GRUB in ROOT/tftpboot.
        sizes = {"grub": (initrd.parent.parent / "tftpboot/grubx64.efi").stat().st_size / 1e6,
                 "kernel": kernel_mb}
        out += ["", *uefi_report(all_rounds, ns, uefi, uefi_ns, sizes, base_med)]
    return "\n".join(out)


def uefi_report(rounds: list[Round], ns: list[int], uefi: list[str], uefi_ns: list[int],
                sizes: dict[str, float], base_med: float) -> list[str]:
    """Power-on to joined by firmware, the same N side by side, and the UEFI phases."""
    out = [f"UEFI beside BIOS, same run (OVMF, no NIC option ROM; median / BIOS N={ns[0]}):",
           "", "| firmware | N | nodes | joined: median | max | min | median / BIOS |",
           "|---|---|---|---|---|---|---|"]
    for n in uefi_ns:
        for firmware in ["bios", *uefi] if n in ns else uefi:
            times = joined_times(rounds, n, firmware)
            out.append(f"| {FIRMWARES[firmware]} | {n} | {len(times)} | {med(times):.1f} s | "
                       f"{max(times):.1f} s | {min(times):.1f} s | "
                       f"{med(times) / base_med:.2f} |")
    columns = [(f, n) for f in uefi for n in uefi_ns]
    out += ["", "Where a UEFI boot's time goes (median seconds per node; the requests for "
            "GRUB and the ramdisk from tftpd's log):", "",
            *phase_table(rounds, UEFI_PHASES, columns)]
    # Each transfer with what follows it before the next marker (a check, a start).
    transfers = (("shim", "grub", "rrq_grub", "grub"), ("GRUB", "kernel", "grub_cfg",
                                                        "rrq_initrd"))
    for firmware, n in columns:
        rates = []
        for loader, what, a, b in transfers:
            spans = [node.stamps[b] - node.stamps[a] for r in rounds
                     if (r.n, r.firmware) == (n, firmware) for node in r.nodes
                     if a in node.stamps and b in node.stamps]
            if spans:
                rates.append(f"{loader} fetched {what} ({sizes[what]:.1f} MB) at "
                             f"{sizes[what] / med(spans):.2f} MB/s")
        out.append(f"- TFTP, {firmware} N={n}: " + "; ".join(rates)
                   + " (each span ends at the next marker: with the signature check)")
    for firmware in uefi:
        first = next(r for r in rounds if r.firmware == firmware)
        out += ["", f"The server's view of the first {firmware} N={first.n} round:",
                *server_view(first)]
    return out


def admin_tree(base: Path, k: Kernel, no_proxy_wait: bool = False) -> tuple[Path, Path]:
    root = base / "admin"
    (root / "etc").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "etc/ssitab").write_text(table_for_bench())
    proto = (REPO / "examples/dhcpd.proto").read_text()
    if not no_proxy_wait:  # the example proto has it: take it out to measure without
        proto = "".join(line for line in proto.splitlines(keepends=True)
                        if "ipxe" not in line.lower())
    (root / "etc/dhcpd.proto").write_text(proto)
    shutil.copyfile(k.vmlinuz, root / "boot/vmlinuz")
    # mkinitrd.ssi builds ROOT/boot/initrd-ssi.img and runs mkdhcpd.ssi on the table.
    if mkinitrd(["--root", str(root), "--moddir", str(k.moddir)]) != 0:
        raise SystemExit("mkinitrd.ssi failed")
    if lilo(["--root", str(root), "--cmdline", CMDLINE, "--no-push"]) != 0:
        raise SystemExit("lilo.ssi failed")
    return root, root / "boot/initrd-ssi.img"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="1,2,4,8", help="the N values (default 1,2,4,8)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per N (default 3)")
    parser.add_argument("--timeout", type=float, default=900, help="per round, seconds")
    parser.add_argument("--keep", type=Path, help="copy consoles and server logs here")
    parser.add_argument("--router-adverts", action="store_true",
                        help="send IPv6 router advertisements on the boot network (iPXE "
                        "then stops soliciting at once)")
    parser.add_argument("--no-proxy-wait", action="store_true",
                        help="dhcpd tells iPXE not to wait for ProxyDHCP offers "
                        "(option ipxe.no-pxedhcp)")
    parser.add_argument("--uefi", default="uefi,uefi-sb",
                        help="UEFI rounds besides the BIOS ones: uefi (Secure Boot off), "
                        "uefi-sb (on); '' for none (default uefi,uefi-sb)")
    parser.add_argument("--uefi-nodes", default="1",
                        help="the N values of the UEFI rounds (default 1)")
    args = parser.parse_args()
    ns = sorted({int(x) for x in args.nodes.split(",")})
    uefi = [f for f in FIRMWARES if f != "bios" and f in args.uefi.split(",")]
    if set(filter(None, args.uefi.split(","))) - set(uefi):
        parser.error("--uefi: the kinds are " + ", ".join(f for f in FIRMWARES if f != "bios"))
    uefi_ns = sorted({int(x) for x in args.uefi_nodes.split(",")})
    if os.geteuid() != 0:
        print("bench_pxe: needs root (namespace, taps)", file=sys.stderr)
        return 1
    if max(ns + uefi_ns) > MAX_NODES or min(ns + uefi_ns) < 1:
        parser.error(f"N must be 1..{MAX_NODES}")
    # A plain kill must still run the cleanup (VMs, namespace, servers).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    k = kernel()
    with tempfile.TemporaryDirectory(prefix="bench-pxe.") as tmp:
        base = Path(tmp)
        root, initrd = admin_tree(base, k, args.no_proxy_wait)
        tree = images.shared_root_tree(base / "roottree", init=BENCH_INIT)
        disk = images.ext4_image(base / "root.img", tree, size_mb=64, label=cluster.ROOT_LABEL)
        logs = base / "logs"
        logs.mkdir()
        work = base / "net"
        work.mkdir()
        rounds: list[Round] = []
        with boot_network(work, root / "etc/dhcpd.conf", root / "tftpboot",
                          args.router_adverts) as (net, syslog):
            for rep in range(args.repeats):
                for firmware, n in [("bios", n) for n in ns] + \
                        [(f, n) for f in uefi for n in uefi_ns]:
                    seen = len(syslog.lines)
                    nodes, dhcp, load = boot_round(net, n, disk, logs,
                                                   f"{firmware}-n{n}-r{rep}", args.timeout,
                                                   firmware)
                    rounds.append(Round(n, nodes, dhcp, syslog.lines[seen:], load, firmware))
                    stamp_requests(rounds[-1])
                    js = [j for node in nodes if (j := node.joined()) is not None]
                    print(f"round {rep + 1}/{args.repeats} {firmware} N={n}: joined median "
                          f"{med(js):.1f} s, max {max(js):.1f} s (load {load:.1f})",
                          file=sys.stderr)
        text = report(rounds, ns, uefi, uefi_ns, k, initrd, args)
        print(text)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copytree(logs, args.keep / "logs", dirs_exist_ok=True)
            for name in ("dhcpd.log",):
                shutil.copy2(work / name, args.keep / name)
            (args.keep / "tftpd-syslog.log").write_text(
                "".join(f"{t:.3f} {line}\n" for r in rounds for t, line in r.tftp))
            (args.keep / "report.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
