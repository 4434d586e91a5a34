"""Kea DHCPv4: host reservations merged into the proto's subnet4 entries."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from linuxrc_agent.ssitab import Ssitab, ip_to_int
from mkinitrd_ssi.dhcp import EFI_X64_ARCHES, Backend, BootFiles, Format
from mkinitrd_ssi.errors import SsiError

IPXE_CLASS = "ssi-ipxe"
EFI_CLASS = "ssi-efi64"

# Kea's parser allows #, // and /* */ comments, and Debian's stock
# kea-dhcp4.conf is full of them: a proto copied from it must load too.
_STRING_OR_COMMENT = re.compile(r'"(?:[^"\\]|\\.)*"|(?://|#)[^\n]*|/\*.*?\*/', re.DOTALL)


def strip_comments(text: str) -> str:
    """Kea JSON without comments; each comment becomes spaces so error positions hold."""
    def blank(m: re.Match[str]) -> str:
        token = m.group()
        return token if token[0] == '"' else re.sub(r"[^\n]", " ", token)
    return _STRING_OR_COMMENT.sub(blank, text)


def _load_proto(proto: str) -> dict[str, Any]:
    try:
        doc = json.loads(strip_comments(proto)) if proto.strip() else {}
    except json.JSONDecodeError as e:
        raise SsiError(f"Kea proto is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}",
                       hint="the proto must be a Kea config object: {\"Dhcp4\": {...}}") from None
    if not isinstance(doc, dict) or not isinstance(doc.setdefault("Dhcp4", {}), dict):
        raise SsiError("Kea proto must be a JSON object with a \"Dhcp4\" object")
    return doc


def _subnets(dhcp4: dict[str, Any]) -> list[tuple[ipaddress.IPv4Network, dict[str, Any]]]:
    entries = dhcp4.setdefault("subnet4", [])
    if not isinstance(entries, list):
        raise SsiError("Kea proto: \"subnet4\" must be a list")
    subnets = []
    for entry in entries:
        try:
            net = ipaddress.IPv4Network(entry["subnet"], strict=False)
        except (KeyError, TypeError, ValueError):
            raise SsiError(f"Kea proto: subnet4 entry without a valid \"subnet\": {entry!r}") \
                from None
        if not isinstance(entry.setdefault("reservations", []), list):
            raise SsiError(f"Kea proto: \"reservations\" of subnet {net} must be a list")
        subnets.append((net, entry))
    # Most specific first: a node goes to the narrowest subnet holding its address.
    subnets.sort(key=lambda s: -s[0].prefixlen)
    return subnets


def render(proto: str, table: Ssitab, boot: BootFiles) -> str:
    doc = _load_proto(proto)
    dhcp4 = doc["Dhcp4"]
    subnets = _subnets(dhcp4)
    # A node with several NICs has one address: allow it in several reservations.
    dhcp4["ip-reservations-unique"] = False
    classes = dhcp4.get("client-classes", [])
    if not isinstance(classes, list):
        raise SsiError("Kea proto: \"client-classes\" must be a list")
    classes = [c for c in classes
               if not (isinstance(c, dict) and c.get("name") in (IPXE_CLASS, EFI_CLASS))]
    classes.append({"name": IPXE_CLASS, "test": "option[77].hex == 'iPXE'",
                    "boot-file-name": boot.ipxe_script})
    # UEFI x86-64 firmware (option 93) gets shim; iPXE keeps its script on UEFI too,
    # so the two classes exclude each other rather than rely on their order.
    arches = " or ".join(f"option[93].hex == 0x{a:04x}" for a in EFI_X64_ARCHES)
    classes.append({"name": EFI_CLASS, "test": f"({arches}) and not member('{IPXE_CLASS}')",
                    "boot-file-name": boot.efi_file})
    dhcp4["client-classes"] = classes
    # Subnet matching on integers: ipaddress objects per node cost more than the rest.
    nets = [(int(net.network_address), int(net.netmask), entry) for net, entry in subnets]
    ours: list[list[str]] = [[] for _ in subnets]
    for node in table:
        ip = ip_to_int(node.ip)
        index = next((i for i, (net, mask, _e) in enumerate(nets) if ip & mask == net), None)
        if index is None:
            raise SsiError(f"{table.path}:{node.line}: node {node.number}'s address "
                           f"{node.ip} is in no subnet4 of the Kea proto",
                           hint=f"add a subnet4 entry for {node.network} to the proto")
        lines = ours[index]
        if not lines:
            # Boot settings at subnet level: a class (iPXE) may override them there,
            # whereas a reservation's own boot-file-name would win over the class.
            entry = nets[index][2]
            entry["boot-file-name"] = boot.pxe_file
            if boot.next_server:
                entry["next-server"] = boot.next_server
        # Formatted directly: the parser allows no character in MACs, addresses
        # or host names that JSON would need to escape.
        # A reservation's next-server wins over the subnet's: the node's boot server.
        server = f', "next-server": "{node.server}"' if node.server else ""
        lines.extend(f'{{"hw-address": "{mac}", "ip-address": "{node.ip}", '
                     f'"hostname": "{node.hostname}"{server}}}' for mac in node.macs)
    return _dump(doc, [entry for _net, entry in subnets], ours)


_MARKER = re.compile(r'^( *)"reservations": "\\u0000ssi-reservations-(\d+)\\u0000"',
                     re.MULTILINE)


def _dump(doc: dict[str, Any], entries: list[dict[str, Any]], ours: list[list[str]]) -> str:
    """Indented JSON with one reservation per line: the proto's, then ours (as JSON text).

    json.dumps(indent=...) runs the pure-Python encoder, over ten times slower
    than the C one: the reservations, nearly all of the output, are spliced in.
    """
    encode = json.JSONEncoder().encode
    lists = []
    for index, entry in enumerate(entries):
        lists.append([*map(encode, entry["reservations"]), *ours[index]])
        entry["reservations"] = f"\0ssi-reservations-{index}\0"

    def splice(m: re.Match[str]) -> str:
        indent, items = m.group(1), lists[int(m.group(2))]
        if not items:
            return f'{indent}"reservations": []'
        inner = f",\n{indent}  ".join(items)
        return f'{indent}"reservations": [\n{indent}  {inner}\n{indent}]'

    return _MARKER.sub(splice, json.dumps(doc, indent=2)) + "\n"


def check(path: str) -> list[str]:
    return ["kea-dhcp4", "-t", path]


def warnings(proto: str) -> list[str]:
    try:
        doc = json.loads(strip_comments(proto)) if proto.strip() else {}
    except json.JSONDecodeError:
        return []  # render() reports it, with its position
    dhcp4 = doc.get("Dhcp4") if isinstance(doc, dict) else None
    subnets = dhcp4.get("subnet4", []) if isinstance(dhcp4, dict) else []
    if isinstance(subnets, list) and any(isinstance(s, dict) and s.get("pools")
                                         for s in subnets):
        return ["a subnet4 in the Kea proto has pools: unknown MACs get leases from them; "
                "drop the pools so only reserved nodes are served"]
    return []


BACKEND = Backend(Format.KEA, "/etc/kea/kea-dhcp4.proto.json", "/etc/kea/kea-dhcp4.conf",
                  render, check, warnings)
