"""The one reader of kernel-module metadata: names, .modinfo sections, alias patterns.

Shared by the boot agent (which loads modules by what their .modinfo says)
and the builder (which picks modules through depmod's files and needs each
one's firmware), so that both spell names, read sections and match aliases
the same way.

Standard library only and import-light: the agent imports it as PID 1, where
every import costs boot time. Decompression stays in the builder: this module
reads plain ELF objects, from a file or from the bytes the builder passes.
"""

from __future__ import annotations

import fnmatch
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

COMPRESSED = (".ko.xz", ".ko.zst", ".ko.gz")
_SUFFIXES = (*COMPRESSED, ".ko")
_WILDCARDS = "*?["


# --- names ----------------------------------------------------------------------------


def canonical(name: str) -> str:
    """Module names treat '-' and '_' alike; the kernel reports them with '_'."""
    return name.strip().replace("-", "_")


def module_name(path: str) -> str:
    """`/lib/modules/K/kernel/.../crc32c-intel.ko.zst` -> `crc32c_intel` (the kernel's spelling)."""
    base = path.rpartition("/")[2]
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return canonical(base)


def compression(path: str) -> str | None:
    """How a module file is compressed ("xz", "zst", "gz"); None for a plain .ko."""
    for suffix in COMPRESSED:
        if path.endswith(suffix):
            return suffix[4:]
    return None


# --- ELF sections ---------------------------------------------------------------------

# By EI_CLASS (1: ELF32, 2: ELF64): where e_shoff is and its format, where e_shentsize,
# e_shnum and e_shstrndx are, the format of a section header's first six fields
# (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size) and its size in the spec.
_LAYOUT = {1: (0x20, "I", 0x2E, "IIIIII", 40), 2: (0x28, "Q", 0x3A, "IIQQQQ", 64)}
_SHN_LORESERVE = 0xFF00  # from here on e_shnum/e_shstrndx mean extended numbering


def _find_section(read: Callable[[int, int], bytes], wanted: bytes) -> bytes | None:
    """The contents of the section named `wanted`, None when there is none.

    `read(offset, size)` returns at most `size` bytes (fewer past the end): a
    slice of the builder's bytes, or a pread so that the agent reads only the
    headers and the one section of a 3 MB xfs.ko. With struct rather than
    pyelftools, which costs ~7 ms a module (the builder reads every module of
    every build) and is no standard library. Raises ValueError.
    """
    ident = read(0, 64)
    if len(ident) < 6 or ident[:4] != b"\x7fELF" or ident[4] not in _LAYOUT \
            or ident[5] not in (1, 2):
        raise ValueError("not an ELF object")
    end = "<" if ident[5] == 1 else ">"
    shoff_at, shoff_fmt, counts_at, fmt, min_entsize = _LAYOUT[ident[4]]
    try:
        shoff, = struct.unpack_from(end + shoff_fmt, ident, shoff_at)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", ident, counts_at)
    except struct.error:
        raise ValueError("truncated ELF header") from None
    if shentsize < min_entsize or not 0 < shnum < _SHN_LORESERVE or shstrndx >= shnum:
        raise ValueError("bad section header table")
    table = _read_exactly(read, shoff, shentsize * shnum, "section header table")
    # One C call for the whole table (the agent reads its modules' at boot); the pad
    # skips the fields after sh_size.
    entry = end + fmt + f"{shentsize - struct.calcsize(end + fmt)}x"
    headers = list(struct.iter_unpack(entry, table))
    _, _, _, _, names_at, names_size = headers[shstrndx]
    names = _read_exactly(read, names_at, names_size, "section names")
    key = wanted + b"\0"
    for name, _, _, _, offset, size in headers:
        if names[name:name + len(key)] == key:
            return _read_exactly(read, offset, size, wanted.decode(errors="replace"))
    return None


def _read_exactly(read: Callable[[int, int], bytes], at: int, size: int, what: str) -> bytes:
    # A short read means a truncated file: parsing what is there would silently drop
    # aliases (or firmware) from the end of the section.
    data = read(at, size)
    if len(data) != size:
        raise ValueError(f"truncated ELF ({what}: {len(data)} of {size} bytes)")
    return data


def section(data: bytes, wanted: bytes) -> bytes | None:
    """A section of an ELF object given whole (the builder's, decompressed or not)."""
    return _find_section(lambda at, size: data[at:at + size], wanted)


