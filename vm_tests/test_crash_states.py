"""Every crash state of a sync, as the bootloader and as Linux read it: a sample per run.

Node 2 syncs its ext4, its FAT boot partition, then an EFI System Partition to a
new pair while QEMU's blklogwrites records every write and flush
(vm_tests/crashstates.py); the disk is rebuilt after every write, with writes
torn at sector boundaries and dropped within flush epochs, and each state must
boot the old pair or the new one, read without journal replay (as extlinux, or
the firmware, shim and GRUB read it) and with it (as Linux does). `make
powercut` judges every state, for these and for a partition's first sync and
one of the older layout; here a seeded sample keeps `make test` short.
SSI_CRASH_STATES (default 40) per filesystem, SSI_CRASH_SEED (default: the
clock) choose it; the seed is printed.

The ESP's recording syncs real pairs (the test kernel with the test ramdisk,
then with that ramdisk padded by a cpio member to the next MiB), so that its
states boot: the two on either side of the commit (the last the GRUB view reads
as the old pair, the first it reads as the new) are booted at once under OVMF
from the disk alone, and GRUB must boot the entry the view predicted and the
node join. The same recording serves the sample.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vm_tests import cluster, crashstates
from vm_tests.kernel import Kernel
from vm_tests.powercut import big_initrd
from vm_tests.qemu import OVMF_DIR, Disk, Nic, Uefi, Vm, VmConfig

SAMPLE = int(os.environ.get("SSI_CRASH_STATES", "40"))
SEED = int(os.environ.get("SSI_CRASH_SEED", "0")) or int(time.time())
BOOT_TIMEOUT = 600  # OVMF under TCG, two machines on two shared cores

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices")


@pytest.fixture(scope="module")
def esp_recording(kernel: Kernel, ramdisk: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> crashstates.Recording:
    """One ESP sync from (kernel, ramdisk) to (kernel, the ramdisk padded to the next MiB)."""
    if not all(Path(src).is_file() for _t, src, required in crashstates.ESP_LOADERS
               if required):
        pytest.skip("shim-signed or grub-efi-amd64-signed not installed (make deps)")
    work = tmp_path_factory.mktemp("esp")
    longer = big_initrd(ramdisk, work / "initrd-longer.img",
                        (ramdisk.stat().st_size >> 20) + 1)
    return crashstates.record("esp", work, kernel.vmlinuz, ramdisk, start="synced",
                              pairs=((kernel.vmlinuz, ramdisk), (kernel.vmlinuz, longer)))


@pytest.mark.parametrize("fs", ["ext4", "vfat", "esp"])
def test_every_crash_state_of_a_sync_boots_the_old_or_the_new_pair(
        kernel: Kernel, ramdisk: Path, tmp_path: Path, fs: str,
        request: pytest.FixtureRequest) -> None:
    if fs == "esp":
        rec: crashstates.Recording = request.getfixturevalue("esp_recording")
    else:
        rec = crashstates.record(fs, tmp_path, kernel.vmlinuz, ramdisk, start="synced")
    found = crashstates.enumerate_states(fs, rec.base, rec.log, rec.offset, rec.size, rec.want,
                                         tmp_path / "states", seed=SEED, limit=SAMPLE)
    print(f"\nseed {SEED}: {found.summary()}; {found.counts()}")
    assert len(found.verdicts) == SAMPLE
    assert not found.torn, f"seed {SEED}:\n" + "\n".join(v.line() for v in found.torn)
    views = found.counts()["bootloader"]
    # The sample reaches both sides of the commit, or it proves little.
    assert views.get("old", 0) and views.get("new", 0), views


@pytest.mark.skipif(not (OVMF_DIR / "OVMF_CODE_4M.fd").is_file(),
                    reason="ovmf not installed (make deps)")
def test_esp_disks_cut_either_side_of_the_commit_boot_under_ovmf_as_judged(
        esp_recording: crashstates.Recording, root_images: dict[str, Path],
        tmp_path: Path) -> None:
    rec = esp_recording
    before, after = crashstates.around_commit("esp", rec.base, rec.log, rec.offset, rec.size,
                                              rec.want, tmp_path / "cut")
    cuts = {"old": before, "new": after}
    for pair, (state, view, _image) in cuts.items():
        assert (view.pair, view.problems) == (pair, []), (state.name, view)
    assert before[1].entry != after[1].entry  # the commit switched the slot

    def machine(pair: str, image: Path) -> Vm:
        # From the disk alone: OVMF starts the ESP (vdb) first, no -kernel, no network
        # boot; the shared root (vda) is the one the node mounts.
        root = Disk(root_images["plain"], extra=",snapshot=on", bootindex=2)
        config = VmConfig(disks=[root, Disk(image, bootindex=1)], nics=[Nic(cluster.MAC_N2)],
                          uefi=Uefi.fresh(tmp_path / f"{pair}-vars.fd"))
        return Vm(config, tmp_path / f"{pair}.log")

    started = time.monotonic()
    vms = {pair: machine(pair, image) for pair, (_s, _v, image) in cuts.items()}
    try:
        envs = {pair: vm.node_env(BOOT_TIMEOUT) for pair, vm in vms.items()}
        consoles = {pair: vm.output() for pair, vm in vms.items()}
    finally:
        for vm in vms.values():
            vm.kill()
    print(f"\n{before[0].name} (log #{before[0].last_seq}): {before[1].entry}, "
          f"{after[0].name} (log #{after[0].last_seq}): {after[1].entry}; both joined "
          f"{time.monotonic() - started:.0f} s after power-on")
    for pair, (state, view, _image) in cuts.items():
        console = consoles[pair]
        assert envs[pair]["SSI_NODE"] == "2", envs[pair]
        assert "Start PXE" not in console, console[:3000]
        booting = [line for line in console.splitlines() if "Booting `" in line]
        assert booting and f"Booting `{view.entry}'" in booting[0], (state.name, booting)
