"""Tiny but well-formed kernel-module files for tests: an ELF64 relocatable object with a
.modinfo section (and a .text holding a marker, so files differ)."""

from __future__ import annotations

import struct


def fake_ko(marker: str, modinfo: dict[str, list[str]] | None = None) -> bytes:
    info = b"".join(f"{k}={v}".encode() + b"\0" for k, vs in (modinfo or {}).items()
                    for v in vs)
    text = marker.encode()
    names = b"\0.text\0.modinfo\0.shstrtab\0"
    body = text + info + names
    text_at, info_at = 64, 64 + len(text)
    names_at = info_at + len(info)
    shoff = (64 + len(body) + 7) & ~7
    ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header = ident + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0,
                                 64, 4, 3)

    def section(name: int, kind: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, kind, 0, 0, offset, size, 0, 0, 1, 0)

    sections = (section(0, 0, 0, 0) + section(1, 1, text_at, len(text))
                + section(7, 1, info_at, len(info)) + section(16, 3, names_at, len(names)))
    return header + body + b"\0" * (shoff - 64 - len(body)) + sections
