"""Which node am I? Local NICs (from sysfs) matched against the node table."""

from __future__ import annotations

import os
from dataclasses import dataclass

from linuxrc_agent.ssitab import Node, Ssitab, int_to_ip, ip_to_int, normalize_mac

ARPHRD_ETHER = "1"


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str


@dataclass(frozen=True)
class Identity:
    node: Node
    nic: Nic


class UnknownNode(Exception):
    def __init__(self, nics: list[Nic]) -> None:
        super().__init__("no local MAC is in the node table")
        self.nics = nics


class AmbiguousNode(Exception):
    """Local MACs of two different nodes: a wiring or table error, never a guess."""

    def __init__(self, matches: list[Identity]) -> None:
        described = ", ".join(f"{m.nic.name} {m.nic.mac} is node {m.node.number} "
                              f"(ssitab line {m.node.line})" for m in matches)
        super().__init__(f"local NICs match different nodes: {described}; "
                         "a node's MACs must all be on its own ssitab line")
        self.matches = matches


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def local_nics(sys_class_net: str = "/sys/class/net") -> list[Nic]:
    """Physical Ethernet NICs, sorted by name.

    Devices without a `device` link (loopback, bridges, veth, tun) are
    virtual. In the ramdisk nothing has changed an address yet, so `address`
    is the permanent MAC the firmware reported.
    """
    nics = []
    try:
        names = sorted(os.listdir(sys_class_net))
    except OSError:
        return []
    for name in names:
        base = f"{sys_class_net}/{name}"
        if not os.path.exists(f"{base}/device") or _read(f"{base}/type") != ARPHRD_ETHER:
            continue
        mac = normalize_mac(_read(f"{base}/address"))
        if mac is not None:
            nics.append(Nic(name, mac))
    return nics


def match(table: Ssitab, nics: list[Nic], bootif: str | None = None) -> Identity:
    """The node these NICs belong to, and the NIC to bring up.

    The NIC that netbooted (bootif) wins when it is local and listed. Otherwise
    the node's MACs are tried in ssitab order, so the admin's first MAC is the
    preferred interface.
    """
    by_mac = table.by_mac()
    local = {nic.mac: nic for nic in nics}
    if bootif is not None and bootif in local and bootif in by_mac:
        return Identity(by_mac[bootif], local[bootif])
    found: dict[int, Identity] = {}
    for nic in nics:
        node = by_mac.get(nic.mac)
        if node is None:
            continue
        known = found.get(node.number)
        if known is None or node.macs.index(nic.mac) < node.macs.index(known.nic.mac):
            found[node.number] = Identity(node, nic)
    if not found:
        raise UnknownNode(nics)
    if len(found) > 1:
        raise AmbiguousNode(sorted(found.values(), key=lambda m: m.node.number))
    return next(iter(found.values()))


def _suggest(table: Ssitab) -> tuple[int, str]:
    """A free node number and address to pre-fill the banner's ssitab line."""
    number = max((n.number for n in table), default=0) + 1
    if not len(table):
        return number, "IP/PREFIX"
    last = max(table, key=lambda n: ip_to_int(n.ip))
    used = {n.ip for n in table}
    value = ip_to_int(last.ip) + 1
    if value > 0xFFFFFFFF:
        return number, "IP/PREFIX"
    candidate = int_to_ip(value)
    if candidate in used or value & 255 in (0, 255):
        return number, "IP/PREFIX"
    return number, f"{candidate}/{last.prefix}"


def unknown_banner(table: Ssitab, nics: list[Nic]) -> list[str]:
    """Lines for the console: every local MAC, in the form an admin pastes into ssitab."""
    rule = "=" * 66
    lines = [rule, "This machine is not in the node table (/etc/ssitab).", ""]
    if nics:
        lines.append("Its network interfaces:")
        lines += [f"  {nic.name:<10} {nic.mac}" for nic in nics]
        number, address = _suggest(table)
        macs = ",".join(nic.mac for nic in nics)
        lines += ["", "To add it, append this line to /etc/ssitab on the shared root",
                  "(choose the node number and address; keep only the MACs to use):",
                  f"  {number:<6}  {address:<16}  {macs}  0  -",
                  "then run `mkinitrd.ssi && lilo.ssi` there and reboot this machine."]
    else:
        lines += ["No Ethernet interface was found: its driver may be missing from the",
                  "ramdisk (mkinitrd.ssi --add-modules DRIVER)."]
    lines.append(rule)
    return lines
