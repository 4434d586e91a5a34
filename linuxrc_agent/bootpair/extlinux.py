"""The extlinux configuration (BIOS: firmware -> MBR -> extlinux) for a local pair.

One writer per bootloader configuration sits beside this one (a GRUB/ESP
writer for UEFI fits the same Bootloader protocol, bootpair.pair).

The file has a fixed size and a fixed layout, so that a sync never changes
its length, its blocks or its directory entry, only bytes in place
(docs/architecture.md, "The local boot partition: commit protocol"):

    bytes 0-511      the head: comments, SERIAL, DEFAULT ssi-<live slot>, PROMPT 0,
                     TIMEOUT 0, padded with a comment line; rewritten whole in one
                     sector write: the commit
    512 + 2560 * i   the region of slot i (a, b): the pair's sizes and hashes as
                     comments, LABEL ssi-<slot>, LINUX, INITRD, APPEND, a padding
                     comment; every line at a fixed offset (sizes zero-padded, the
                     arguments right-aligned after APPEND, which syslinux skips
                     blanks after), so a region torn between two of its versions
                     is still one entry of its own slot

A slot that never held a pair has a placeholder region (zero hashes).
"""

from __future__ import annotations

import enum
from pathlib import Path

from linuxrc_agent import cmdline
from linuxrc_agent.bootpair.kargs import MAX_APPEND
from linuxrc_agent.bootpair.pair import (
    ROLES,
    SLOTS,
    FileId,
    Layout,
    LocalPair,
    PairMember,
    is_digest,
    member_name,
    other,
)


class BootloaderKind(enum.Enum):
    EXTLINUX = "extlinux"  # BIOS; GRUB (grub.cfg) and UEFI (loader/entries) fit the same protocol


_HEADER = (
    "# ssi-boot local boot partition, written by linuxrc (bootpair) and lilo.ssi --local-only.\n"
    "# Rewritten in place at every sync (fixed size): change the cluster's kernel arguments,\n"
    "# not this file.\n"
)
HEAD = 512
REGION = 2560
_APPEND = "  APPEND"
_APPEND_WIDTH = MAX_APPEND + 1  # at least one blank between APPEND and the widest arguments
_NO_DIGEST = "0" * 32


def _pad(text: str, size: int) -> bytes:
    data = text.encode()
    if len(data) > size - 2:
        raise ValueError(f"{len(data)} bytes do not fit in {size}")
    return data + b"#" * (size - len(data) - 1) + b"\n"


def _placeholder(slot: str) -> LocalPair:
    none = FileId(0, _NO_DIGEST)
    return LocalPair(PairMember(member_name("kernel", _NO_DIGEST, slot), none),
                     PairMember(member_name("initrd", _NO_DIGEST, slot), none), "")


