"""Kernel-module closure from depmod's files, and the load order the agent follows.

Reads modules.dep (hard dependencies), modules.softdep (pre:/post: soft ones,
also those depmod extracted from the modules themselves), modules.alias (for
softdeps that name an alias, such as crypto-crc32c) and modules.builtin /
modules.builtin.modinfo (built into the kernel: nothing to load). Compressed
modules (.ko.xz, .ko.zst, .ko.gz) are decompressed at build time so that the
agent needs no decompressor and the kernel no in-kernel one.

Module names, .modinfo sections and alias patterns are read by
linuxrc_agent.kmodinfo, the reader the agent uses too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import xxhash
import zstandard

from linuxrc_agent import kmodinfo
from linuxrc_agent.kmodinfo import AliasIndex, canonical, module_name, split_softdep
from mkinitrd_ssi.atomic import staged_file
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.run import log

# What a cluster node may boot from or through: NICs, disk controllers, filesystems.
# nfs alone mounts nothing: the protocol versions are modules of their own.
# vfat mounts with codepage 437 and the iocharset/utf8 the kernel defaults to
# (an ESP is vfat); efivarfs tells whether Secure Boot is on; overlay gives a
# read-only shared root its per-node writable layer.
# Not xfs: 4.2 MB (0.71 MB at zstd -19, a ninth of the default image) for roots that
# are rarely xfs (README, Benchmarks: issue 14's default-image goal). The shared root's
# own type joins this set wherever the admin side names it (rootfs.py), so a cluster
# on xfs keeps booting on defaults; --add-modules xfs for the rest, as the agent's
# ENODEV message says.
DEFAULT_MODULES = ("virtio_net", "virtio_blk", "virtio_pci", "virtio_scsi", "e1000", "e1000e",
                   "igb", "ixgbe", "ahci", "nvme", "sd_mod", "ext4", "vfat",
                   "nls_cp437", "nls_ascii", "nls_utf8", "nfs", "nfsv3", "nfsv4", "overlay",
                   "efivarfs")


@dataclass(frozen=True)
class Module:
    name: str
    relpath: str  # as in modules.dep, relative to the module directory
    deps: tuple[str, ...] = ()  # names, from modules.dep

    @property
    def compression(self) -> str | None:
        return kmodinfo.compression(self.relpath)

    @property
    def installed(self) -> str:
        """The path in the ramdisk's module directory: always a plain .ko."""
        c = self.compression
        return self.relpath[: -len(c) - 1] if c else self.relpath


@dataclass
class Selection:
    modules: list[Module] = field(default_factory=list)  # load order: dependencies first
    builtin: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # asked for by default, not in this kernel
    dropped: list[str] = field(default_factory=list)  # need an omitted module


