"""Power cuts during the local boot partition's sync: every crash state, then random cuts.

`make powercut`. First the enumeration (vm_tests/crashstates.py): for ext4 and FAT
(extlinux) and an EFI System Partition (shim, GRUB), and for a partition synced
before, one never synced and one of the layout before the slots (extlinux) or one
whose shim and GRUB an update replaces (ESP), one sync is recorded write by write
under QEMU and every state a power cut can leave is judged as the bootloader reads
it (syslinux; the firmware, shim and GRUB on the ESP) and as Linux does: "N states,
K torn".

Then the random cuts. Each cut boots node 2 (local boot flag) under QEMU with a
stale boot partition and a shared root holding the real kernel and a 64 MiB ramdisk,
SIGKILLs QEMU at a random instant of the sync, checks the partition image from the
host (fsck, and that extlinux.conf names a complete, hash-verified old or new pair),
then boots it again and checks that it syncs or is unchanged and joins. See
vm_tests/powercut.py.

    sudo .venv/bin/python bench/bench_powercut.py                  # all states, 200 cuts
    sudo .venv/bin/python bench/bench_powercut.py --cuts 20 --seed 1234
    sudo .venv/bin/python bench/bench_powercut.py --cuts 0          # the states only
    sudo .venv/bin/python bench/bench_powercut.py --cuts 0 --fs esp # the ESP's states only
    sudo .venv/bin/python bench/bench_powercut.py --no-states      # the cuts only

Prints one line per cut (its delay after SYNC began, what fsck and the bootloader
config showed, the next boot's SSI_SYNC), the distribution, and "N cuts, K torn".
Exit status 1 when any cut left a torn partition (or a trial failed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vm_tests import crashstates, powercut
from vm_tests.kernel import kernel as cached_kernel

FILESYSTEMS = ("ext4", "vfat", "esp")
STARTS = ("synced", "first", "legacy")
# An ESP had no layout before the slots (never kept by an older ssi-boot), but holds
# loaders a package update replaces.
ESP_STARTS = ("synced", "first", "update")


def enumerate_all(work: Path, kernel: Path, ramdisk: Path, seed: int,
                  filesystems: tuple[str, ...] = FILESYSTEMS) -> int:
    """Every crash state of one sync per filesystem and start; the number of torn states."""
    torn = 0
    for fs in filesystems:
        for start in STARTS if fs != "esp" else ESP_STARTS:
            started = time.monotonic()
            rec = crashstates.record(fs, work / f"states-{fs}-{start}", kernel, ramdisk,
                                     start=start)
            found = crashstates.enumerate_states(
                fs, rec.base, rec.log, rec.offset, rec.size, rec.want,
                work / f"states-{fs}-{start}" / "states", seed=seed, subsets_per_epoch=64,
                exhaustive=6, torn=3,
                report=lambda v: print(v.line(), flush=True)
                if v.torn or v.loader.notes or v.linux.notes else None)
            counts = "; ".join(f"{k} " + ", ".join(f"{a}: {b}" for a, b in c.items())
                               for k, c in found.counts().items())
            print(f"{start:6s} {found.summary()} [{counts}] "
                  f"{time.monotonic() - started:.0f} s", flush=True)
            torn += len(found.torn)
    return torn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuts", type=int, default=200, help="number of cuts (default: 200)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random instants (default: from the clock, printed)")
    parser.add_argument("--workers", type=int, default=2,
                        help="trials at once; each runs one VM at a time (default: 2)")
    parser.add_argument("--initrd-mib", type=int, default=powercut.INITRD_MIB,
                        help="size of the shared root's ramdisk (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=None,
                        help="work directory, kept (default: a temporary one, removed unless a "
                        "cut tore or a trial failed)")
    parser.add_argument("--json", type=Path, default=None, help="write every cut here as JSON")
    parser.add_argument("--no-states", dest="states", action="store_false",
                        help="skip the enumeration of crash states")
    parser.add_argument("--fs", action="append", choices=FILESYSTEMS, default=None,
                        help="enumerate the states of this filesystem only (repeatable; "
                        "default: all)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: loop devices to check the disk images", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int(time.time())
    # `kill` as well as Ctrl-C: run_cuts then kills its VMs (QEMU has its own session).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = args.work or Path(tempfile.mkdtemp(prefix="ssi-powercut-"))
    started = time.monotonic()
    kernel, ramdisk = powercut.build_ramdisk(cached_kernel(), work)
    states_torn = enumerate_all(work, kernel, ramdisk, seed,
                                tuple(args.fs or FILESYSTEMS)) if args.states else 0
    if args.cuts == 0:
        print(f"{(time.monotonic() - started) / 60:.1f} min; seed {seed}")
        if not states_torn and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        return 1 if states_torn else 0
    setup = powercut.make_setup(work, kernel, ramdisk, initrd_mib=args.initrd_mib)
    window = powercut.calibrate(setup, work)
    print(f"seed {seed}; full sync of kernel + {args.initrd_mib} MiB ramdisk: {window:.2f} s "
          f"(host clock, SYNC start to its console line); each cut at a fraction in "
          f"[0, {powercut.STRETCH}) of the current sync time; {args.workers} trials at once",
          flush=True)
    cuts = powercut.run_cuts(setup, work, args.cuts, seed, window, workers=args.workers,
                             report=lambda c: print(c.line(), flush=True))
    elapsed = time.monotonic() - started
    for key, counts in powercut.summary(cuts).items():
        print(f"{key:12s} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    if args.json:
        args.json.write_text(json.dumps({"seed": seed, "window": window,
                                         "cuts": [vars(c) for c in cuts]}, indent=1))
    torn = sum(c.torn for c in cuts)
    failed = sum(bool(c.error) for c in cuts)
    print(f"{elapsed / 60:.1f} min; seed {seed}")
    if torn or failed or states_torn:
        print(f"console logs and the torn images are in {work}")
    elif args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print(f"{failed} trials could not run (see TRIAL FAILED above); they are not counted")
    print(f"{len(cuts) - failed} cuts, {torn} torn")
    return 1 if torn or failed or states_torn else 0


if __name__ == "__main__":
    sys.exit(main())
