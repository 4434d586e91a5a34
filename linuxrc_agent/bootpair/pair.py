"""What a local boot partition holds: a kernel + ramdisk pair, and the bootloader config naming it.

The records are NamedTuples, not dataclasses: PID 1 imports this module, and
a NamedTuple class costs about half as much to create.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol

SSI_DIR = "ssi"
ROLES = ("kernel", "initrd")
_PREFIX = {"kernel": "vmlinuz-", "initrd": "initrd-"}


class FileId(NamedTuple):
    size: int
    xxh3_128: str  # 32 lower-case hex digits


class PairMember(NamedTuple):
    name: str  # path relative to boot_dir, always ssi/<prefix><hash>
    ident: FileId


class LocalPair(NamedTuple):
    kernel: PairMember
    initrd: PairMember
    append: str

    def member(self, role: str) -> PairMember:
        return self.kernel if role == "kernel" else self.initrd


def member_name(role: str, digest: str) -> str:
    return f"{SSI_DIR}/{_PREFIX[role]}{digest}"


def is_digest(s: str) -> bool:
    return len(s) == 32 and all(c in "0123456789abcdef" for c in s)


class Bootloader(Protocol):
    """What the commit engine needs of a bootloader: where its config lives, and its text.

    `parse` returns None for any config it did not write byte for byte, so an
    edited or foreign config is replaced, never trusted.
    """

    name: str

    def config_path(self, boot_dir: Path) -> Path: ...

    def render(self, pair: LocalPair) -> bytes: ...

    def parse(self, data: bytes) -> LocalPair | None: ...
