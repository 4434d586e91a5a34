"""A private boot network: a namespace with a bridge, real ISC dhcpd and tftpd-hpa on it,
and QEMU nodes on tap devices (QEMU's iPXE ROM does the PXE part).

Everything lives in one network namespace named ssit-pxe<pid>: deleting it
removes bridge and taps, and the servers are killed by process group, so
nothing is left behind even when a test fails. Stale namespaces of crashed
runs are removed on the next start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mkinitrd_ssi.run import run

SERVER_IP = "10.77.0.1"
PREFIX = 24
BRIDGE = "ssibr0"
NS_PREFIX = "ssit-pxe"


@dataclass
class PxeNet:
    ns: str
    workdir: Path
    tftpboot: Path
    dhcpd_conf: Path
    dhcpd_log: Path
    tftpd_log: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    taps: int = 0

    def add_tap(self) -> str:
        """A tap device on the bridge, for one QEMU NIC (-netdev tap,ifname=...)."""
        self.taps += 1
        name = f"ssitap{self.taps}"
        run(["ip", "-n", self.ns, "tuntap", "add", "dev", name, "mode", "tap"])
        run(["ip", "-n", self.ns, "link", "set", name, "master", BRIDGE, "up"])
        return name

    def netdev(self) -> str:
        return f"tap,ifname={self.add_tap()},script=no,downscript=no"

    def dhcpd_output(self) -> str:
        return self.dhcpd_log.read_text(errors="replace")

    def restart_dhcpd(self) -> None:
        """Reload after mkdhcpd.ssi rewrote the config (dhcpd has no reload)."""
        self._stop(self.procs.pop(0))
        self.procs.insert(0, self._start_dhcpd())

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(["ip", "netns", "exec", self.ns, *argv],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)

    def _start_dhcpd(self) -> subprocess.Popen[bytes]:
        leases = self.workdir / "dhcpd.leases"
        leases.touch()
        proc = self._spawn(["dhcpd", "-f", "-d", "-4", "-cf", str(self.dhcpd_conf),
                            "-lf", str(leases), "-pf", str(self.workdir / "dhcpd.pid"),
                            BRIDGE], self.dhcpd_log)
        _wait_for_text(self.dhcpd_log, "Sending on", proc)
        return proc

    def _start_tftpd(self) -> subprocess.Popen[bytes]:
        return self._spawn(["in.tftpd", "--foreground", "--verbose", "--user", "root",
                            "--address", f"{SERVER_IP}:69", "--secure", str(self.tftpboot)],
                           self.tftpd_log)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes],
                   timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start ({text!r} not in {path}):\n"
                               + path.read_text(errors="replace")[-2000:])
        time.sleep(0.05)


def remove_stale_namespaces() -> None:
    out = run(["ip", "netns", "list"], capture=True).stdout.decode()
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(NS_PREFIX) and name != f"{NS_PREFIX}{os.getpid()}":
            run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def pxe_network(workdir: Path, dhcpd_conf: Path, tftpboot: Path) -> Iterator[PxeNet]:
    remove_stale_namespaces()
    ns = f"{NS_PREFIX}{os.getpid()}"
    run(["ip", "netns", "add", ns])
    net = PxeNet(ns, workdir, tftpboot, dhcpd_conf, workdir / "dhcpd.log",
                 workdir / "tftpd.log")
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "-n", ns, "addr", "add", f"{SERVER_IP}/{PREFIX}", "dev", BRIDGE])
        run(["ip", "-n", ns, "link", "set", BRIDGE, "up"])
        tftpboot.chmod(0o755)
        net.procs.append(net._start_dhcpd())
        net.procs.append(net._start_tftpd())
        yield net
    finally:
        for proc in net.procs:
            net._stop(proc)
        run(["ip", "netns", "del", ns], check=False)
