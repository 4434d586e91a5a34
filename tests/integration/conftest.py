"""Integration tier: after every test module, nothing of this process may be left running
and no namespace or interface named after it may remain, whether its tests passed or not."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkinitrd_ssi.run import run
from vm_tests.netns import PREFIX


def children() -> list[str]:
    """Live child processes of this test process: pid and command."""
    found = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue  # exited meanwhile
            found.append(f"{pid} {cmd.decode(errors='replace').strip()}")
    return found


def ours(listing: str) -> list[str]:
    mine = f"{PREFIX}{os.getpid()}"
    return [line for line in listing.splitlines() if mine in line]


@pytest.fixture(autouse=True, scope="module")
def nothing_left_behind() -> Iterator[None]:
    yield
    if os.geteuid() != 0:
        return
    netns = run(["ip", "netns", "list"], capture=True).stdout.decode()
    links = run(["ip", "-o", "link", "show"], capture=True).stdout.decode()
    assert ours(netns) == [], "namespaces left behind"
    assert ours(links) == [], "interfaces left behind"
    assert children() == [], "processes left running"
