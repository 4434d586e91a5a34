"""DHCP backends: each turns the node table into one server's configuration.

A backend is a module-level Backend value: default paths, a pure render
function (proto text + table -> config text) and the argv of the server's own
checker. Rendering is pure so property tests can run it without servers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from linuxrc_agent.ssitab import Ssitab


class Format(enum.Enum):
    ISC = "isc"
    KEA = "kea"
    DNSMASQ = "dnsmasq"


@dataclass(frozen=True)
class BootFiles:
    """What firmware is told to fetch: PXE ROMs get pxe_file, iPXE gets its script directly."""

    pxe_file: str = "pxelinux.0"
    ipxe_script: str = "ssi.ipxe"
    next_server: str | None = None


@dataclass(frozen=True)
class Backend:
    format: Format
    proto: str  # default path of the hand-written part
    output: str  # default path of the generated configuration
    render: Callable[[str, Ssitab, BootFiles], str]
    check: Callable[[str], list[str]]  # argv that validates a config file
    warnings: Callable[[str], list[str]]  # what the proto lacks for a safe setup


def backend(fmt: Format) -> Backend:
    # Imported here so that loading one backend does not load the others.
    if fmt is Format.ISC:
        from mkinitrd_ssi.dhcp.isc import BACKEND
    elif fmt is Format.KEA:
        from mkinitrd_ssi.dhcp.kea import BACKEND
    else:
        from mkinitrd_ssi.dhcp.dnsmasq import BACKEND
    return BACKEND


def host_label(number: int, index: int) -> str:
    """Identifier of a node's NIC in generated configs: ours, never from user text."""
    return f"ssi-node{number}" if index == 0 else f"ssi-node{number}-{index}"
