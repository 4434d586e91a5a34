"""Throwaway networks for tests: namespaces, veth pairs, bridges, taps, background servers.

Everything made here is named `ssit<pid><kind><n>` (pid of the test process,
a letter for the kind, a counter), so it fits the 15 characters of an
interface name and says which process owns it. Leaving a Netns context
kills the processes started in it and deletes it, which removes every
interface inside as well; a veth pair dies with either of its namespaces.
If a test process is killed outright, the next Netns() removes what it left:
every namespace or interface whose name starts with `ssit` and whose first
number is the pid of a process that no longer exists.

    with Netns() as server, Netns() as client:
        server_if, client_if = veth(server, client, addr_a="10.77.0.1/24",
                                    mac_b="52:54:00:12:34:01")
        with server.popen(["dhcpd", "-f", "-d", ...], log=tmp / "dhcpd.log") as dhcpd:
            dhcpd.wait_for("Server starting service.")
            out = client.run(["busybox", "udhcpc", ...]).stdout

For QEMU nodes: `br = ns.add_bridge("10.77.0.1/24")`, then `ns.add_tap(br)` per NIC
and run QEMU through `ns.popen([...])` with `-netdev tap,ifname=TAP,script=no,downscript=no`.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from mkinitrd_ssi.run import run

PREFIX = "ssit"
IFNAMSIZ = 15  # usable characters of a Linux interface name

_counter = itertools.count()
_stale_checked = False
_PR_SET_PDEATHSIG = 1
# Loaded in the parent: the child between fork and exec should only call it.
_LIBC = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


class HarnessError(RuntimeError):
    """A namespace or process of the harness did not do what a test needs."""


def available() -> str | None:
    """Why namespaces cannot be used here (a reason to skip), or None when they can."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if run(["ip", "netns", "list"], check=False, capture=True).returncode != 0:
        return "`ip netns` does not work here"
    return None


def unique_name(kind: str) -> str:
    """A fresh name for a namespace or interface of this process; kind is one letter."""
    if not (len(kind) == 1 and kind.isalpha() and kind.islower()):
        raise ValueError(f"kind must be one lower-case letter, not {kind!r}")
    name = f"{PREFIX}{os.getpid()}{kind}{next(_counter)}"
    if len(name) > IFNAMSIZ:
        raise HarnessError(f"interface name {name} is longer than {IFNAMSIZ} characters")
    return name