class ModuleIndex:
    """depmod's view of one kernel's modules directory (lib/modules/KVER)."""

    def __init__(self, moddir: Path) -> None:
        self.moddir = moddir
        dep = moddir / "modules.dep"
        try:
            text = dep.read_text()
        except FileNotFoundError:
            raise SsiError(f"{dep}: no such file", hint=f"run depmod -b ROOT {moddir.name}, or "
                           "pass the lib/modules/KVER directory of an unpacked kernel") from None
        except OSError as e:
            raise SsiError(f"{dep}: {e.strerror}") from None
        self.modules: dict[str, Module] = {}
        prefix = f"/lib/modules/{moddir.name}/"
        for line in text.splitlines():
            path, sep, rest = line.partition(":")
            if not sep:
                continue
            # Old depmods wrote absolute paths.
            paths = [p.removeprefix(prefix) for p in [path, *rest.split()]]
            name = module_name(paths[0])
            self.modules[name] = Module(name, paths[0], tuple(module_name(p) for p in paths[1:]))
        self.builtin = {module_name(line) for line in self._lines("modules.builtin")}
        self.softdeps = self._softdeps()
        self._aliases: AliasIndex | None = None
        self._builtin_aliases: set[str] | None = None

    def _lines(self, name: str) -> list[str]:
        try:
            return (self.moddir / name).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def _softdeps(self) -> dict[str, tuple[list[str], list[str]]]:
        out: dict[str, tuple[list[str], list[str]]] = {}
        for line in self._lines("modules.softdep"):
            words = line.split("#", 1)[0].split()
            if len(words) < 2 or words[0] != "softdep":
                continue
            pre, post = out.setdefault(canonical(words[1]), ([], []))
            # Like modprobe, words before any pre:/post: are ignored.
            _, more_pre, more_post = split_softdep(words[2:])
            pre += more_pre
            post += more_post
        return out

    def aliases(self) -> AliasIndex:
        """The patterns of modules.alias, in file order."""
        if self._aliases is None:
            try:
                pairs = kmodinfo.read_alias_file(self.moddir / "modules.alias")
            except FileNotFoundError:
                pairs = []
            self._aliases = AliasIndex((p, canonical(m)) for p, m in pairs)
        return self._aliases

    def builtin_aliases(self) -> set[str]:
        if self._builtin_aliases is None:
            try:
                raw = (self.moddir / "modules.builtin.modinfo").read_bytes()
            except FileNotFoundError:
                raw = b""
            self._builtin_aliases = {value for key, value in kmodinfo.parse_pairs(raw)
                                     if key.endswith(".alias")}  # MODULE.alias=ALIAS
        return self._builtin_aliases

    def resolve(self, name: str) -> list[str] | None:
        """Module names for a module name or alias; [] when built in, None when unknown."""
        c = canonical(name)
        if c in self.modules:
            return [c]
        if c in self.builtin:
            return []
        # In modules.alias order: it decides which of two providers (crc32c_intel,
        # crc32c_generic) loads first.
        hits = self.aliases().lookup(name)
        mods = [h for h in hits if h in self.modules]
        if mods:
            return mods
        if any(h in self.builtin for h in hits) or name in self.builtin_aliases():
            return []
        return None

    def select(self, wanted: Sequence[str], *, required: Iterable[str] = (),
               omit: Iterable[str] = ()) -> Selection:
        """The closure of `wanted` in load order. A name in `required` that this kernel
        lacks is an error; other absent names are reported in Selection.absent."""
        sel = Selection()
        required_set = {canonical(n) for n in required}
        omitted = {canonical(n) for n in omit}
        loaded: dict[str, Module] = {}
        visiting: set[str] = set()
        missing_required: list[str] = []

        def needs_omitted(name: str) -> str | None:
            mod = self.modules[name]
            return next((d for d in (name, *mod.deps) if d in omitted), None)

        def visit(name: str) -> None:
            if name in loaded or name in visiting:
                return  # a cycle in softdeps: modprobe also loads each module once
            mod = self.modules[name]
            visiting.add(name)
            pre, post = self.softdeps.get(name, ([], []))
            for soft in pre:
                for s in self.resolve(soft) or []:
                    if s not in omitted and needs_omitted(s) is None:
                        visit(s)
            for dep in mod.deps:
                if dep in self.modules:
                    visit(dep)
            loaded[name] = mod
            sel.modules.append(mod)
            visiting.discard(name)
            for soft in post:
                for s in self.resolve(soft) or []:
                    if s not in omitted and needs_omitted(s) is None:
                        visit(s)

        for raw in wanted:
            name = canonical(raw)
            if name in omitted:
                continue
            found = self.resolve(raw)
            if found is None:
                if name in required_set:
                    missing_required.append(raw)
                else:
                    sel.absent.append(raw)
                continue
            if not found:
                sel.builtin.append(raw)
                continue
            for mod in found:
                blocker = needs_omitted(mod)
                if blocker is not None:
                    sel.dropped.append(f"{mod} (needs {blocker})")
                    continue
                visit(mod)
        if missing_required:
            raise SsiError(f"module(s) not in kernel {self.moddir.name}: "
                           + ", ".join(missing_required),
                           hint=f"see {self.moddir / 'modules.dep'} for the modules it has")
        return sel

    def ramdisk_dep(self, modules: Sequence[Module]) -> str:
        """A modules.dep for just these modules with their installed names, so that
        busybox modprobe works in the rescue shell."""
        chosen = {m.name for m in modules}
        lines = []
        for m in sorted(modules, key=lambda m: m.installed):
            deps = [self.modules[d].installed for d in m.deps if d in chosen]
            lines.append(f"{m.installed}: {' '.join(deps)}".rstrip(" ") + "\n")
        return "".join(lines)


def decompress(src: Path, compression: str) -> bytes:
    import gzip  # only for a kernel whose modules are compressed, once (materialize)
    import lzma

    try:
        if compression == "xz":
            return lzma.decompress(src.read_bytes())
        if compression == "gz":
            return gzip.decompress(src.read_bytes())
        with open(src, "rb") as f:
            return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    except (lzma.LZMAError, OSError, EOFError, zstandard.ZstdError) as e:
        raise SsiError(f"{src}: cannot decompress: {e}") from None


def materialize(moddir: Path, module: Module, cache: Path) -> Path:
    """A path holding the module's plain .ko: the original, or a cached decompressed copy
    (keyed by the source's path, size and mtime, so a rebuild does not decompress again)."""
    src = moddir / module.relpath
    if module.compression is None:
        return src
    st = src.stat()
    key = xxhash.xxh3_128(f"{src.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    out = cache / f"{key}.ko"
    if not out.is_file():
        data = decompress(src, module.compression)
        with staged_file(out) as tmp:
            tmp.write_bytes(data)
        log.debug("decompressed %s into %s", src, out)
    else:
        os.utime(out)
    return out


def modinfo(path: Path) -> list[tuple[str, str]]:
    """The key=value pairs of a plain .ko's .modinfo section, in order."""
    try:
        return kmodinfo.modinfo(path.read_bytes())
    except (OSError, ValueError) as e:
        raise SsiError(f"{path}: cannot read module info: {e}") from None


def firmware(path: Path) -> list[str]:
    """Firmware files the module may request (relative to /lib/firmware)."""
    return list(kmodinfo.ModInfo.from_pairs(str(path), modinfo(path)).firmware)
