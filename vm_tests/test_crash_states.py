"""Every crash state of a sync, as the bootloader and as Linux read it: a sample per run.

Node 2 syncs its ext4, then its FAT boot partition to a new pair while QEMU's
blklogwrites records every write and flush (vm_tests/crashstates.py); the disk is
rebuilt after every write, with writes torn at sector boundaries and dropped
within flush epochs, and each state must boot the old pair or the new one, read
without journal replay (as extlinux, GRUB, firmware read it) and with it (as
Linux does). `make powercut` judges every state, for these and for a partition's
first sync and one of the older layout; here a seeded sample keeps `make test`
short. SSI_CRASH_STATES (default 40) per filesystem, SSI_CRASH_SEED (default:
the clock) choose it; the seed is printed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vm_tests import crashstates
from vm_tests.kernel import Kernel

SAMPLE = int(os.environ.get("SSI_CRASH_STATES", "40"))
SEED = int(os.environ.get("SSI_CRASH_SEED", "0")) or int(time.time())

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices")


@pytest.mark.parametrize("fs", ["ext4", "vfat"])
def test_every_crash_state_of_a_sync_boots_the_old_or_the_new_pair(
        kernel: Kernel, ramdisk: Path, tmp_path: Path, fs: str) -> None:
    rec = crashstates.record(fs, tmp_path, kernel.vmlinuz, ramdisk, start="synced")
    found = crashstates.enumerate_states(fs, rec.base, rec.log, rec.offset, rec.size, rec.want,
                                         tmp_path / "states", seed=SEED, limit=SAMPLE)
    print(f"\nseed {SEED}: {found.summary()}; {found.counts()}")
    assert len(found.verdicts) == SAMPLE
    assert not found.torn, f"seed {SEED}:\n" + "\n".join(v.line() for v in found.torn)
    views = found.counts()["bootloader"]
    # The sample reaches both sides of the commit, or it proves little.
    assert views.get("old", 0) and views.get("new", 0), views
