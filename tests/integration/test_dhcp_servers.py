"""mkdhcpd.ssi's output served by the real ISC dhcpd, Kea and dnsmasq to a real DHCP client.

One namespace holds the server on a bridge (10.77.0.1/24); every client is a
fresh veth from that bridge into a second namespace, with the MAC under test,
where busybox udhcpc asks for a lease and its script prints what it got.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkinitrd_ssi.dhcp.kea import strip_comments
from vm_tests.netns import Netns, Proc, available

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SERVER_IP = "10.77.0.1"
MKDHCPD = str(Path(sys.executable).with_name("mkdhcpd.ssi"))
UNKNOWN_MAC = "52:54:00:99:99:99"
TABLE = """\
1  10.77.0.11/24  52:54:00:12:34:01                    0  -              hostname=n1
2  10.77.0.12/24  52:54:00:12:34:02                    1  LABEL=ssiboot  hostname=n2
3  10.77.0.13/24  52:54:00:12:34:03,52:54:00:12:34:13  0  -              hostname=n3
4  10.77.0.14/24  52:54:00:12:34:04                    0  -              server=10.77.0.5
5  10.77.0.15/24  52:54:00:12:34:05                    0  -              server=10.77.0.6
"""
OTHER_SERVERS = {"52:54:00:12:34:04": "10.77.0.5", "52:54:00:12:34:05": "10.77.0.6"}

# udhcpc runs this on every event; "bound" carries the lease.
CLIENT_SCRIPT = """#!/bin/sh
echo "event=$1"
if [ "$1" = bound ]; then
  for v in ip subnet hostname boot_file siaddr; do eval "echo $v=\\$$v"; done
