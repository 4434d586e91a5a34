"""The one kernel-module metadata reader: names, ELF sections, .modinfo, softdeps, aliases.

The agent-side behaviour (read_modinfo on a file, AliasIndex.match) is also covered by
test_agent_modules.py and the builder side by test_kmod.py; here are the reader's own
contracts, the ELF classes and byte orders, corrupt input, and the real kernel's files.
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linuxrc_agent import kmodinfo
from linuxrc_agent.kmodinfo import AliasIndex, ModInfo
from mkinitrd_ssi.initrd import kmod
from tests.unit.fake_ko import fake_ko
from vm_tests import kernel

INFO = {"alias": ["virtio:d00000001v*", "pci:v00001AF4d00001000sv*sd00000001bc*sc*i*"],
        "depends": ["net_failover,virtio,virtio_ring"], "firmware": ["virtio/fw.bin"],
        "license": ["GPL"], "name": ["virtio_net"]}


@pytest.mark.parametrize(("path", "name"), [
    ("kernel/fs/fat/fat.ko.gz", "fat"),
    ("/lib/modules/6.1.0/kernel/arch/x86/crypto/crc32c-intel.ko", "crc32c_intel"),
    ("nls-cp437", "nls_cp437"),  # no suffix: a name as a user writes it
    ("kernel/x/snd-hda.codec.ko.xz", "snd_hda.codec"),  # only the last suffix goes
])
def test_module_name(path: str, name: str) -> None:
    assert kmodinfo.module_name(path) == name


def test_canonical_and_compression() -> None:
    assert kmodinfo.canonical(" net-failover\t") == "net_failover"
    assert [kmodinfo.compression(p) for p in ("a.ko.xz", "a.ko.zst", "a.ko.gz", "a.ko",
                                              "a.xz")] == ["xz", "zst", "gz", None, None]


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("order", ["<", ">"])
def test_sections_of_every_elf_class_and_byte_order(tmp_path: Path, bits: int,
                                                    order: str) -> None:
    data = fake_ko("marker", INFO, bits=bits, order=order)
    path = tmp_path / "virtio_net.ko"
    path.write_bytes(data)
    assert kmodinfo.section(data, b".text") == kmodinfo.read_section(str(path), b".text") \
        == b"marker"
    assert kmodinfo.section(data, b".nosuch") is kmodinfo.read_section(str(path), b".nosuch") \
        is None
    assert kmodinfo.section(data, b".mod") is None  # a name's prefix is not the name
    assert kmodinfo.modinfo(data) == [(k, v) for k, vs in INFO.items() for v in vs]
    assert kmodinfo.read_modinfo(str(path)) == ModInfo(
        "virtio_net", str(path), tuple(INFO["alias"]), ("net_failover", "virtio", "virtio_ring"),
        (), ("virtio/fw.bin",))


def test_an_empty_modinfo_has_no_pairs() -> None:
    assert kmodinfo.modinfo(fake_ko("x")) == []
    assert ModInfo.from_pairs("kernel/a/crc32c-intel.ko", []) == \
        ModInfo("crc32c_intel", "kernel/a/crc32c-intel.ko")


def test_a_module_without_modinfo(tmp_path: Path) -> None:
    data = fake_ko("x").replace(b".modinfo\0", b".notinfo\0")
    assert kmodinfo.modinfo(data) == []  # the builder: no firmware, nothing else
    path = tmp_path / "x.ko"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"x\.ko: no \.modinfo section"):
        kmodinfo.read_modinfo(str(path))  # the agent: cannot plan, loads all instead


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: d[:40], "truncated ELF header"),
    (lambda d: d[:-10], r"truncated ELF \(section header table: 246 of 256 bytes"),
    (lambda d: d[:0x3E] + b"\x09\x00" + d[0x40:], "bad section header table"),  # shstrndx
    (lambda d: d[:0x3A] + b"\x10\x00" + d[0x3C:], "bad section header table"),  # shentsize
    (lambda d: d[:4] + b"\x03" + d[5:], "not an ELF object"),
    (lambda d: b"\x28\xb5\x2f\xfd" + d[4:], "not an ELF object"),  # still zstd-compressed
])
def test_corrupt_objects_are_value_errors(tmp_path: Path, damage: Callable[[bytes], bytes],
                                          message: str) -> None:
    data = damage(fake_ko("x", INFO))
    path = tmp_path / "bad.ko"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        kmodinfo.section(data, b".modinfo")
    with pytest.raises(ValueError, match=rf"bad\.ko: {message}"):
        kmodinfo.read_modinfo(str(path))


@pytest.mark.parametrize("size", [10_000, 2**64 - 1])
def test_a_section_past_the_end_is_truncated_not_partial(tmp_path: Path, size: int) -> None:
    """A partial read would silently lose the last aliases; a huge size must not be
    allocated."""
    data = bytearray(fake_ko("x", INFO))
    shoff = int.from_bytes(data[0x28:0x30], "little")
    at = shoff + 2 * 64 + 32  # sh_size of section 2, .modinfo
    data[at:at + 8] = size.to_bytes(8, "little")
    with pytest.raises(ValueError, match=rf"truncated ELF \(\.modinfo: \d+ of {size} bytes"):
        kmodinfo.section(bytes(data), b".modinfo")
    path = tmp_path / "short.ko"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"short\.ko: truncated"):
        kmodinfo.read_modinfo(str(path))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.binary(min_size=1, max_size=8), st.booleans())
def test_any_damage_is_a_value_error_or_a_result(at: int, junk: bytes, truncate: bool) -> None:
    """Whatever bytes a damaged file holds, the reader answers or raises ValueError: the
    agent then loads every module, the builder names the file."""
    data = fake_ko("x", INFO)
    at %= len(data)
    data = data[:at] if truncate else data[:at] + junk + data[at + len(junk):]
    try:
        got = kmodinfo.section(data, b".modinfo")
    except ValueError:
        return
    assert got is None or isinstance(got, bytes)


def test_parse_pairs() -> None:
    raw = b"license=GPL\0\0parm=debug:level=1 (int)\0no equals\0author=J\xfcrgen\0"
    assert kmodinfo.parse_pairs(raw) == [
        ("license", "GPL"), ("parm", "debug:level=1 (int)"), ("author", "J\ufffdrgen")]
    assert kmodinfo.parse_pairs(b"") == []


@pytest.mark.parametrize(("text", "expected"), [
    ("pre: crc32c post: foo-bar", ([], ["crc32c"], ["foo-bar"])),
    ("post: a pre: b c post: d", ([], ["b", "c"], ["a", "d"])),
    ("gcm", (["gcm"], [], [])),  # 6.1's cifs writes its softdeps unmarked
    ("x pre: y", (["x"], ["y"], [])),
    ("", ([], [], [])),
])
def test_split_softdep(text: str, expected: tuple[list[str], list[str], list[str]]) -> None:
    assert kmodinfo.split_softdep(text.split()) == expected


def test_modinfo_keys() -> None:
    pairs = [("softdep", "pre: crc32c"), ("softdep", "gcm"), ("softdep", "post: nls-cp437"),
             ("depends", ""), ("firmware", "a.bin"), ("firmware", "b/c.bin"),
             ("alias", "fs-vfat"), ("vermagic", "6.1.0 SMP mod_unload")]
    info = ModInfo.from_pairs("/lib/modules/k/vfat.ko.xz", pairs)
    assert info == ModInfo("vfat", "/lib/modules/k/vfat.ko.xz", ("fs-vfat",), (),
                           ("crc32c", "gcm", "nls-cp437"), ("a.bin", "b/c.bin"))


def test_alias_lookup_keeps_the_order_patterns_were_added() -> None:
    index = AliasIndex([("crypto-crc32c", "crc32c_intel"), ("crc32c", "crc32c_generic"),
                        ("crypto-crc32c", "crc32c_generic"), ("crypto-*", "catchall"),
                        ("crypto-crc32c", "crc32c_intel")])
    assert index.lookup("crypto-crc32c") == ["crc32c_intel", "crc32c_generic", "catchall"]
    assert index.match("crypto-crc32c") == {"crc32c_intel", "crc32c_generic", "catchall"}
    assert index.lookup("nosuch") == [] and len(index) == 5


_alias_chars = st.sampled_from("pciv0123ABd:*?[]!-")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(_alias_chars, min_size=1, max_size=12),
                          st.sampled_from("abcd")), max_size=20),
       st.text(st.sampled_from("pciv0123ABd:-"), max_size=14))
def test_alias_lookup_is_plain_fnmatch_in_order(pairs: list[tuple[str, str]],
                                                modalias: str) -> None:
    brute = list(dict.fromkeys(m for p, m in pairs if fnmatch.fnmatchcase(modalias, p)))
    assert AliasIndex(pairs).lookup(modalias) == brute


def test_read_alias_file_takes_a_path(tmp_path: Path) -> None:
    f = tmp_path / "modules.alias"
    f.write_text("alias fs-vfat vfat\nalias  pci:v*d*sv*sd*bc01sc06i01*\tahci \n"
                 "alias too many words\nsoftdep a pre: b\n")
    assert kmodinfo.read_alias_file(f) == [("fs-vfat", "vfat"),
                                           ("pci:v*d*sv*sd*bc01sc06i01*", "ahci")]


def test_the_agent_side_imports_only_the_standard_library() -> None:
    """PID 1 imports kmodinfo: no xxhash, zstandard or pyelftools (nor the builder)."""
    code = ("import sys; import linuxrc_agent.modules; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout.split()
    assert "linuxrc_agent" in out
    assert [m for m in out if m not in sys.stdlib_module_names
            and m not in ("__main__", "linuxrc_agent")] == []


real = kernel.cached()


@pytest.mark.skipif(real is None, reason="kernel not fetched (python -m vm_tests.kernel)")
def test_debian_cloud_kernel_agrees_with_depmod() -> None:
    """The default set's .modinfo says what depmod wrote from it: names, the aliases
    (modules.alias) and direct dependencies (within modules.dep's closure); file and
    bytes readers agree."""
    assert real is not None
    index = kmod.ModuleIndex(real.moddir)
    pairs = kmodinfo.read_alias_file(real.moddir / "modules.alias")
    modules = index.select(kmod.DEFAULT_MODULES).modules
    assert len(modules) > 10
    for mod in modules:
        path = real.moddir / mod.relpath
        info = kmodinfo.read_modinfo(str(path))
        assert info.name == mod.name
        assert sorted(info.aliases) == sorted(p for p, m in pairs if m == mod.name)
        assert set(info.depends) <= set(mod.deps)
        assert kmodinfo.section(path.read_bytes(), b".modinfo") == \
            kmodinfo.read_section(str(path), b".modinfo")
