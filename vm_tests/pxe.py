"""A private boot network: a namespace with a bridge, real ISC dhcpd and tftpd-hpa on it,
and QEMU nodes on tap devices (QEMU's iPXE ROM does the PXE part).

iPXE solicits an IPv6 router for ~13 s after DHCP unless one advertises
itself, so the network sends router advertisements (no prefix, not a default
router), as most real networks do. Built on vm_tests.netns: leaving the
context kills the servers and deletes the namespace with its bridge and taps,
even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mkinitrd_ssi.lilo import main as lilo
from mkinitrd_ssi.mkdhcpd import main as mkdhcpd
from vm_tests import cluster
from vm_tests.netns import Netns, Proc
from vm_tests.qemu import Disk, Nic, Uefi, Vm, VmConfig

REPO = Path(__file__).resolve().parent.parent

SERVER_IP = "10.77.0.1"
PREFIX = 24


@dataclass
class PxeNet:
    netns: Netns
    bridge: str
    workdir: Path
    tftpboot: Path
    dhcpd_conf: Path
    dhcpd: Proc | None = None

    @property
    def ns(self) -> str:
        """The namespace's name, for VmConfig.netns."""
        return self.netns.name

    def netdev(self) -> str:
        """A fresh tap on the bridge, as a QEMU -netdev spec."""
        return f"tap,ifname={self.netns.add_tap(self.bridge)},script=no,downscript=no"

    def node(self, mac: str, log: Path, disks: list[Disk] | None = None,
             uefi: Uefi | None = None) -> Vm:
        """A machine that PXE-boots on this network, with these disks: BIOS with QEMU's
        iPXE ROM, or with uefi, OVMF's own PXE."""
        config = VmConfig(nics=[Nic(mac, netdev=self.netdev())], netboot=True, netns=self.ns,
                          disks=disks or [], uefi=uefi)
        return Vm(config, log)

    def dhcpd_output(self) -> str:
        return self.dhcpd.output() if self.dhcpd is not None else ""

    def start_dhcpd(self) -> None:
        leases = self.workdir / "dhcpd.leases"
        leases.touch()
        self.dhcpd = self.netns.popen(
            ["dhcpd", "-f", "-d", "-4", "-cf", str(self.dhcpd_conf), "-lf", str(leases),
             "-pf", str(self.workdir / "dhcpd.pid"), self.bridge],
            log=self.workdir / "dhcpd.log")
        self.dhcpd.wait_for("Sending on")

    def restart_dhcpd(self) -> None:
        """Reload after mkdhcpd.ssi rewrote the config (dhcpd has no reload)."""
        if self.dhcpd is not None:
            self.dhcpd.stop()
        self.start_dhcpd()


def admin_tree(root: Path, kernel: Path, ramdisk: Path, cmdline: str,
               table: str = cluster.SSITAB, lilo_args: Sequence[str] = ()) -> Path:
    """The admin's tree: ssitab (table), dhcpd.proto, default pair; dhcpd.conf and tftpboot
    made by the real commands (mkdhcpd.ssi, lilo.ssi --cmdline CMDLINE --no-push LILO_ARGS)."""
    (root / "etc").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "etc/ssitab").write_text(table)
    shutil.copyfile(REPO / "examples/dhcpd.proto", root / "etc/dhcpd.proto")
    shutil.copyfile(kernel, root / "boot/vmlinuz")
    shutil.copyfile(ramdisk, root / "boot/initrd-ssi.img")
    if mkdhcpd(["--root", str(root)]) != 0:
        raise RuntimeError(f"mkdhcpd.ssi failed on {root}")
    if lilo(["--root", str(root), "--cmdline", cmdline, "--no-push", *lilo_args]) != 0:
        raise RuntimeError(f"lilo.ssi failed on {root}")
    return root


# Unsolicited IPv6 router advertisements on the boot network, twice a second: no
# prefix, no managed/other flags, lifetime 0 (not a default router). iPXE's IPv6
# configurator ends on the first one instead of soliciting until its timer gives up.
RADVERT = r"""
import socket, struct, sys, time
ifname = sys.argv[1]
index = socket.if_nametoindex(ifname)
with open(f"/sys/class/net/{ifname}/address") as f:
    mac = bytes.fromhex(f.read().strip().replace(":", ""))
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0) + struct.pack("!BB6s", 1, 1, mac)
while True:
    try:
        s.sendto(ra, ("ff02::1", 0, 0, index))
    except OSError:
        pass  # the bridge's link-local address is still tentative
    time.sleep(0.5)
"""


class Syslog:
    """A syslog socket for tftpd: every datagram stamped with the host's monotonic clock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o666)
        self.sock.settimeout(0.2)
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.lines.append((time.monotonic(), data.decode(errors="replace")))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Syslog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


TFTPD_SYSLOG = r"""
set -eu
# A private /dev: tftpd-hpa logs only to syslog, and /dev/log here is the caller's socket.
mount -t tmpfs -o size=64k,mode=755 tmpfs /dev
mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/urandom c 1 9
ln -s "$SYSLOG" /dev/log
exec ip netns exec "$NS" in.tftpd --foreground --verbose --user root \
    --address "$ADDRESS" --secure "$TFTPBOOT"
"""


def start_tftpd(ns: Netns, ip: str, tftpboot: Path, log: Path,
                syslog: Syslog | None = None) -> Proc:
    """tftpd-hpa on ip:69 in ns, serving tftpboot. It logs only to syslog: with a Syslog,
    it runs in a private mount namespace whose /dev/log is that socket (its RRQ lines
    land in syslog.lines); without, its log is lost."""
    argv = ["in.tftpd", "--foreground", "--verbose", "--user", "root", "--address",
            f"{ip}:69", "--secure", str(tftpboot)]
    if syslog is None:
        return ns.popen(argv, log=log)
    env = {**os.environ, "SYSLOG": str(syslog.path), "NS": ns.name,
           "ADDRESS": f"{ip}:69", "TFTPBOOT": str(tftpboot)}
    proc = Proc(["unshare", "--mount", "--propagation", "private", "sh", "-c", TFTPD_SYSLOG],
                log, env=env)
    ns.procs.append(proc)  # stopped with the namespace
    return proc


@contextlib.contextmanager
def pxe_network(workdir: Path, dhcpd_conf: Path, tftpboot: Path,
                router_adverts: bool = True, syslog: Syslog | None = None) -> Iterator[PxeNet]:
    """The boot network; with syslog, tftpd's RRQ lines are captured there."""
    with Netns(workdir=workdir) as ns:
        bridge = ns.add_bridge(f"{SERVER_IP}/{PREFIX}")
        net = PxeNet(ns, bridge, workdir, tftpboot, dhcpd_conf)
        tftpboot.chmod(0o755)
        net.start_dhcpd()
        start_tftpd(ns, SERVER_IP, tftpboot, workdir / "tftpd.log", syslog)
        if router_adverts:
            ns.popen([sys.executable, "-c", RADVERT, bridge], log=workdir / "radvert.log")
        yield net


@contextlib.contextmanager
def serving(admin_root: Path) -> Iterator[PxeNet]:
    """pxe_network for a tree admin_tree made: its dhcpd.conf and tftpboot; logs in ROOT/net."""
    work = admin_root / "net"
    work.mkdir()
    with pxe_network(work, admin_root / "etc/dhcpd.conf", admin_root / "tftpboot") as net:
        yield net
