"""What a local boot partition holds: a kernel + ramdisk pair, and the bootloader config naming it.

The records are NamedTuples, not dataclasses: PID 1 imports this module, and
a NamedTuple class costs about half as much to create.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol

SSI_DIR = "ssi"
# The two slot directories, ssi/a and ssi/b: a sync writes the new pair into the
# one the config does not boot (docs/architecture.md, "The local boot partition:
# commit protocol").
SLOTS = ("a", "b")
ROLES = ("kernel", "initrd")
_PREFIX = {"kernel": "vmlinuz-", "initrd": "initrd-"}


class FileId(NamedTuple):
    size: int
    xxh3_128: str  # 32 lower-case hex digits


class PairMember(NamedTuple):
    name: str  # path relative to boot_dir, always ssi/<slot>/<prefix><hash>
    ident: FileId


class LocalPair(NamedTuple):
    kernel: PairMember
    initrd: PairMember
    append: str

    def member(self, role: str) -> PairMember:
        return self.kernel if role == "kernel" else self.initrd


def member_name(role: str, digest: str, slot: str = SLOTS[0]) -> str:
    return f"{SSI_DIR}/{slot}/{_PREFIX[role]}{digest}"


def other(slot: str) -> str:
    return SLOTS[1] if slot == SLOTS[0] else SLOTS[0]


class Layout(NamedTuple):
    """A config in the slot format: which slot it boots, and the pair there (None: none yet)."""

    live: str
    pair: LocalPair | None


def is_digest(s: str) -> bool:
    return len(s) == 32 and all(c in "0123456789abcdef" for c in s)


class Bootloader(Protocol):
    """What the commit engine needs of a bootloader's configuration.

    The configuration has a fixed size and a fixed layout: a head of one
    512-byte sector that selects a slot (the commit point, rewritten in
    place), then one region per slot naming that slot's pair. Every line of a
    region sits at the same offset whatever it holds, so a region torn
    between two versions at a sector boundary still parses as one entry of
    that slot, never as a line of another entry.

    `parse` and `layout` return None for any config they did not write byte
    for byte (the inactive region may hold any version of its entry): an
    edited or foreign config is replaced, never trusted.
    """

    name: str
    size: int  # bytes of the whole config
    head_size: int  # bytes of the head: one sector

    def config_path(self, boot_dir: Path) -> Path: ...

    def head(self, slot: str, append: str) -> bytes: ...

    def region(self, slot: str, pair: LocalPair | None) -> bytes: ...

    def offset(self, slot: str) -> int: ...

    def render(self, pair: LocalPair | None, slot: str = SLOTS[0]) -> bytes: ...

    def layout(self, data: bytes) -> Layout | None: ...

    def parse(self, data: bytes) -> LocalPair | None: ...
