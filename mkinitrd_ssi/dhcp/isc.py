"""ISC dhcpd: one host block per NIC (dhcpd allows one hardware address per host)."""

from __future__ import annotations

import re

from linuxrc_agent.ssitab import Ssitab
from mkinitrd_ssi.dhcp import EFI_X64_ARCHES, Backend, BootFiles, Format, host_label, preamble

# Option 93 under a name of ours: dhcpd knows it by no name before 4.4, and a proto may
# have declared it under another (arch, say); a second name for the code is accepted.
ARCH_OPTION = "ssi-client-arch"


def render(proto: str, table: Ssitab, boot: BootFiles) -> str:
    out = preamble(proto, table)
    out.append(f"option {ARCH_OPTION} code 93 = unsigned integer 16;\n")
    out.append("group {\n")
    if boot.next_server:
        out.append(f"  next-server {boot.next_server};\n")
    # iPXE announces itself with user-class "iPXE": give it the script, not the
    # PXE loader again, or a chainloading ROM would loop. Then UEFI x86-64
    # firmware gets shim, which cannot run on BIOS, and BIOS PXELINUX.
    out.append('  if exists user-class and option user-class = "iPXE" {\n')
    out.append(f'    filename "{boot.ipxe_script}";\n')
    arches = " or ".join(f"option {ARCH_OPTION} = 00:{a:02x}" for a in EFI_X64_ARCHES)
    out.append(f"  }} elsif {arches} {{\n")
    out.append(f'    filename "{boot.efi_file}";\n')
    out.append("  } else {\n")
    out.append(f'    filename "{boot.pxe_file}";\n')
    out.append("  }\n")
    for node in table:
        # A host's own next-server wins over the group's and the proto's: the node's
        # boot server (ssitab server=) serves its boot files and its iPXE script.
        server = f"next-server {node.server}; " if node.server else ""
        for index, mac in enumerate(node.macs):
            out.append(
                f"  host {host_label(node.number, index)} {{ hardware ethernet {mac}; "
                f'fixed-address {node.ip}; option host-name "{node.hostname}"; {server}}}\n'
            )
    out.append("}\n")
    return "".join(out)


def check(path: str) -> list[str]:
    # Without -q: dhcpd prints the file, line and offending text of an error.
    return ["dhcpd", "-t", "-4", "-cf", path]


# dhcpd's lexer (common/conflex.c): `#` comments to the end of the line, quoted
# strings with backslash escapes, and these characters as tokens of their own.
_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"?|[{};,]|[^\s{};,"#]+', re.DOTALL)


def tokens(text: str) -> list[str]:
    """The proto as dhcpd's lexer reads it: comments and whitespace gone, strings whole."""
    return [t for t in _TOKEN.findall(text) if t and not t[0].isspace() and t[0] != "#"]


def statements(text: str) -> list[tuple[str, ...]]:
    """Each simple statement's words (`deny unknown-clients` for `deny unknown-clients;`),
    wherever it stands: top level, or inside any subnet, pool, group or class block."""
    out: list[tuple[str, ...]] = []
    words: list[str] = []
    for token in tokens(text):
        if token == ";":
            out.append(tuple(w.lower() for w in words))
            words = []
        elif token in ("{", "}"):
            words = []  # a block's header or end: not a statement of its own
        else:
            words.append(token)
    return out


# Statements that keep unknown MACs from getting a lease from a range.
_DENIES_UNKNOWN = frozenset({
    ("deny", "unknown-clients"), ("ignore", "unknown-clients"),
    ("deny", "unknown", "clients"),  # the pool permit-list spelling
    ("boot-unknown-clients", "false"), ("boot-unknown-clients", "off"),
})


def warnings(proto: str) -> list[str]:
    if _DENIES_UNKNOWN.intersection(statements(proto)):
        return []
    return ["the proto has no 'deny unknown-clients;': if one of its subnets has a range, "
            "unknown MACs get leases; put 'deny unknown-clients;' in that subnet"]


BACKEND = Backend(Format.ISC, "/etc/dhcpd.proto", "/etc/dhcpd.conf", render, check, warnings)
