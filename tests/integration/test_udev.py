"""bootdev through udev's database: a real systemd-udevd, started for this module and
stopped after it (even when a test fails), answering pyudev about loop devices.

Root only. Where udev already runs it is used as it is and left running. This
machine has no udevd of its own: blockdev.find takes the agent's probe there
(tests/unit/test_blockdev.py); here the same query goes through udev.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linuxrc_agent.ssitab import BootDev, parse_bootdev
from mkinitrd_ssi.local import blockdev
from mkinitrd_ssi.local.partition import attach

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for udevd and loops"),
              pytest.mark.usefixtures("no_loop_leaks")]

UDEVD = next((p for p in ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd")
              if os.access(p, os.X_OK)), None)
MiB = 1 << 20


@pytest.fixture(scope="module")
def udevd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if UDEVD is None:
        pytest.skip("systemd-udevd not installed (make deps installs udev)")
    if blockdev.udev_unavailable() is None:
        yield  # someone's udev: use it, leave it alone
        return
    # What udevd leaves behind (its socket, database, /dev/disk links) goes with it,
    # unless it was there before.
    leftovers = [p for p in (Path("/run/udev"), Path("/dev/disk")) if not p.exists()]
    log = tmp_path_factory.mktemp("udevd") / "udevd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([UDEVD], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while "control" in (blockdev.udev_unavailable() or "control"):
            assert proc.poll() is None, f"udevd exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"udevd did not listen: {log.read_text()}"
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)


def settle(*devices: Path) -> None:
    # Only our devices: other users' loop devices are none of this test's business.
    subprocess.run(["udevadm", "trigger", "--action=change", *map(str, devices)], check=True)
    subprocess.run(["udevadm", "settle", "--timeout=30"], check=True)


def spec(text: str) -> BootDev:
    parsed = parse_bootdev(text)
    assert parsed is not None
    return parsed


def image(path: Path, mib: int, *mkfs: str) -> Path:
    with open(path, "wb") as f:
        f.truncate(mib * MiB)
    if mkfs:
        subprocess.run([*mkfs, str(path)], check=True, capture_output=True)
    return path


@pytest.fixture
def losetup() -> Iterator[list[Path]]:
    loops: list[Path] = []
    yield loops
    for loop in loops:
        subprocess.run(["losetup", "--detach", str(loop)], check=False)


def attach_whole(path: Path, loops: list[Path]) -> Path:
    loop = Path(subprocess.run(["losetup", "--find", "--show", str(path)], check=True,
                               capture_output=True, text=True).stdout.strip())
    loops.append(loop)
    return loop


def test_udev_database_answers_label_uuid_and_partuuid(
        udevd: None, tmp_path: Path, losetup: list[Path],
        ssi_log: pytest.LogCaptureFixture) -> None:
    pid = os.getpid()
    # '/' is what udev spells '_' in ID_FS_LABEL and \x2f in ID_FS_LABEL_ENC.
    label = f"u/{pid}"
    uuid = f"0b9a4b1e-1111-4222-8333-{pid:012d}"
    ext4 = attach_whole(image(tmp_path / "ext4.img", 16, "mkfs.ext4", "-q", "-L", label,
                              "-U", uuid), losetup)
    fat = attach_whole(image(tmp_path / "fat.img", 16, "mkfs.vfat", "-n", f"SU{pid}"), losetup)
    disk = image(tmp_path / "disk.img", 32)
    subprocess.run(["sfdisk", "-q", str(disk)], input=b"label: dos\ntype=83\n", check=True)
    with attach(disk) as (part, how):
        assert how in ("partscan", "partx"), how
        settle(ext4, fat, part)
        assert blockdev.udev_unavailable() is None
        partuuid = subprocess.run(["udevadm", "info", "--query=property", "--property",
                                   "ID_PART_ENTRY_UUID", "--value", str(part)], check=True,
                                  capture_output=True, text=True).stdout.strip()
        assert partuuid.endswith("-01"), partuuid

        for text, want in ((f"LABEL={label}", ext4), (f"UUID={uuid.upper()}", ext4),
                           (f"LABEL=su{pid}", fat),  # FAT: any case, as the agent matches
                           (f"PARTUUID={partuuid}", part)):
            ssi_log.clear()
            assert blockdev.find(spec(text)) == want, text
            assert "found through udev's database (pyudev)" in ssi_log.text, ssi_log.text
            assert "probing" not in ssi_log.text
        assert blockdev.find(spec(f"LABEL=u_{pid}")) is None  # udev's spelling is not the label
