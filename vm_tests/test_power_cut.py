"""Power cuts at random instants of a local boot partition's sync (QEMU SIGKILL, TCG).

Node 2 boots with a stale boot partition against a shared root holding the real
kernel and a 64 MiB ramdisk; QEMU is killed at a random instant after the SYNC
stage begins. After every cut the host checks the disk image twice: as extlinux
reads it (no journal replay) and as Linux does (fsck clean, or clean once the
journal is replayed); each must name a complete, hash-verified old or new pair.
Then it boots the disk again, half of the time through SeaBIOS and extlinux
(which loads whichever pair the cut left): it syncs or is unchanged, and joins.
Each cut is told as during the copy, the commit or after it. See
vm_tests/powercut.py for the trial itself; `make powercut` runs 200, after
enumerating every crash state (vm_tests/crashstates.py).

SSI_POWERCUT_CUTS (default 16) and SSI_POWERCUT_SEED (default: the clock) set
the number of cuts and the seed; every instant and the seed are printed (pytest -s)
and written to powercut.json in the test's directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from linuxrc_agent.bootpair.extlinux import EXTLINUX
from linuxrc_agent.bootpair.pair import FileId, LocalPair, PairMember, member_name
from mkinitrd_ssi.local.partition import attach, mounted
from mkinitrd_ssi.run import run
from vm_tests import powercut
from vm_tests.kernel import Kernel

CUTS = int(os.environ.get("SSI_POWERCUT_CUTS", "16"))
SEED = int(os.environ.get("SSI_POWERCUT_SEED", "0")) or int(time.time())

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, kernel: Kernel,
          ramdisk: Path) -> powercut.Setup:
    return powercut.make_setup(tmp_path_factory.mktemp("powercut"), kernel.vmlinuz, ramdisk)


def test_power_cuts_during_sync_leave_old_or_new_pair_and_the_node_joins(
        setup: powercut.Setup, tmp_path: Path) -> None:
    window = powercut.calibrate(setup, tmp_path)
    print(f"\nseed {SEED}; full sync {window:.2f} s; each cut at a fraction in "
          f"[0, {powercut.STRETCH}) of the current sync time")
    cuts = powercut.run_cuts(setup, tmp_path, CUTS, SEED, window,
                             report=lambda c: print(c.line(), flush=True))
    counts = powercut.summary(cuts)
    print(json.dumps(counts))
    (tmp_path / "powercut.json").write_text(json.dumps(
        {"seed": SEED, "window": window, "cuts": [vars(c) for c in cuts]}, indent=1))
    torn = [c.line() for c in cuts if c.torn]
    failed = [c.line() for c in cuts if c.error]
    assert len(cuts) == CUTS
    assert not failed, f"seed {SEED}: {len(failed)} trials did not run:\n" + "\n".join(failed)
    assert not torn, f"seed {SEED}: {len(torn)} of {CUTS} cuts torn:\n" + "\n".join(torn)
    # Most instants must fall inside the sync, or the test proves little.
    assert counts["window"]["during sync"] >= CUTS // 3, (SEED, counts)
    # And some cut disks were booted by the real bootloader.
    assert CUTS < 4 or counts["loader_boot"].get("-kernel", 0) < CUTS, (SEED, counts)


# --- the checks themselves: a torn partition must be caught ---------------------------------


def _tear(mnt: Path, how: str, setup: powercut.Setup) -> None:
    config = EXTLINUX.config_path(mnt)
    pair = EXTLINUX.parse(config.read_bytes())
    assert pair is not None
    if how == "truncated-initrd":
        with open(mnt / pair.initrd.name, "r+b") as f:
            f.truncate(pair.initrd.ident.size // 2)
    elif how == "flipped-kernel-bytes":
        with open(mnt / pair.kernel.name, "r+b") as f:
            f.seek(pair.kernel.ident.size // 2)
            f.write(b"\xff" * 4096)
    elif how == "new-kernel-old-initrd":
        new = setup.kernel.read_bytes()
        member = PairMember(member_name("kernel", setup.new.kernel),
                            FileId(len(new), setup.new.kernel))
        (mnt / member.name).write_bytes(new)
        config.write_bytes(EXTLINUX.render(LocalPair(member, pair.initrd, pair.append)))
    elif how == "half-written-config":
        data = config.read_bytes()
        config.write_bytes(data[:len(data) // 2])
    elif how == "missing-kernel":
        (mnt / pair.kernel.name).unlink()


@pytest.mark.parametrize("how", ["truncated-initrd", "flipped-kernel-bytes",
                                 "new-kernel-old-initrd", "half-written-config",
                                 "missing-kernel"])
def test_the_checks_catch_a_torn_pair(setup: powercut.Setup, tmp_path: Path, how: str) -> None:
    disk = powercut.copy_image(setup.stale_disk, tmp_path / "torn.img")
    found = powercut.inspect(disk, setup, tmp_path / "check.img")
    assert (found.fsck, found.linux.pair, found.linux.problems) == ("clean", "old", [])
    with attach(disk) as (part, _), mounted(part) as mnt:
        _tear(mnt, how, setup)
    found = powercut.inspect(disk, setup, tmp_path / "check.img")
    assert found.problems and found.linux.phase == "torn", found


def test_the_checks_catch_a_broken_filesystem(setup: powercut.Setup, tmp_path: Path) -> None:
    disk = powercut.copy_image(setup.stale_disk, tmp_path / "broken.img")
    with attach(disk) as (part, _):
        # The config's inode cleared under its directory entry: fsck must object.
        run(["debugfs", "-w", "-R", "clri /extlinux.conf", str(part)], capture=True)
    found = powercut.inspect(disk, setup, tmp_path / "check.img")
    assert found.fsck == "broken" and found.problems, found
