"""The local sync (bootpair) against the disk's own limits: unchanged check and sync of a pair.

The limits are measured in the same run, on the same filesystem, with dd:
write bandwidth (conv=fsync) and cold read bandwidth. The floors follow:

- unchanged check with a manifest: read the local pair once (the goal of issue 4)
- unchanged check without a manifest: read the shared pair and the local pair
- sync: write the pair (fsync'd) and read it back cold for verification

Caches are dropped per file (posix_fadvise DONTNEED, what the sync itself
uses) before every cold step; with --loop the loop device's backing file is
dropped too, so reads reach the disk under the image.

    .venv/bin/python bench/bench_disk_sync.py                       # a directory on /var/tmp
    .venv/bin/python bench/bench_disk_sync.py --dir /mnt/boot       # any mounted filesystem
    sudo .venv/bin/python bench/bench_disk_sync.py --loop           # a provisioned ext4 image
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from linuxrc_agent.bootpair.engine import sync_boot_dir
from linuxrc_agent.nodeenv import SyncStatus
from mkinitrd_ssi.local.partition import attach, mounted, provision, publish_manifest

MIB = 1 << 20
APPEND = "root=LABEL=ssiroot console=ttyS0,115200"


def drop_cache(*paths: Path) -> None:
    for top in paths:
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(fn: Callable[[], object], repeat: int, before: Callable[[], None]) -> float:
    runs = []
    for _ in range(repeat):
        before()
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def dd(argv: list[str]) -> None:
    subprocess.run(["dd", "status=none", *argv], check=True)


def run(boot: Path, src: Path, kernel_mib: int, initrd_mib: int, repeat: int,
        extra_drop: tuple[Path, ...]) -> None:
    total = kernel_mib + initrd_mib
    kernel, initrd = src / "boot/vmlinuz", src / "boot/initrd.img"
    kernel.parent.mkdir(parents=True, exist_ok=True)
    for path, mib in ((kernel, kernel_mib), (initrd, initrd_mib)):
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(MIB))

    def drop() -> None:
        drop_cache(boot, src, *extra_drop)

    probe = boot / "dd.bin"
    t_write = timed(lambda: dd(["if=/dev/zero", f"of={probe}", "bs=1M", f"count={total}",
                                "conv=fsync"]), repeat, drop)
    t_read = timed(lambda: dd([f"if={probe}", "of=/dev/null", "bs=1M"]), repeat, drop)
    probe.unlink()
    write_bw, read_bw = total / t_write, total / t_read

    def clear_boot() -> None:
        shutil.rmtree(boot / "ssi", ignore_errors=True)
        (boot / "extlinux.conf").unlink(missing_ok=True)
        os.sync()
        drop()

    def sync(expect: SyncStatus) -> Callable[[], None]:
        def go() -> None:
            result = sync_boot_dir(boot, kernel, initrd, APPEND, retry_delay=0)
            assert result.status is expect, result
        return go

    # Source cached, as when the shared root's pair was just read over the
    # network: the figure is the local disk's work.
    def stale() -> None:
        clear_boot()
        for p in (kernel, initrd):
            p.read_bytes()

    t_sync = timed(sync(SyncStatus.UPDATED), repeat, stale)
    t_unchanged_plain = timed(sync(SyncStatus.UNCHANGED), repeat, drop)
    publish_manifest(kernel, initrd)
    t_unchanged_manifest = timed(sync(SyncStatus.UNCHANGED), repeat, drop)

    floor_sync = total / write_bw + total / read_bw
    floor_manifest = total / read_bw
    floor_plain = 2 * total / read_bw
    print(f"filesystem: {boot} ({_fs_of(boot)}); pair {kernel_mib} + {initrd_mib} MiB; "
          f"median of {repeat}")
    print(f"  dd write, conv=fsync      {t_write:7.3f} s  {write_bw:8.1f} MiB/s")
    print(f"  dd read, cold             {t_read:7.3f} s  {read_bw:8.1f} MiB/s")
    rows = [
        ("sync (write, fsync, verify)", t_sync, floor_sync, "write + read back at dd speed"),
        ("unchanged, with manifest", t_unchanged_manifest, floor_manifest,
         "read the local pair once"),
        ("unchanged, no manifest", t_unchanged_plain, floor_plain,
         "read shared and local pairs"),
    ]
    print(f"  {'step':27} {'time':>9} {'floor':>9} {'ratio':>6}  floor is")
    for name, t, floor, what in rows:
        print(f"  {name:27} {t:7.3f} s {floor:7.3f} s {t / floor:6.2f}  {what}")


def _fs_of(path: Path) -> str:
    out = subprocess.run(["df", "--output=fstype,source", str(path)], capture_output=True,
                         text=True).stdout.split("\n")[1].split()
    return " on ".join(out) if out else "?"


@contextlib.contextmanager
def loop_partition(work: Path, size_mib: int) -> Iterator[tuple[Path, Path]]:
    image = work / "disk.img"
    provision(image, size_mib=size_mib)
    with attach(image) as (part, _how), mounted(part) as mnt:
        yield mnt, image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="a directory on the filesystem to measure "
                        "(default: a temporary one in /var/tmp)")
    parser.add_argument("--loop", action="store_true",
                        help="root: measure a provisioned ext4 partition in an image instead")
    parser.add_argument("--kernel-mib", type=int, default=10)
    parser.add_argument("--initrd-mib", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="bench-disk-sync-") as tmp:
        work = Path(tmp)
        src = work / "shared"
        if args.loop:
            size = 3 * (args.kernel_mib + args.initrd_mib) + 64
            with loop_partition(work, size) as (mnt, image):
                run(mnt, src, args.kernel_mib, args.initrd_mib, args.repeat, (image,))
        else:
            # A fresh subdirectory even under --dir: the bench deletes what it syncs.
            with tempfile.TemporaryDirectory(dir=args.dir or work, prefix="boot-") as boot:
                run(Path(boot), src, args.kernel_mib, args.initrd_mib, args.repeat, ())
    return 0


if __name__ == "__main__":
    sys.exit(main())
