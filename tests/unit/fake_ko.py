"""Tiny but well-formed kernel-module files for tests: an ELF relocatable object with a
.modinfo section (and a .text holding a marker, so files differ). ELF64 little-endian by
default, as on x86_64; the other classes and byte orders test the generic reader."""

from __future__ import annotations

import struct


def fake_ko(marker: str, modinfo: dict[str, list[str]] | None = None, *, bits: int = 64,
            order: str = "<") -> bytes:
    info = b"".join(f"{k}={v}".encode() + b"\0" for k, vs in (modinfo or {}).items()
                    for v in vs)
    text = marker.encode()
    names = b"\0.text\0.modinfo\0.shstrtab\0"
    body = text + info + names
    # ELF header size, address-sized field, section header size; e_machine x86_64 or i386.
    ehsize, word, shentsize, machine = (64, "Q", 64, 62) if bits == 64 else (52, "I", 40, 3)
    text_at, info_at = ehsize, ehsize + len(text)
    names_at = info_at + len(info)
    shoff = (ehsize + len(body) + 7) & ~7
    ident = b"\x7fELF" + bytes([bits // 32, 1 if order == "<" else 2, 1]) + b"\0" * 9
    header = ident + struct.pack(f"{order}HHI{word * 3}IHHHHHH", 1, machine, 1, 0, 0, shoff,
                                 0, ehsize, 0, 0, shentsize, 4, 3)

    def section(name: int, kind: int, offset: int, size: int) -> bytes:
        return struct.pack(f"{order}II{word * 4}II{word * 2}", name, kind, 0, 0, offset, size,
                           0, 0, 1, 0)

    sections = (section(0, 0, 0, 0) + section(1, 1, text_at, len(text))
                + section(7, 1, info_at, len(info)) + section(16, 3, names_at, len(names)))
    return header + body + b"\0" * (shoff - ehsize - len(body)) + sections