fi
exit 0
"""


@dataclass
class Server:
    kind: str
    ns: Netns
    clients: Netns
    bridge: str
    proc: Proc
    script: Path

    def ask(self, mac: str, *extra: str, tries: int = 3) -> tuple[int, list[dict[str, str]]]:
        """Run udhcpc with this MAC; its exit status and the events its script saw."""
        ifname = self.ns.add_port(self.bridge, self.clients, mac=mac)
        result = self.clients.run(
            ["busybox", "udhcpc", "-f", "-q", "-n", "-i", ifname, "-t", str(tries), "-T", "1",
             "-s", str(self.script), "-O", "hostname", *extra], check=False, timeout=20)
        events: list[dict[str, str]] = []
        for line in result.stdout.decode().splitlines():
            key, _, value = line.partition("=")
            if key == "event":
                events.append({})
            events[-1][key] = value
        return result.returncode, events

    def lease(self, mac: str, *extra: str) -> dict[str, str]:
        rc, events = self.ask(mac, *extra)
        bound = [e for e in events if e["event"] == "bound"]
        assert rc == 0 and len(bound) == 1, (events, self.proc.output()[-3000:])
        return bound[0]


def start_isc(ns: Netns, bridge: str, root: Path, tmp: Path) -> Proc:
    leases = tmp / "dhcpd.leases"
    leases.touch()
    proc = ns.popen(["dhcpd", "-f", "-d", "-4", "-cf", str(root / "etc/dhcpd.conf"),
                     "-lf", str(leases), "-pf", str(tmp / "dhcpd.pid"), bridge],
                    log=tmp / "dhcpd.log")
    proc.wait_for("Server starting service.")
    return proc


def start_kea(ns: Netns, bridge: str, root: Path, tmp: Path) -> Proc:
    env = dict(os.environ, KEA_PIDFILE_DIR=str(tmp), KEA_LOCKFILE_DIR=str(tmp))
    proc = ns.popen(["kea-dhcp4", "-c", str(root / "etc/kea/kea-dhcp4.conf")],
                    log=tmp / "kea.log", env=env)
    proc.wait_for("DHCP4_STARTED")
    return proc


def start_dnsmasq(ns: Netns, bridge: str, root: Path, tmp: Path) -> Proc:
    proc = ns.popen(["dnsmasq", "-d", f"--conf-file={root}/etc/dnsmasq.conf",
                     f"--dhcp-leasefile={tmp}/dnsmasq.leases", f"--pid-file={tmp}/dnsmasq.pid",
                     "--port=0", f"--interface={bridge}", "--bind-interfaces", "--log-dhcp",
                     "--user=root"], log=tmp / "dnsmasq.log")
    proc.wait_for("DHCP, static leases only")
    return proc


def kea_proto(bridge: str, tmp: Path) -> str:
    """The example proto, on the test's bridge, leases and log in the test's directory."""
    doc = json.loads(strip_comments((EXAMPLES / "kea-dhcp4.proto.json").read_text()))
    dhcp4 = doc["Dhcp4"]
    dhcp4["interfaces-config"]["interfaces"] = [bridge]
    dhcp4["lease-database"].update(name=str(tmp / "kea-leases4.csv"), **{"lfc-interval": 0})
    dhcp4["loggers"] = [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}],
                         "severity": "INFO"}]
    return json.dumps(doc, indent=2)


@dataclass(frozen=True)
class Kind:
    server: str  # the binary
    proto: str  # under ROOT
    start: Callable[[Netns, str, Path, Path], Proc]
    ignored: str  # what the server logs when it turns the unknown MAC away


KINDS = {
    "isc": Kind("dhcpd", "etc/dhcpd.proto", start_isc,
                f"DHCPDISCOVER from {UNKNOWN_MAC} via"),
    "kea": Kind("kea-dhcp4", "etc/kea/kea-dhcp4.proto.json", start_kea,
                f"ALLOC_ENGINE_V4_ALLOC_FAIL_NO_POOLS [hwtype=1 {UNKNOWN_MAC}]"),
    "dnsmasq": Kind("dnsmasq", "etc/dnsmasq.proto", start_dnsmasq,
                    f"{UNKNOWN_MAC} ignored"),
}


def server_tree(name: str, tmp: Path) -> tuple[Kind, Path, Path]:
    """Skip unless the server and busybox can run here; else ROOT (ssitab, proto's
    directory) and the udhcpc script under tmp."""
    reason = available()
    if reason:
        pytest.skip(reason)
    kind = KINDS[name]
    for tool in (kind.server, "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make deps installs it)")
    root = tmp / "root"
    (root / kind.proto).parent.mkdir(parents=True)
    (root / "etc/ssitab").write_text(TABLE)
    script = tmp / "udhcpc.sh"
    script.write_text(CLIENT_SCRIPT)
    script.chmod(0o755)
    return kind, root, script


@pytest.fixture(scope="module", params=list(KINDS))
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp(request.param)
    kind, root, script = server_tree(request.param, tmp)
    with Netns(workdir=tmp) as ns, Netns(workdir=tmp) as clients:
        bridge = ns.add_bridge(f"{SERVER_IP}/24")
        if request.param == "kea":
            (root / kind.proto).write_text(kea_proto(bridge, tmp))
        else:
            shutil.copy(EXAMPLES / Path(kind.proto).name, root / kind.proto)
        if request.param == "isc":
            # A proto with its own name for option 93 (common): ours must still match.
            with open(root / kind.proto, "a") as f:
                f.write("option arch code 93 = unsigned integer 16;\n")
        # Inside the namespace, so that Kea's checker finds the bridge it is to serve.
        made = ns.run([MKDHCPD, "--root", str(root), "--format", request.param, "-v"])
        assert f"{kind.server} accepts the generated config" in made.stderr.decode()
        proc = kind.start(ns, bridge, root, tmp)
        yield Server(request.param, ns, clients, bridge, proc, script)


def test_known_mac_gets_its_address_hostname_and_boot_file(server: Server) -> None:
    lease = server.lease("52:54:00:12:34:01")
    assert lease == {"event": "bound", "ip": "10.77.0.11", "subnet": "255.255.255.0",
                     "hostname": "n1", "boot_file": "pxelinux.0", "siaddr": SERVER_IP}


def test_second_nic_of_a_node_gets_the_node_address(server: Server) -> None:
    lease = server.lease("52:54:00:12:34:13")
    assert (lease["ip"], lease["hostname"]) == ("10.77.0.13", "n3")


def test_ipxe_is_handed_the_script(server: Server) -> None:
    # iPXE sends user-class "iPXE" (option 77, raw): it must not get the PXE loader again.
    lease = server.lease("52:54:00:12:34:02", "-x", "0x4d:" + b"iPXE".hex())
    assert (lease["ip"], lease["hostname"], lease["boot_file"]) == \
        ("10.77.0.12", "n2", "ssi.ipxe")


# What each kind of client sends (udhcpc -x: option 77 user class, 93 client
# architecture, raw hex) and the boot file it must get.
IPXE = ("-x", "0x4d:" + b"iPXE".hex())
CLIENTS = {
    "pxe": ((), "pxelinux.0"),
    "ipxe": (IPXE, "ssi.ipxe"),
    "bios-pxe": (("-x", "0x5d:0000"), "pxelinux.0"),
    "uefi-7": (("-x", "0x5d:0007"), "shimx64.efi"),
    "uefi-9": (("-x", "0x5d:0009"), "shimx64.efi"),
    "ipxe-on-uefi": ((*IPXE, "-x", "0x5d:0007"), "ssi.ipxe"),
}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_the_boot_file_follows_the_client_architecture(server: Server, client: str) -> None:
    # UEFI x86-64 firmware (option 93 = 7 or 9) gets shim; BIOS PXE ROMs PXELINUX;
    # iPXE its script whatever the firmware under it.
    extra, boot_file = CLIENTS[client]
    lease = server.lease("52:54:00:12:34:01", *extra)
    assert (lease["ip"], lease["boot_file"], lease["siaddr"]) == \
        ("10.77.0.11", boot_file, SERVER_IP), lease


@pytest.mark.parametrize("client", ["pxe", "ipxe", "uefi-7"])
def test_node_with_server_option_is_sent_to_its_boot_server(server: Server, client: str) -> None:
    # ssitab server=: next-server (siaddr) per node, the boot file as for every node;
    # the nodes without it keep the proto's next-server (the other tests).
    extra, boot_file = CLIENTS[client]
    for mac, boot_server in OTHER_SERVERS.items():
        lease = server.lease(mac, *extra)
        assert (lease["siaddr"], lease["boot_file"]) == (boot_server, boot_file), lease


def test_unknown_mac_gets_no_offer(server: Server) -> None:
    rc, events = server.ask(UNKNOWN_MAC)
    assert rc != 0
    assert [e["event"] for e in events if e["event"] != "deconfig"] == ["leasefail"]
    # The server did hear the client: silence is a decision, not a broken network.
    assert KINDS[server.kind].ignored in server.proc.output()
