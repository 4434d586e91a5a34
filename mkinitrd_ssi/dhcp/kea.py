"""Kea DHCPv4: host reservations merged into the proto's subnet4 entries."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from linuxrc_agent.ssitab import Ssitab
from mkinitrd_ssi.dhcp import Backend, BootFiles, Format
from mkinitrd_ssi.errors import SsiError

IPXE_CLASS = "ssi-ipxe"


def _load_proto(proto: str) -> dict[str, Any]:
    try:
        doc = json.loads(proto) if proto.strip() else {}
    except json.JSONDecodeError as e:
        raise SsiError(f"Kea proto is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}",
                       hint="the proto must be a Kea config object: {\"Dhcp4\": {...}}") from None
    if not isinstance(doc, dict) or not isinstance(doc.setdefault("Dhcp4", {}), dict):
        raise SsiError("Kea proto must be a JSON object with a \"Dhcp4\" object")
    return doc


def render(proto: str, table: Ssitab, boot: BootFiles) -> str:
    doc = _load_proto(proto)
    dhcp4 = doc["Dhcp4"]
    subnets = dhcp4.setdefault("subnet4", [])
    nets = []
    for subnet in subnets:
        try:
            nets.append(ipaddress.IPv4Network(subnet["subnet"], strict=False))
        except (KeyError, TypeError, ValueError):
            raise SsiError(f"Kea proto: subnet4 entry without a valid \"subnet\": {subnet!r}") \
                from None
    # A node with several NICs has one address: allow it in several reservations.
    dhcp4["ip-reservations-unique"] = False
    classes = [c for c in dhcp4.get("client-classes", []) if c.get("name") != IPXE_CLASS]
    classes.append({"name": IPXE_CLASS, "test": "option[77].hex == 'iPXE'",
                    "boot-file-name": boot.ipxe_script})
    dhcp4["client-classes"] = classes
    for subnet in subnets:
        subnet.setdefault("reservations", [])
    cache: dict[str, int] = {}
    for node in table:
        index = cache.get(node.network)
        if index is None:
            net = ipaddress.IPv4Network(node.network, strict=False)
            matches = [i for i, n in enumerate(nets) if net.subnet_of(n) or n.subnet_of(net)]
            if not matches:
                raise SsiError(f"{table.path}:{node.line}: node {node.number}'s address "
                               f"{node.ip} is in no subnet4 of the Kea proto",
                               hint=f"add a subnet4 entry for {node.network} to the proto")
            index = cache[node.network] = matches[0]
            # Boot settings at subnet level: a class (iPXE) may override them there,
            # whereas a reservation's own boot-file-name would win over the class.
            subnets[index]["boot-file-name"] = boot.pxe_file
            if boot.next_server:
                subnets[index]["next-server"] = boot.next_server
        for mac in node.macs:
            subnets[index]["reservations"].append(
                {"hw-address": mac, "ip-address": node.ip, "hostname": node.hostname})
    return json.dumps(doc, indent=2) + "\n"


def check(path: str) -> list[str]:
    return ["kea-dhcp4", "-t", path]


def warnings(proto: str) -> list[str]:
    try:
        doc = json.loads(proto) if proto.strip() else {}
    except json.JSONDecodeError:
        return []
    subnets = doc.get("Dhcp4", {}).get("subnet4", []) if isinstance(doc, dict) else []
    if any(isinstance(s, dict) and s.get("pools") for s in subnets):
        return ["a subnet4 in the Kea proto has pools: unknown MACs get leases from them; "
                "drop the pools so only reserved nodes are served"]
    return []


BACKEND = Backend(Format.KEA, "/etc/kea/kea-dhcp4.proto.json", "/etc/kea/kea-dhcp4.conf",
                  render, check, warnings)