def wait_until(predicate: Callable[[], T | None], timeout: float = 10.0,
               what: str = "condition", interval: float = 0.05) -> T:
    """Poll predicate until it returns something truthy; return that, or raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _owner_alive(name: str) -> bool:
    """Whether the process whose pid is the first number in name still exists."""
    match = re.search(r"\d+", name[len(PREFIX):])
    if match is None:
        return True  # not named by a pid: not ours to judge
    try:
        os.kill(int(match.group()), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _netns_pids(name: str) -> list[int]:
    out = run(["ip", "netns", "pids", name], check=False, capture=True).stdout.decode()
    return [int(word) for word in out.split()]


def _delete_netns(name: str) -> None:
    # A namespace lives on, unnamed, while a process holds it: kill first.
    for _attempt in range(50):
        pids = _netns_pids(name)
        if not pids:
            break
        _kill_pids(pids)
        time.sleep(0.02)
    run(["ip", "netns", "delete", name], check=False, capture=True)


def remove_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces and root-namespace links left by dead test processes."""
    removed: list[str] = []
    out = run(["ip", "netns", "list"], check=False, capture=True).stdout.decode()
    for line in out.splitlines():
        name = line.split(" ", 1)[0]
        if name.startswith(prefix) and not _owner_alive(name):
            _delete_netns(name)
            removed.append(name)
    out = run(["ip", "-o", "link", "show"], check=False, capture=True).stdout.decode()
    for line in out.splitlines():
        # "7: ssit123v0@if8: <...>": the name, without the peer suffix
        name = line.split(":", 2)[1].strip().split("@", 1)[0] if line.count(":") >= 2 else ""
        if name.startswith(prefix) and not _owner_alive(name):
            run(["ip", "link", "delete", name], check=False, capture=True)
            removed.append(name)
    return removed


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test process dies
    # without cleaning up, the kernel kills the server too. (The "parent" is
    # the thread that started it: start servers from the main thread.)
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Proc:
    """A background process with its output in a log file; stopping kills its whole group."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.argv = list(argv)
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait_for(self, text: str | re.Pattern[str], timeout: float = 15.0) -> str:
        """Poll the log until it contains text (or matches a pattern); return the log.

        Fails at once, with the log's tail, if the process exits first.
        """
        deadline = time.monotonic() + timeout
        while True:
            out = self.output()
            found = text in out if isinstance(text, str) else text.search(out) is not None
            if found:
                return out
            if not self.running():
                raise HarnessError(f"{self.argv[0]} exited with {self.popen.returncode} "
                                   f"before {text!r} appeared:\n{out[-3000:]}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.argv[0]}: {text!r} not seen within {timeout} s:\n"
                                   f"{out[-3000:]}")
            time.sleep(0.05)

    def stop(self, grace: float = 3.0) -> int:
        """SIGTERM the process group, SIGKILL it after grace seconds; return the exit status."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        # The group may hold children even after the leader is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.wait()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class Netns:
    """A named network namespace, created on entering the context, deleted on leaving it."""

    def __init__(self, name: str | None = None, workdir: Path | None = None) -> None:
        self.name = name or unique_name("n")
        self.workdir = workdir  # default place for process logs
        self.procs: list[Proc] = []
        self.created = False

    def __enter__(self) -> Netns:
        global _stale_checked
        if not _stale_checked:
            remove_stale()
            _stale_checked = True
        run(["ip", "netns", "add", self.name], capture=True)
        self.created = True
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(grace=1.0)
        self.procs.clear()
        if self.created:
            _delete_netns(self.name)
            self.created = False

    def argv(self, argv: Sequence[str]) -> list[str]:
        """argv prefixed to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, capture: bool = True,
            timeout: float | None = 60.0,
            input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return run(self.argv(argv), check=check, capture=capture, timeout=timeout, input=input)

    def ip(self, *args: str) -> str:
        """`ip -n NS ARGS...`; its output."""
        return run(["ip", "-n", self.name, *args], capture=True).stdout.decode()

    def popen(self, argv: Sequence[str], *, log: Path | None = None,
              env: dict[str, str] | None = None, cwd: str | None = None) -> Proc:
        """Start argv in the background inside the namespace; killed by close() at the latest."""
        if log is None:
            if self.workdir is None:
                raise HarnessError("popen needs log= or a Netns workdir")
            log = self.workdir / f"{Path(argv[0]).name}-{next(_counter)}.log"
        proc = Proc(self.argv(argv), log, env=env, cwd=cwd)
        self.procs.append(proc)
        return proc

    def add_address(self, ifname: str, cidr: str) -> None:
        self.ip("addr", "add", cidr, "dev", ifname)

    def link_up(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "up")

    def add_bridge(self, address: str | None = None, *, name: str | None = None,
                   carrier: bool = True) -> str:
        """A bridge, up, optionally with an address (CIDR).

        carrier=True plugs in an idle veth port so the bridge has carrier
        before any tap is opened: Kea, for one, ignores interfaces without it.
        """
        bridge = name or unique_name("b")
        self.ip("link", "add", bridge, "type", "bridge", "forward_delay", "0")
        if address:
            self.add_address(bridge, address)
        self.link_up(bridge)
        if carrier:
            port, peer = unique_name("p"), unique_name("p")
            self.ip("link", "add", port, "type", "veth", "peer", "name", peer)
            self.ip("link", "set", port, "master", bridge, "up")
            self.link_up(peer)
        return bridge

    def add_tap(self, bridge: str | None = None, *, name: str | None = None) -> str:
        """A tap device (for QEMU's -netdev tap,ifname=...), up, on bridge if given."""
        tap = name or unique_name("t")
        self.ip("tuntap", "add", "dev", tap, "mode", "tap")
        if bridge:
            self.ip("link", "set", tap, "master", bridge)
        self.link_up(tap)
        return tap

    def add_port(self, bridge: str, other: Netns, *, address: str | None = None,
                 mac: str | None = None) -> str:
        """A veth from this namespace's bridge into other; returns the name in other."""
        mine, theirs = veth(self, other, addr_b=address, mac_b=mac)
        self.ip("link", "set", mine, "master", bridge)
        return theirs

    def mac(self, ifname: str) -> str:
        out = self.ip("-o", "link", "show", ifname)
        match = re.search(r"link/ether ([0-9a-f:]{17})", out)
        if match is None:
            raise HarnessError(f"{ifname} in {self.name} has no Ethernet address: {out}")
        return match.group(1)


def veth(a: Netns, b: Netns, *, addr_a: str | None = None, addr_b: str | None = None,
         mac_a: str | None = None, mac_b: str | None = None) -> tuple[str, str]:
    """A veth pair with one end in a and the other in b, both up; returns (name in a, name in b).

    Both ends are created directly in their namespaces, so nothing ever sits
    in the root namespace; deleting either namespace removes the pair.
    """
    name_a, name_b = unique_name("v"), unique_name("v")
    argv = ["ip", "link", "add", name_a, "netns", a.name]
    if mac_a:
        argv += ["address", mac_a]
    argv += ["type", "veth", "peer", "name", name_b, "netns", b.name]
    if mac_b:
        argv += ["address", mac_b]
    run(argv, capture=True)
    for ns, name, addr in ((a, name_a, addr_a), (b, name_b, addr_b)):
        if addr:
            ns.add_address(name, addr)
        ns.link_up(name)
    return name_a, name_b
