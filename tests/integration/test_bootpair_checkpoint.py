"""fileops.checkpoint on a real ext4: the journal is written home and emptied.

A bootloader reads blocks where they live and replays no journal; the commit
protocol (docs/architecture.md, "The local boot partition: commit protocol")
relies on a checkpoint putting every journaled change there. Both ways are
tried on this host's kernel: EXT4_IOC_CHECKPOINT, and the FIFREEZE/FITHAW
fallback for kernels before 5.13. Root only (a loop device, mount).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from linuxrc_agent.bootpair import fileops
from mkinitrd_ssi.local.partition import attach, mounted, provision

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices"),
              pytest.mark.skipif(shutil.which("losetup") is None, reason="no losetup"),
              pytest.mark.usefixtures("no_loop_leaks")]


def journal_start(part: Path) -> int:
    """s_start of the journal as it lies on the disk: 0 when nothing is left to replay."""
    out = subprocess.run(["dumpe2fs", "-h", str(part)], capture_output=True, text=True,
                         check=True).stdout
    found = re.search(r"^Journal start:\s+(\d+)", out, re.M)
    assert found, out
    return int(found.group(1))


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    image = tmp_path / "disk.img"
    provision(image, size_mib=32)
    with attach(image) as (part, _how), mounted(part) as mnt:
        yield part, mnt


def dirty(mnt: Path, part: Path) -> None:
    with open(mnt / "new-file", "wb") as f:
        f.write(os.urandom(64 * 1024))
        os.fsync(f.fileno())  # durable in the journal, not yet at home
    assert journal_start(part) != 0


def test_checkpoint_empties_the_journal(ext4: tuple[Path, Path]) -> None:
    part, mnt = ext4
    dirty(mnt, part)
    assert fileops.checkpoint(mnt) == "checkpoint"  # EXT4_IOC_CHECKPOINT: Linux 5.13+
    assert journal_start(part) == 0


def test_freeze_and_thaw_empty_the_journal_too(ext4: tuple[Path, Path]) -> None:
    part, mnt = ext4
    dirty(mnt, part)
    fd = os.open(mnt, os.O_RDONLY)
    try:
        with fileops.frozen(fd):
            assert journal_start(part) == 0
    finally:
        os.close(fd)
    (mnt / "after-thaw").write_bytes(b"writable again")
