"""The crash-state checker (vm_tests/crashstates.py) catches a protocol that commits wrong.

On a real ext4 image (mkfs.ext4 -d with 1 KiB blocks: no root, no VM), a commit
goes through QEMU's blklogwrites driver (qemu-io), so that the log has the format
the VM tests record; then every state it can leave is judged as the bootloader
reads it (debugfs -c, no journal replay) and as Linux does (e2fsck first).
A one-sector commit of a pair already on the disk passes; a commit naming files
never written, or a commit spread over two sectors, is caught.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
import xxhash

from vm_tests import crashstates
from vm_tests.crashstates import Expected

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mkfs.ext4", "debugfs", "e2fsck", "qemu-io")),
    reason="needs e2fsprogs and qemu-utils (make deps)")

FILES = {name: random.Random(i).randbytes(30_000 + i) for i, name in
         enumerate(("k1", "i1", "k2", "i2"))}
APPEND = "root=LABEL=x"


def config(kernel: str, initrd: str, split: bool = False) -> bytes:
    """One 1 KiB block; split: the INITRD line in its second sector."""
    first = f"DEFAULT ssi\nLABEL ssi\n  LINUX /{kernel}\n"
    rest = f"  INITRD /{initrd}\n  APPEND {APPEND}\n"
    if not split:
        first, rest = first + rest, ""
    sector = first.encode() + b"#" * (511 - len(first)) + b"\n"
    return sector + rest.encode() + b"#" * (511 - len(rest)) + b"\n"


def want() -> Expected:
    h = {n: xxhash.xxh3_128_hexdigest(d) for n, d in FILES.items()}
    return Expected((h["k1"], h["i1"]), (h["k2"], h["i2"]), APPEND, APPEND)


def image(tmp: Path, names: tuple[str, ...], split: bool) -> Path:
    tree = tmp / "tree"
    tree.mkdir()
    for name in names:
        (tree / name).write_bytes(FILES[name])
    (tree / "extlinux.conf").write_bytes(config("k1", "i1", split))
    out = tmp / "base.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", "-d", str(tree), str(out), "8M"],
                   check=True, capture_output=True)
    return out


def commit(tmp: Path, base: Path, data: bytes) -> Path:
    """Overwrite the config's first block in place, through blklogwrites; the log."""
    out = subprocess.run(["debugfs", "-R", "bmap /extlinux.conf 0", str(base)],
                         check=True, capture_output=True, text=True).stdout
    offset = int(out.split()[-1]) * 1024
    disk, log, src = tmp / "disk.img", tmp / "writes.log", tmp / "commit.bin"
    shutil.copyfile(base, disk)
    log.write_bytes(b"")
    src.write_bytes(data)
    spec = (f"driver=blklogwrites,file.driver=file,file.filename={disk},log.driver=file,"
            f"log.filename={log},log-sector-size=512,log-append=off")
    subprocess.run(["qemu-io", "--image-opts", spec, "-c", f"write -s {src} {offset} {len(data)}",
                    "-c", "flush"], check=True, capture_output=True)
    return log


def run(tmp: Path, names: tuple[str, ...], new_config: bytes, split: bool = False,
        ) -> crashstates.Enumeration:
    base = image(tmp, names, split)
    log = commit(tmp, base, new_config)
    return crashstates.enumerate_states("ext4", base, log, 0, base.stat().st_size, want(),
                                        tmp / "work", seed=5)


def test_a_one_sector_commit_of_a_pair_on_the_disk_passes(tmp_path: Path) -> None:
    found = run(tmp_path, ("k1", "i1", "k2", "i2"), config("k2", "i2")[:512])
    assert [v.loader.pair for v in found.verdicts] == ["old", "new"]
    assert found.torn == [], [v.line() for v in found.torn]


def test_a_commit_naming_files_never_written_is_caught(tmp_path: Path) -> None:
    found = run(tmp_path, ("k1", "i1"), config("k2", "i2")[:512])
    torn = [v.line() for v in found.torn]
    assert len(torn) == 1 and "/k2: missing" in torn[0], torn


def test_a_commit_over_two_sectors_is_caught(tmp_path: Path) -> None:
    found = run(tmp_path, ("k1", "i1", "k2", "i2"), config("k2", "i2", split=True), split=True)
    torn = [v for v in found.torn if v.state.name.startswith("torn")]
    assert torn and all("new kernel + old initrd" in v.line() or "old kernel + new initrd"
                        in v.line() for v in torn), [v.line() for v in found.verdicts]
    assert [v.loader.pair for v in found.verdicts if not v.torn] == ["old", "new"]


def test_the_log_reader_and_the_states() -> None:
    w = [crashstates.Entry(i, 8 * i, b"x" * 1024, 0) for i in (1, 2, 4)]
    flush = crashstates.Entry(3, 0, b"", crashstates.LOG_FLUSH)
    states = crashstates.states([w[0], w[1], flush, w[2]], seed=1)
    names = [s.name for s in states]
    # Every prefix, each write torn once, and the epoch of two writes' proper subsets.
    assert names == ["prefix 0", "torn 1", "prefix 1", "torn 2", "prefix 2", "epoch 0 subset 0",
                     "epoch 0 subset 1", "torn 3", "prefix 3"]
    assert [e.seq for e in states[5].writes] == [1] and [e.seq for e in states[6].writes] == [2]
    assert all(len(s.torn or ()) == 1 for s in states if s.name.startswith("torn"))
