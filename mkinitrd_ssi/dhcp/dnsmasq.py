"""dnsmasq: one dhcp-host line per node (dnsmasq takes several MACs on one line)."""

from __future__ import annotations

import re

from linuxrc_agent.ssitab import Ssitab
from mkinitrd_ssi.dhcp import EFI_X64_ARCHES, Backend, BootFiles, Format, preamble
from mkinitrd_ssi.errors import SsiError

EFI_TAG = "ssi-efi64"  # set for a client whose option 93 says UEFI x86-64

# dnsmasq reads each comma-separated item of dhcp-host by its shape: a valid
# host name of one of these shapes would be taken for a hardware address, a
# lease time or a keyword instead.
_MISREAD = re.compile(r"(?:[0-9a-fA-F]{1,2}-)+[0-9a-fA-F]{1,2}|[0-9]+[smhdwSMHDW]?"
                      r"|(?i:infinite|ignore|deleted)")


def render(proto: str, table: Ssitab, boot: BootFiles) -> str:
    out = preamble(proto, table)
    server = f",,{boot.next_server}" if boot.next_server else ""
    out.append("dhcp-userclass=set:ssi-ipxe,iPXE\n")
    out.extend(f"dhcp-match=set:{EFI_TAG},option:client-arch,{a}\n" for a in EFI_X64_ARCHES)
    out.extend(_boot_lines("", boot, server))
    # A node with its own boot server (ssitab server=) gets that server's tag from its
    # dhcp-host line. These lines must come after the generic ones: of the dhcp-boot
    # lines whose tags all match, dnsmasq uses the last one (measured: in the other
    # order the node is sent to the generic server; tests/integration/test_dhcp_servers.py).
    for ip in dict.fromkeys(node.server for node in table if node.server):
        out.extend(_boot_lines(f"tag:{server_tag(ip)},", boot, f",,{ip}"))
    for node in table:
        if _MISREAD.fullmatch(node.hostname):
            raise SsiError(f"{table.path}:{node.line}: node {node.number}'s hostname "
                           f"'{node.hostname}' would be misread by dnsmasq (as a hardware "
                           "address, lease time or keyword)",
                           hint="give the node another hostname= in ssitab")
        tag = f"set:{server_tag(node.server)}," if node.server else ""
        out.append(f"dhcp-host={','.join(node.macs)},{tag}{node.ip},{node.hostname},"
                   "infinite\n")
    return "".join(out)


def _boot_lines(tags: str, boot: BootFiles, server: str) -> list[str]:
    """dhcp-boot for iPXE (its script, whatever the firmware), UEFI x86-64 (shim) and BIOS
    PXE, under tags: one line per client, whichever matches last (tags exclude each other)."""
    return [f"dhcp-boot={tags}tag:ssi-ipxe,{boot.ipxe_script}{server}\n",
            f"dhcp-boot={tags}tag:!ssi-ipxe,tag:{EFI_TAG},{boot.efi_file}{server}\n",
            f"dhcp-boot={tags}tag:!ssi-ipxe,tag:!{EFI_TAG},{boot.pxe_file}{server}\n"]


def server_tag(ip: str) -> str:
    """The dnsmasq tag of the nodes booting from ip: named by the address, so a table
    edit elsewhere never renames it."""
    return "ssi-srv-" + ip.replace(".", "-")


def check(path: str) -> list[str]:
    return ["dnsmasq", "--test", f"--conf-file={path}"]


_IGNORE = re.compile(r"^\s*dhcp-ignore\s*=\s*tag:!known\s*$", re.MULTILINE)
_RANGE = re.compile(r"^\s*dhcp-range\s*=", re.MULTILINE)


def warnings(proto: str) -> list[str]:
    found = []
    if not _RANGE.search(proto):
        # Without one dnsmasq answers no DHCP at all, dhcp-host lines or not.
        found.append("the proto has no 'dhcp-range': dnsmasq serves no DHCP; add e.g. "
                     "'dhcp-range=10.77.0.0,static,255.255.255.0'")
    if not _IGNORE.search(proto):
        found.append("the proto has no 'dhcp-ignore=tag:!known': unknown MACs may get leases")
    return found


BACKEND = Backend(Format.DNSMASQ, "/etc/dnsmasq.proto", "/etc/dnsmasq.conf", render, check,
                  warnings)
