"""A bounded DHCP boot storm: many clients with distinct MACs asking at once, measured.

Debian 12 packages no perfdhcp, so this is our own load generator: one raw
AF_PACKET socket on a veth whose other end is on the DHCP server's bridge (in
a network namespace), speaking DISCOVER/OFFER/REQUEST/ACK for every MAC of a
generated ssitab, with at most `window` clients in flight, retransmitting after
`retry` seconds, and stopping by itself at `deadline` whatever happened. Every
client must end with exactly its reserved address; the result says how many
did, the rate (leases/s, first DISCOVER to last ACK) and the worst latency
(one client's DISCOVER to its ACK, retransmissions included).

The servers run the configs mkdhcpd.ssi wrote for a table of `count` nodes in
10.77.0.0/16 (server 10.77.0.1), with per-packet logging off: what is measured
is the server, not its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vm_tests.netns import Netns, Proc, veth

REPO = Path(__file__).resolve().parent.parent
SERVER_IP = "10.77.0.1"
MKDHCPD = str(Path(sys.executable).with_name("mkdhcpd.ssi"))
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6

PROTOS = {
    "isc": ("etc/dhcpd.proto", "authoritative;\ndefault-lease-time 3600;\n"
            "next-server 10.77.0.1;\nsubnet 10.77.0.0 netmask 255.255.0.0 {\n"
            "  deny unknown-clients;\n}\n"),
    "dnsmasq": ("etc/dnsmasq.proto", "dhcp-range=10.77.0.0,static,255.255.0.0\n"
                "dhcp-ignore=tag:!known\ndhcp-authoritative\n"),
}


def node_ip(i: int) -> str:
    return f"10.77.{1 + i // 250}.{1 + i % 250}"


def node_mac(i: int) -> str:
    return f"52:54:01:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def table(count: int) -> str:
    return "".join(f"{i + 1} {node_ip(i)}/16 {node_mac(i)} 0 -\n" for i in range(count))


def kea_proto(bridge: str, tmp: Path) -> str:
    return json.dumps({"Dhcp4": {
        "interfaces-config": {"interfaces": [bridge]},
        "lease-database": {"type": "memfile", "persist": True, "lfc-interval": 0,
                           "name": str(tmp / "kea-leases4.csv")},
        "valid-lifetime": 3600, "authoritative": True, "next-server": SERVER_IP,
        "subnet4": [{"id": 1, "subnet": "10.77.0.0/16"}],
        "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}],
                     "severity": "WARN"}],
    }})


# -- the servers


def start_server(kind: str, ns: Netns, bridge: str, root: Path, tmp: Path) -> Proc:
    if kind == "isc":
        (tmp / "dhcpd.leases").touch()
        # -f without -d: packets are logged to syslog, which nobody reads here.
        proc = ns.popen(["dhcpd", "-f", "-4", "-cf", str(root / "etc/dhcpd.conf"), "-lf",
                         str(tmp / "dhcpd.leases"), "-pf", str(tmp / "dhcpd.pid"), bridge],
                        log=tmp / "dhcpd.log")
        with contextlib.suppress(Exception):
            proc.wait_for("nonexistent", timeout=1.5)  # no log line to wait for: settle
        if not proc.running():
            raise RuntimeError(proc.output())
        return proc
    if kind == "kea":
        env = dict(os.environ, KEA_PIDFILE_DIR=str(tmp), KEA_LOCKFILE_DIR=str(tmp))
        proc = ns.popen(["kea-dhcp4", "-c", str(root / "etc/kea/kea-dhcp4.conf")],
                        log=tmp / "kea.log", env=env)
        deadline = time.monotonic() + 30
        while not (tmp / "kea-leases4.csv").exists() and time.monotonic() < deadline:
            if not proc.running():
                raise RuntimeError(proc.output())
            time.sleep(0.1)
        time.sleep(1.0)  # the lease file comes just before the sockets open
        return proc
    proc = ns.popen(["dnsmasq", "-k", "--log-facility=/dev/null",
                     f"--conf-file={root}/etc/dnsmasq.conf",
                     f"--dhcp-leasefile={tmp}/dnsmasq.leases", f"--pid-file={tmp}/dnsmasq.pid",
                     "--port=0", f"--interface={bridge}", "--bind-interfaces", "--user=root",
                     f"--dhcp-lease-max={1 << 20}"], log=tmp / "dnsmasq.log")
    time.sleep(1.0)
    if not proc.running():
        raise RuntimeError(proc.output())
    return proc


@contextlib.contextmanager
def storm_network(kind: str, count: int, tmp: Path) -> Iterator[tuple[Netns, str]]:
    """The server for `count` nodes on a bridge, and a client namespace with a veth
    onto it; yields (client namespace, client interface)."""
    root = tmp / "root"
    (root / "etc/kea").mkdir(parents=True, exist_ok=True)
    (root / "etc/ssitab").write_text(table(count))
    with Netns(workdir=tmp) as ns, Netns(workdir=tmp) as clients:
        bridge = ns.add_bridge(f"{SERVER_IP}/16")
        if kind == "kea":
            (root / "etc/kea/kea-dhcp4.proto.json").write_text(kea_proto(bridge, tmp))
        else:
            path, text = PROTOS[kind]
            (root / path).write_text(text)
        ns.run([MKDHCPD, "--root", str(root), "--format", kind], timeout=300)
        mine, theirs = veth(ns, clients)
        ns.ip("link", "set", mine, "master", bridge)
        start_server(kind, ns, bridge, root, tmp)
        yield clients, theirs


# -- the clients


@dataclass
class Client:
    mac: bytes
    want: str
    xid: int
    state: int = DISCOVER  # the message it sent last
    first: float = 0.0
    sent: float = 0.0
    tries: int = 0
    got: str | None = None
    server_id: bytes = b""
    done: float = 0.0


@dataclass(frozen=True)
class StormResult:
    server: str
    clients: int
    leased: int  # got exactly their reserved address
    wrong: int  # got another address or a NAK
    seconds: float  # first DISCOVER to last ACK
    worst_latency: float
    median_latency: float
    retransmits: int

    @property
    def rate(self) -> float:
        return self.leased / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (f"{self.server:8} {self.clients:6} clients: {self.leased} leased "
                f"({self.wrong} wrong), {self.rate:7.0f} leases/s, worst latency "
                f"{self.worst_latency * 1000:7.0f} ms, median {self.median_latency * 1000:5.0f}"
                f" ms, {self.retransmits} retransmits, {self.seconds:.2f} s")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(client: Client, kind: int) -> bytes:
    options = bytes([53, 1, kind]) + bytes([61, 7, 1]) + client.mac
    if kind == REQUEST:
        options += bytes([50, 4]) + socket.inet_aton(client.got or "0.0.0.0")
        options += bytes([54, 4]) + client.server_id
    options += bytes([55, 3, 1, 3, 66]) + b"\xff"
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, client.xid, 0, 0x8000,
                        b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, client.mac, b"", b"")
    payload = bootp + MAGIC + options
    udp = struct.pack("!HHHH", 68, 67, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     b"\0" * 4, b"\xff" * 4)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return b"\xff" * 6 + client.mac + struct.pack("!H", ETH_P_IP) + ip + udp


def _parse(frame: bytes) -> tuple[int, int, str, bytes] | None:
    """(xid, message type, yiaddr, server id) of a BOOTREPLY, else None."""
    if len(frame) < 14 + 20 + 8 + 240 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 15) * 4
    if frame[14 + 9] != 17:
        return None
    udp = 14 + ihl
    if struct.unpack("!H", frame[udp + 2:udp + 4])[0] != 68:
        return None
    bootp = udp + 8
    if frame[bootp] != 2 or frame[bootp + 236:bootp + 240] != MAGIC:
        return None
    xid = struct.unpack("!I", frame[bootp + 4:bootp + 8])[0]
    yiaddr = socket.inet_ntoa(frame[bootp + 16:bootp + 20])
    kind, server_id = 0, b""
    at = bootp + 240
    while at < len(frame) and frame[at] != 255:
        if frame[at] == 0:
            at += 1
            continue
        code, length = frame[at], frame[at + 1]
        value = frame[at + 2:at + 2 + length]
        if code == 53 and value:
            kind = value[0]
        elif code == 54:
            server_id = value
        at += 2 + length
    return xid, kind, yiaddr, server_id


def storm(ifname: str, count: int, server: str = "", window: int = 256, retry: float = 2.0,
          deadline: float = 120.0, seed: int = 1) -> StormResult:
    """Lease every node of table(count) through ifname (run inside the client namespace);
    stops after `deadline` seconds at the latest."""
    rng = random.Random(seed)
    xids = rng.sample(range(1, 1 << 31), count)
    clients = [Client(bytes.fromhex(node_mac(i).replace(":", "")), node_ip(i), xids[i])
               for i in range(count)]
    by_xid = {c.xid: c for c in clients}
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((ifname, 0))
    # Sends block (a full send queue must not lose a DISCOVER: that would measure the
    # generator); receives never do.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    pending = list(reversed(clients))
    active: dict[int, Client] = {}
    finished: list[Client] = []
    retransmits = 0
    start = time.monotonic()
    end = start + deadline

    def send(c: Client, kind: int, now: float) -> None:
        c.state, c.sent = kind, now
        sock.send(_frame(c, kind))

    try:
        while (pending or active) and time.monotonic() < end:
            now = time.monotonic()
            while pending and len(active) < window:
                c = pending.pop()
                c.first = now
                active[c.xid] = c
                send(c, DISCOVER, now)
            ready, _, _ = select.select([sock], [], [], 0.05)
            if ready:
                for _ in range(4096):
                    try:
                        frame, address = sock.recvfrom(2048, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    if address[2] == PACKET_OUTGOING:
                        continue
                    reply = _parse(frame)
                    c2 = by_xid.get(reply[0]) if reply else None
                    if reply is None or c2 is None or c2.xid not in active:
                        continue
                    _xid, kind, yiaddr, server_id = reply
                    now = time.monotonic()
                    if kind == OFFER and c2.state == DISCOVER:
                        c2.got, c2.server_id = yiaddr, server_id
                        send(c2, REQUEST, now)
                    elif kind in (ACK, NAK) and c2.state == REQUEST:
                        c2.got = yiaddr if kind == ACK else "NAK"
                        c2.done = now
                        finished.append(active.pop(c2.xid))
            now = time.monotonic()
            for c in [c for c in active.values() if now - c.sent > retry]:
                retransmits += 1
                c.tries += 1
                send(c, DISCOVER if c.state == DISCOVER else REQUEST, now)
    finally:
        sock.close()
    leased = [c for c in finished if c.got == c.want]
    latencies = sorted(c.done - c.first for c in finished) or [0.0]
    last = max((c.done for c in finished), default=start)
    return StormResult(server, count, len(leased), len(finished) - len(leased),
                       last - start, latencies[-1], latencies[len(latencies) // 2],
                       retransmits)


def run_storm(kind: str, count: int, tmp: Path, window: int = 256,
              deadline: float = 120.0) -> StormResult:
    """The whole measurement for one server: network, server, storm in the client
    namespace (as a child process, so the raw socket lives there)."""
    with storm_network(kind, count, tmp) as (clients, ifname):
        code = ("import json, sys; from vm_tests.dhcpstorm import storm; "
                f"r = storm({ifname!r}, {count}, {kind!r}, window={window}, "
                f"deadline={deadline}); print(json.dumps(r.__dict__))")
        done = clients.run(["env", f"PYTHONPATH={REPO}", sys.executable, "-c", code],
                           timeout=deadline + 60)
        return StormResult(**json.loads(done.stdout.decode().splitlines()[-1]))
