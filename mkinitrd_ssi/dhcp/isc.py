"""ISC dhcpd: one host block per NIC (dhcpd allows one hardware address per host)."""

from __future__ import annotations

import re

from linuxrc_agent.ssitab import Ssitab
from mkinitrd_ssi.dhcp import Backend, BootFiles, Format, host_label, preamble


def render(proto: str, table: Ssitab, boot: BootFiles) -> str:
    out = preamble(proto, table)
    out.append("group {\n")
    if boot.next_server:
        out.append(f"  next-server {boot.next_server};\n")
    # iPXE announces itself with user-class "iPXE": give it the script, not the
    # PXE loader again, or a chainloading ROM would loop.
    out.append('  if exists user-class and option user-class = "iPXE" {\n')
    out.append(f'    filename "{boot.ipxe_script}";\n')
    out.append("  } else {\n")
    out.append(f'    filename "{boot.pxe_file}";\n')
    out.append("  }\n")
    for node in table:
        for index, mac in enumerate(node.macs):
            out.append(
                f"  host {host_label(node.number, index)} {{ hardware ethernet {mac}; "
                f'fixed-address {node.ip}; option host-name "{node.hostname}"; }}\n'
            )
    out.append("}\n")
    return "".join(out)


def check(path: str) -> list[str]:
    # Without -q: dhcpd prints the file, line and offending text of an error.
    return ["dhcpd", "-t", "-4", "-cf", path]


_DENY = re.compile(r"^\s*deny\s+unknown-clients\s*;", re.MULTILINE)


def warnings(proto: str) -> list[str]:
    if _DENY.search(proto):
        return []
    return ["the proto has no 'deny unknown-clients;': if one of its subnets has a range, "
            "unknown MACs get leases; put 'deny unknown-clients;' in that subnet"]


BACKEND = Backend(Format.ISC, "/etc/dhcpd.proto", "/etc/dhcpd.conf", render, check, warnings)
