"""The agent's own rtnetlink code against the real kernel, in a throwaway namespace."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")]

SCRIPT = """
from linuxrc_agent import netlink
netlink.link_up("v0")
netlink.add_address("v0", "10.99.0.5", 24)
netlink.add_address("v0", "10.99.0.5", 24)  # again: idempotent
try:
    netlink.link_up("nosuch0")
except OSError as e:
    print("missing:", e)
"""


def test_link_up_and_address_in_namespace() -> None:
    ns = f"ssit-nl{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name",
                        "v1"], check=True)
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT],
                             check=True, capture_output=True, text=True).stdout
        assert "missing:" in out
        shown = subprocess.run(["ip", "-n", ns, "-o", "-4", "addr", "show", "v0"],
                               check=True, capture_output=True, text=True).stdout
        assert "10.99.0.5/24 brd 10.99.0.255" in shown
        flags = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "v0"],
                               check=True, capture_output=True, text=True).stdout
        assert ",UP" in flags
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