class Extlinux:
    name = BootloaderKind.EXTLINUX.value
    head_size = HEAD
    region_size = REGION
    size = HEAD + len(SLOTS) * REGION
    # extlinux 6.04 reads <install dir>/extlinux.conf first, then /boot/syslinux,
    # /syslinux, /; the install dir is wherever ldlinux.sys was put.
    INSTALL_DIRS = ("", "extlinux", "boot/extlinux", "boot/syslinux", "syslinux")

    def config_path(self, boot_dir: Path) -> Path:
        for sub in self.INSTALL_DIRS:
            if (boot_dir / sub / "ldlinux.sys").exists():
                return boot_dir / sub / "extlinux.conf"
        return boot_dir / "extlinux.conf"

    def offset(self, slot: str) -> int:
        return self.head_size + SLOTS.index(slot) * self.region_size

    def head(self, slot: str, append: str) -> bytes:
        serial = _serial_directive(append)
        # No escape to the boot: prompt, no options added to the label: a console
        # user cannot boot the node with init=/bin/sh unless the cluster allows it.
        lock = cmdline.syslinux_lock(cmdline.tokenize(append))
        return _pad(f"{_HEADER}# ssi-slot {slot}\n" + (serial + "\n" if serial else "")
                    + f"DEFAULT ssi-{slot}\nPROMPT 0\nTIMEOUT 0\n{lock}", HEAD)

    def region(self, slot: str, pair: LocalPair | None) -> bytes:
        p = pair if pair is not None else _placeholder(slot)
        lines = [f"# ssi-pair {r} {p.member(r).name} size={p.member(r).ident.size:012d} "
                 f"xxh3_128={p.member(r).ident.xxh3_128}\n" for r in ROLES]
        blanks = " " * (_APPEND_WIDTH - len(p.append.encode()))
        lines.append(f"LABEL ssi-{slot}\n  LINUX /{p.kernel.name}\n  INITRD /{p.initrd.name}\n"
                     f"{_APPEND}{blanks}{p.append}\n")
        return _pad("".join(lines), REGION)

    def render(self, pair: LocalPair | None, slot: str = SLOTS[0]) -> bytes:
        regions = {slot: self.region(slot, pair), other(slot): self.region(other(slot), None)}
        return self.head(slot, pair.append if pair else "") + b"".join(regions[s] for s in SLOTS)

    def layout(self, data: bytes) -> Layout | None:
        if len(data) != self.size:
            return None
        for slot in SLOTS:
            start = self.offset(slot)
            ok, pair = self._region(slot, data[start:start + self.region_size])
            if not ok or data[:self.head_size] != self.head(slot, pair.append if pair else ""):
                continue
            spare = self.offset(other(slot))
            if _shape(data[spare:spare + self.region_size]) != \
                    _shape(self.region(other(slot), None)):
                return None  # edited between the lines: not ours
            return Layout(slot, pair)
        return None

    def parse(self, data: bytes) -> LocalPair | None:
        found = self.layout(data)
        return None if found is None else found.pair

    def _region(self, slot: str, data: bytes) -> tuple[bool, LocalPair | None]:
        """(is it exactly a region we render, its pair or None for the placeholder)."""
        try:
            lines = data.decode().split("\n")
        except UnicodeDecodeError:
            return False, None
        append = self._recorded_append(lines)
        if append is None:
            return False, None
        members = []
        for role, line in zip(ROLES, lines, strict=False):
            words = line.split(" ")
            if len(words) != 6 or words[:3] != ["#", "ssi-pair", role]:
                return False, None
            size, digest = words[4].removeprefix("size="), words[5].removeprefix("xxh3_128=")
            if not size.isdigit() or not is_digest(digest):
                return False, None
            members.append(PairMember(words[3], FileId(int(size), digest)))
        pair = LocalPair(members[0], members[1], append)
        if self.region(slot, pair) != data:
            return False, None
        if pair == _placeholder(slot):
            return True, None
        if any(pair.member(r).name != member_name(r, pair.member(r).ident.xxh3_128, slot)
               for r in ROLES):
            return False, None
        return True, pair

    def _recorded_append(self, lines: list[str]) -> str | None:
        """The kernel arguments a region's lines record (None: not a region's lines)."""
        return lines[5][len(_APPEND):].lstrip(" ") if len(lines) >= 6 else None


def _shape(region: bytes) -> list[tuple[int, bytes]]:
    """Where each line starts and its first word: what two versions of a region share."""
    out, start = [], 0
    while start < len(region):
        end = region.find(b"\n", start)
        if end < 0:
            end = len(region)
        out.append((start, region[start:end].lstrip(b" ").split(b" ", 1)[0][:8]))
        start = end + 1
    return out


EXTLINUX = Extlinux()


def _serial_directive(append: str) -> str:
    """SERIAL for the last console=ttySn[,baud], so the loader talks where the kernel will."""
    serial = ""
    for _raw, key, value in cmdline.tokenize(append).kernel:
        if key == "console" and value is not None:
            dev, _, opts = value.partition(",")
            if dev.startswith("ttyS") and dev[4:].isdigit():
                baud = "".join(c for c in opts.partition("n")[0] if c.isdigit()) or "9600"
                serial = f"SERIAL {dev[4:]} {baud}"
            else:
                serial = ""
    return serial