def read_section(path: str, wanted: bytes) -> bytes | None:
    """A section of an ELF file, reading only the headers and that section."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        limit = os.fstat(fd).st_size

        def read(at: int, size: int) -> bytes:
            # Clamped to the file as a slice would be: a corrupt header's huge offset or
            # size then reads as truncated instead of overflowing or exhausting memory.
            return os.pread(fd, min(size, limit - at), at) if at < limit else b""

        return _find_section(read, wanted)
    finally:
        os.close(fd)


# --- .modinfo -------------------------------------------------------------------------


def parse_pairs(raw: bytes) -> list[tuple[str, str]]:
    """The key=value items of a .modinfo section (or modules.builtin.modinfo), in order."""
    pairs = []
    # Decoded whole, once: a NUL or "=" byte is never part of a multibyte character.
    for item in raw.decode(errors="replace").split("\0"):
        key, sep, value = item.partition("=")
        if sep:
            pairs.append((key, value))
    return pairs


def modinfo(data: bytes) -> list[tuple[str, str]]:
    """The key=value items of a plain module's .modinfo, given its bytes; [] without one.

    Raises ValueError when `data` is no ELF object or is truncated.
    """
    return parse_pairs(section(data, b".modinfo") or b"")


def split_softdep(words: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """(unmarked, pre, post): a softdep's words, "pre: a b post: c", by the marker they follow.

    Unmarked words come before any marker, as in 6.1's cifs (MODULE_SOFTDEP("gcm")).
    What to make of them is the caller's choice: modprobe ignores them, and so
    does the builder; the agent loads them with the module. A plain tuple, not
    a NamedTuple: one more class would cost the agent's import time.
    """
    unmarked: list[str] = []
    pre: list[str] = []
    post: list[str] = []
    mode = unmarked
    for word in words:
        if word == "pre:":
            mode = pre
        elif word == "post:":
            mode = post
        else:
            mode.append(word)
    return unmarked, pre, post


class ModInfo(NamedTuple):
    """What the agent and the builder use of a module's .modinfo."""

    name: str
    path: str
    aliases: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()
    softdeps: tuple[str, ...] = ()  # unmarked, pre: and post: ones; names or aliases
    firmware: tuple[str, ...] = ()  # relative to /lib/firmware

    @classmethod
    def from_pairs(cls, path: str, pairs: Iterable[tuple[str, str]]) -> ModInfo:
        """What the keys say; the name is the file's unless a name= item says otherwise."""
        name = module_name(path)
        aliases: list[str] = []
        depends: list[str] = []
        softdeps: list[str] = []
        firmware: list[str] = []
        for key, value in pairs:
            if key == "name":
                name = value
            elif key == "alias":
                aliases.append(value)
            elif key == "depends":
                depends.extend(d for d in value.split(",") if d)
            elif key == "softdep":
                # All of them, as the agent always took them: it loads in the builder's
                # order, so the marker does not matter to it, and an unmarked word
                # (6.1's cifs) still names a module its author wanted loaded.
                for words in split_softdep(value.split()):
                    softdeps += words
            elif key == "firmware":
                firmware.append(value)
        return cls(name, path, tuple(aliases), tuple(depends), tuple(softdeps),
                   tuple(firmware))


def read_modinfo(path: str) -> ModInfo:
    """The .modinfo of a plain module file. Raises ValueError for anything else (the
    agent then falls back to loading every module), OSError when it cannot be read."""
    try:
        raw = read_section(path, b".modinfo")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if raw is None:
        raise ValueError(f"{path}: no .modinfo section")
    return ModInfo.from_pairs(path, parse_pairs(raw))


# --- alias patterns -------------------------------------------------------------------


class AliasIndex:
    """fnmatch patterns of module aliases (as in modules.alias), indexed by literal prefix.

    A device's modalias is then checked only against the patterns whose literal
    start it begins with: a few fnmatch calls instead of one per alias line
    (2,404 in Debian 12's cloud kernel, many more in a full one).
    """

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        # prefix -> (rank, pattern, module); the rank keeps the order patterns were
        # added in, which the builder's load order follows.
        self._by_prefix: dict[str, list[tuple[int, str, str]]] = {}
        self._longest = 0
        self._count = 0
        for pattern, module in pairs:
            self.add(pattern, module)

    def add(self, pattern: str, module: str) -> None:
        cut = min((i for i in (pattern.find(c) for c in _WILDCARDS) if i >= 0),
                  default=len(pattern))
        prefix = pattern[:cut]
        self._by_prefix.setdefault(prefix, []).append((self._count, pattern, module))
        self._count += 1
        self._longest = max(self._longest, len(prefix))

    def _hits(self, modalias: str) -> Iterator[tuple[int, str]]:
        for i in range(min(len(modalias), self._longest) + 1):
            for rank, pattern, module in self._by_prefix.get(modalias[:i], ()):
                if fnmatch.fnmatchcase(modalias, pattern):
                    yield rank, module

    def match(self, modalias: str) -> set[str]:
        """The modules with a pattern that matches `modalias`."""
        return {module for _, module in self._hits(modalias)}

    def lookup(self, modalias: str) -> list[str]:
        """The same, each once, in the order their first matching pattern was added."""
        return list(dict.fromkeys(module for _, module in sorted(self._hits(modalias))))

    def __len__(self) -> int:
        return self._count


def read_alias_file(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(pattern, module) pairs of a depmod modules.alias file, in file order."""
    pairs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            words = line.split()
            if len(words) == 3 and words[0] == "alias":
                pairs.append((words[1], words[2]))
    return pairs
