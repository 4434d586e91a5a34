"""A loader update on an ESP (bootpair.esp.install_loaders) keeps the replaced loader's
blocks until the new one's directory entry is at home.

On FAT a rename frees the replaced file's clusters at once while the directory
entry keeps naming them until writeback (the checkpoint) writes the new file's
in: the crash-state enumeration (vm_tests/crashstates.py, start="update") found
113 of 305 states of an update with grubx64.efi or BOOTX64.EFI pointing into
freed clusters. The old file is therefore held open, which keeps its clusters,
until a checkpoint after the rename. Checked here on a plain directory: at each
checkpoint after a rename, the replaced loader is still open (a file of no links
whose bytes are the old loader's).
"""

from __future__ import annotations

import os
from pathlib import Path

from linuxrc_agent.bootpair import esp
from linuxrc_agent.bootpair.fileops import FsOps

SOURCES = {"EFI/BOOT/grubx64.efi": "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
           "EFI/BOOT/BOOTX64.EFI": "usr/lib/shim/shimx64.efi.signed"}


class Watch(FsOps):
    """Records renames and, at each checkpoint, which of the loaders found in part at the
    start this process holds open once they have no name."""

    def __init__(self, part: Path) -> None:
        self.trace: list[tuple[str, object]] = []
        self.old = {(st.st_dev, st.st_ino) for target in SOURCES
                    if (st := _stat(part / target)) is not None}

    def rename(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        self.trace.append(("rename", Path(dst).name))
        super().rename(src, dst)

    def checkpoint(self, path: Path) -> str:
        held = []
        for name in os.listdir("/proc/self/fd"):
            try:
                st = os.fstat(int(name))
            except OSError:
                continue
            if st.st_nlink == 0 and (st.st_dev, st.st_ino) in self.old:
                held.append(os.pread(int(name), 64, 0))
        self.trace.append(("checkpoint", sorted(held)))
        return "test"


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def loaders(root: Path, version: str) -> None:
    for target, src in SOURCES.items():
        (root / src).parent.mkdir(parents=True, exist_ok=True)
        (root / src).write_bytes(f"{Path(target).name} {version}".encode())


def test_a_replaced_loader_is_held_until_the_new_entry_is_checkpointed(tmp_path: Path) -> None:
    root, part = tmp_path / "root", tmp_path / "esp"
    (part / "EFI/BOOT").mkdir(parents=True)
    loaders(root, "1")
    first = Watch(part)
    assert esp.install_loaders(part, root, first, lambda: None) == list(SOURCES)  # GRUB, shim
    # A first install replaces nothing: no file to hold, each rename checkpointed.
    assert first.trace == [("rename", "grubx64.efi"), ("checkpoint", []),
                           ("rename", "BOOTX64.EFI"), ("checkpoint", [])]
    loaders(root, "2")
    update = Watch(part)
    assert esp.install_loaders(part, root, update, lambda: None) == list(SOURCES)
    assert update.trace == [("rename", "grubx64.efi"), ("checkpoint", [b"grubx64.efi 1"]),
                            ("rename", "BOOTX64.EFI"), ("checkpoint", [b"BOOTX64.EFI 1"])]
    for target in SOURCES:
        assert (part / target).read_bytes() == f"{Path(target).name} 2".encode()
