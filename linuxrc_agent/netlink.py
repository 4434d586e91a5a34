"""Bring a NIC up with its address: a few rtnetlink messages over a raw socket.

Our own rather than pyroute2 because the agent needs three requests (link
up, add address, read the ack) and pyroute2 costs the ramdisk megabytes and
the boot a slow import; see README "Why not pyroute2 in the agent".
"""

from __future__ import annotations

# The C module: socket.py's wrappers (enums, makefile, selectors) cost the agent's start-up
# 11 million instructions (valgrind) and this code uses none of them.
import _socket as socket
import errno
import os
import struct
import time

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_NEWADDR = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
IFF_UP = 0x1
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
RT_SCOPE_UNIVERSE = 0

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")


def _rtattr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


class _Socket:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = int(time.time())

    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes) -> None:
        """Send one request and raise OSError(errno) unless the kernel acks it."""
        self.seq += 1
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind,
                                NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0)
        self.sock.send(header + body)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, msg_type, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
                if msg_type == NLMSG_ERROR and seq == self.seq:
                    (code,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return
                offset += max(length, _NLMSGHDR.size) + (-length % 4)


def _ip_bytes(ip: str) -> bytes:
    return socket.inet_aton(ip)


def link_up(ifname: str) -> None:
    index = socket.if_nametoindex(ifname)
    with _Socket() as nl:
        nl.request(RTM_NEWLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP))


def add_address(ifname: str, ip: str, prefix: int) -> None:
    """Assign ip/prefix (with its broadcast); an address already there is fine."""
    index = socket.if_nametoindex(ifname)
    value = struct.unpack("!I", _ip_bytes(ip))[0]
    broadcast = value | ((1 << (32 - prefix)) - 1) if prefix < 31 else value
    body = (_IFADDRMSG.pack(socket.AF_INET, prefix, 0, RT_SCOPE_UNIVERSE, index)
            + _rtattr(IFA_LOCAL, _ip_bytes(ip)) + _rtattr(IFA_ADDRESS, _ip_bytes(ip))
            + _rtattr(IFA_BROADCAST, struct.pack("!I", broadcast)))
    with _Socket() as nl:
        try:
            nl.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise


def wait_carrier(ifname: str, timeout: float) -> bool:
    """True once the link reports carrier; False after timeout (the caller decides)."""
    deadline = time.monotonic() + timeout
    path = f"/sys/class/net/{ifname}/carrier"
    while True:
        try:
            with open(path) as f:
                if f.read().strip() == "1":
                    return True
        except OSError:
            pass  # EINVAL while the link is still down
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
