"""mkdhcpd.ssi --reload against the real ISC dhcpd, Kea and dnsmasq in a namespace: a
changed config is applied (new node served), a lease granted before is still known,
an unchanged or rejected config touches nothing."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkinitrd_ssi.dhcp.kea import strip_comments
from tests.integration.test_dhcp_servers import (
    EXAMPLES,
    KINDS,
    MKDHCPD,
    SERVER_IP,
    Server,
    kea_proto,
    server_tree,
)
from vm_tests.netns import Netns

pytestmark = pytest.mark.integration

NEW_NODE = "6  10.77.0.16/24  52:54:00:12:34:06  0  -  hostname=n6\n"
PID_FILES = {"isc": "dhcpd.pid", "dnsmasq": "dnsmasq.pid"}


@pytest.fixture(params=list(KINDS))
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    kind, root, script = server_tree(request.param, tmp_path)
    with Netns(workdir=tmp_path) as ns, Netns(workdir=tmp_path) as clients:
        bridge = ns.add_bridge(f"{SERVER_IP}/24")
        if request.param == "kea":
            doc = json.loads(strip_comments(kea_proto(bridge, tmp_path)))
            doc["Dhcp4"]["control-socket"] = {"socket-type": "unix",
                                              "socket-name": str(tmp_path / "kea4.sock")}
            (root / kind.proto).write_text(json.dumps(doc, indent=2))
        else:
            shutil.copy(EXAMPLES / Path(kind.proto).name, root / kind.proto)
        ns.run([MKDHCPD, "--root", str(root), "--format", request.param])
        if request.param == "dnsmasq":
            # As a service runs it: -k writes the pid file, which -d (debug) does not.
            proc = ns.popen(["dnsmasq", "-k", "--log-facility=-", f"--conf-file={root}/etc/"
                             "dnsmasq.conf", f"--dhcp-leasefile={tmp_path}/dnsmasq.leases",
                             f"--pid-file={tmp_path}/dnsmasq.pid", "--port=0",
                             f"--interface={bridge}", "--bind-interfaces", "--log-dhcp",
                             "--user=root"], log=tmp_path / "dnsmasq.log")
            proc.wait_for("DHCP, static leases only")
        else:
            proc = kind.start(ns, bridge, root, tmp_path)
        yield Server(request.param, ns, clients, bridge, proc, script), root


def mkdhcpd(server: Server, root: Path, tmp: Path, *extra: str) -> tuple[int, str]:
    argv = [MKDHCPD, "--root", str(root), "--format", server.kind, "--reload", *extra]
    if server.kind in PID_FILES:
        argv += ["--pid-file", str(tmp / PID_FILES[server.kind])]
    done = server.ns.run(argv, check=False)
    return done.returncode, (done.stdout + done.stderr).decode()


def server_pid(server: Server, tmp: Path) -> int:
    if server.kind in PID_FILES:
        return int((tmp / PID_FILES[server.kind]).read_text().split()[0])
    return server.proc.pid  # Kea is never restarted: the process we started


def lease_state(server: Server, tmp: Path) -> str:
    """Where the server keeps its leases (ISC keeps none for fixed-address hosts)."""
    files = {"isc": "dhcpd.leases", "kea": "kea-leases4.csv", "dnsmasq": "dnsmasq.leases"}
    return (tmp / files[server.kind]).read_text()


def test_reload_applies_a_changed_config_and_keeps_leases(
        served: tuple[Server, Path], tmp_path: Path) -> None:
    server, root = served
    assert server.lease("52:54:00:12:34:01")["ip"] == "10.77.0.11"
    before = lease_state(server, tmp_path)
    if server.kind != "isc":
        assert "10.77.0.11" in before
    pid = server_pid(server, tmp_path)

    # Unchanged: nothing written, the server not touched.
    rc, out = mkdhcpd(server, root, tmp_path)
    assert rc == 0 and "unchanged: the running server was not touched" in out, out
    assert server_pid(server, tmp_path) == pid

    # A proto the checker rejects: exit 1, config and server as they were.
    proto = root / KINDS[server.kind].proto
    good = proto.read_text()
    proto.write_text(good.replace("10.77.0.0", "10.77.0.0 }{") if server.kind == "isc"
                     else good[:-3] if server.kind == "kea" else good + "dhcp-range=nonsense\n")
    with open(root / "etc/ssitab", "a") as f:
        f.write(NEW_NODE)
    rc, out = mkdhcpd(server, root, tmp_path)
    assert rc == 1 and "restarted" not in out and "reloaded" not in out, out
    assert server_pid(server, tmp_path) == pid
    assert server.ask("52:54:00:12:34:06")[0] != 0  # still the old config

    # Fixed proto: written, checked, applied.
    proto.write_text(good)
    rc, out = mkdhcpd(server, root, tmp_path)
    assert rc == 0, out
    said = {"isc": "restarted dhcpd (pid", "kea": "Kea reloaded its config over",
            "dnsmasq": "restarted dnsmasq (pid"}[server.kind]
    assert said in out and "leases kept" in out, out
    assert server.lease("52:54:00:12:34:06")["ip"] == "10.77.0.16"
    # The lease granted before the reload is still known to the server.
    if server.kind != "isc":
        after = lease_state(server, tmp_path)
        assert next(line for line in before.splitlines() if "10.77.0.11" in line) in after
    assert server.lease("52:54:00:12:34:01")["ip"] == "10.77.0.11"
    if server.kind == "kea":
        assert server.proc.running()  # reloaded in place, never restarted
    else:
        new = server_pid(server, tmp_path)
        assert new != pid and os.path.exists(f"/proc/{new}")
