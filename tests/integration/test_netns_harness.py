"""The namespace harness itself: what it builds works, and what it builds goes away."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkinitrd_ssi.run import run
from vm_tests.netns import (
    HarnessError,
    Netns,
    available,
    remove_stale,
    unique_name,
    veth,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def need_namespaces() -> Iterator[None]:
    reason = available()
    if reason:
        pytest.skip(reason)
    yield


def namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], capture=True).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def links() -> list[str]:
    out = run(["ip", "-o", "link", "show"], capture=True).stdout.decode()
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_names_fit_an_interface_and_name_their_owner() -> None:
    name = unique_name("v")
    assert name.startswith(f"ssit{os.getpid()}v") and len(name) <= 15
    with pytest.raises(ValueError):
        unique_name("veth")


def test_namespace_and_processes_go_away_even_when_the_test_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), Netns(workdir=tmp_path) as ns:
        name = ns.name
        proc = ns.popen(["sleep", "600"])
        assert name in namespaces()
        raise RuntimeError("boom")
    assert name not in namespaces()
    assert proc.popen.poll() is not None


def test_veth_between_two_namespaces(tmp_path: Path) -> None:
    with Netns(workdir=tmp_path) as a, Netns(workdir=tmp_path) as b:
        if_a, if_b = veth(a, b, addr_a="10.99.0.1/24", addr_b="10.99.0.2/24",
                          mac_b="52:54:00:aa:bb:cc")
        assert b.mac(if_b) == "52:54:00:aa:bb:cc"
        assert if_a not in links() and if_b not in links()  # nothing in the root namespace
        out = a.run(["busybox", "ping", "-c", "1", "-W", "5", "10.99.0.2"], check=False)
        assert out.returncode == 0, out


def test_bridge_with_taps_for_qemu(tmp_path: Path) -> None:
    with Netns(workdir=tmp_path) as ns:
        bridge = ns.add_bridge("10.99.1.1/24")
        taps = [ns.add_tap(bridge), ns.add_tap(bridge)]
        ports = ns.ip("-o", "link", "show", "master", bridge)
        assert all(f": {tap}:" in ports for tap in taps)
        assert "tun type tap" in ns.ip("-d", "link", "show", taps[0])
        # The idle port gives the bridge carrier before any tap is opened.
        assert "LOWER_UP" in ns.ip("link", "show", bridge)
        assert "10.99.1.1/24" in ns.ip("addr", "show", bridge)


def test_wait_for_fails_at_once_when_the_process_exits(tmp_path: Path) -> None:
    with Netns(workdir=tmp_path) as ns:
        proc = ns.popen(["sh", "-c", "echo starting; exit 3"])
        start = time.monotonic()
        with pytest.raises(HarnessError, match="exited with 3"):
            proc.wait_for("never printed", timeout=30)
        assert time.monotonic() - start < 10
        assert "starting" in proc.output()
        started = ns.popen(["sh", "-c", "echo ready; exec sleep 600"])
        assert "ready" in started.wait_for("ready")


def test_stale_leftovers_of_a_dead_test_process_are_removed(tmp_path: Path) -> None:
    dead = dead_pid()
    stale_ns, stale_link = f"ssit{dead}n0", f"ssit{dead}v0"
    run(["ip", "netns", "add", stale_ns])
    try:
        run(["ip", "link", "add", stale_link, "type", "veth", "peer", "name", f"ssit{dead}v1"])
        squatter = subprocess.Popen(["ip", "netns", "exec", stale_ns, "sleep", "600"])
        wait_until(lambda: run(["ip", "netns", "pids", stale_ns], capture=True).stdout.strip(),
                   what="the squatter to enter the namespace")
        with Netns(workdir=tmp_path) as live:
            removed = remove_stale()
            assert stale_ns in removed and stale_link in removed
            assert live.name in namespaces()  # its owner (this process) is alive
        assert stale_ns not in namespaces()
        assert stale_link not in links() and f"ssit{dead}v1" not in links()
        assert squatter.wait(10) == -9
    finally:
        run(["ip", "netns", "delete", stale_ns], check=False, capture=True)
        run(["ip", "link", "delete", stale_link], check=False, capture=True)


def test_servers_die_with_the_test_process(tmp_path: Path) -> None:
    # A test process killed outright runs no cleanup: the kernel must kill its servers.
    code = ("import sys; from pathlib import Path; from vm_tests.netns import Proc; "
            "p = Proc(['sleep', '600'], Path(sys.argv[1])); print(p.pid, flush=True)")
    parent = subprocess.run([sys.executable, "-c", code, str(tmp_path / "log")],
                            capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    orphan = int(parent.stdout)
    wait_until(lambda: not alive(orphan), timeout=5, what=f"orphan {orphan} to be killed")
