"""Integration tier: what a test module starts, it stops, whether its tests pass or fail.

After each module (its fixtures torn down) no process it started may still
run, and no namespace or interface named after this process that it created
may remain. Things that already existed when the module began are not its
doing and are left out (a session-scoped fixture that keeps a server is fine
as long as a module before this one started it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkinitrd_ssi.run import run
from vm_tests.netns import PREFIX


def children() -> set[str]:
    """Live child processes of this test process: 'pid command'."""
    found = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue  # exited meanwhile
            found.add(f"{pid} {cmd.decode(errors='replace').strip()}")
    return found


def named_after_us() -> set[str]:
    mine = f"{PREFIX}{os.getpid()}"
    listing = (run(["ip", "netns", "list"], capture=True).stdout
               + run(["ip", "-o", "link", "show"], capture=True).stdout).decode()
    return {word.split("@")[0] for line in listing.splitlines() for word in line.split()
            if word.startswith(mine)}


@pytest.fixture(autouse=True, scope="module")
def nothing_left_behind() -> Iterator[None]:
    if os.geteuid() != 0:
        yield
        return
    before_names, before_children = named_after_us(), children()
    yield
    assert named_after_us() - before_names == set(), "namespaces or interfaces left behind"
    assert children() - before_children == set(), "processes left running"


@pytest.fixture
def no_loop_leaks(tmp_path: Path) -> Iterator[None]:
    """After the test, no loop device may still hold a file under its tmp_path."""
    yield
    # Only our images: other users of this machine may hold loop devices.
    mine = [line for line in run(["losetup", "-a"], capture=True).stdout.decode().splitlines()
            if str(tmp_path) in line]
    assert not mine, "loop devices left attached:\n" + "\n".join(mine)
