"""Module closure from depmod's files: load order, softdeps, aliases, built-ins, omissions,
decompression; and the facts of the real Debian cloud kernel when it is cached."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import pytest
import zstandard

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.initrd import kmod
from tests.unit.fake_ko import fake_ko
from vm_tests import kernel

KVER = "6.1.0-test-amd64"

DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko \
kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko.zst: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/fs/fat/fat.ko.gz:
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko.gz
kernel/lib/libcrc32c.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko
kernel/crypto/ghash.ko:
/lib/modules/{kver}/kernel/fs/nls/nls_cp437.ko:
"""
SOFTDEP = """\
# Soft dependencies extracted from modules themselves.
softdep libcrc32c pre: crypto-crc32c
softdep vfat post: nls-cp437 nls_missing
softdep xfs ignored-word
softdep virtio_net pre: crc32
"""
ALIAS = """\
alias crypto-crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias nls-cp437 nls_cp437
alias pci:v00001AF4d00001000sv*sd00000001bc*sc*i* virtio_net
"""
BUILTIN = """\
kernel/fs/ext4/ext4.ko
kernel/drivers/nvme/host/nvme.ko
kernel/crypto/crc32c_generic.ko
"""


@pytest.fixture
def moddir(tmp_path: Path) -> Path:
    d = tmp_path / "lib/modules" / KVER
    d.mkdir(parents=True)
    (d / "modules.dep").write_text(DEP.format(kver=KVER))
    (d / "modules.softdep").write_text(SOFTDEP)
    (d / "modules.alias").write_text(ALIAS)
    (d / "modules.builtin").write_text(BUILTIN)
    (d / "modules.builtin.modinfo").write_bytes(b"crc32_generic.alias=crc32\0ext4.alias=fs-ext4\0")
    for line in DEP.format(kver=KVER).splitlines():
        rel = line.split(":")[0].removeprefix(f"/lib/modules/{KVER}/")
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        body = fake_ko(rel, {"firmware": ["virtio/fw.bin"]} if "virtio_net" in rel else None)
        if rel.endswith(".xz"):
            body = lzma.compress(body)
        elif rel.endswith(".gz"):
            body = gzip.compress(body)
        elif rel.endswith(".zst"):
            body = zstandard.ZstdCompressor().compress(body)
        path.write_bytes(body)
    return d


def names(sel: kmod.Selection) -> list[str]:
    return [m.name for m in sel.modules]


def test_dependencies_load_first(moddir: Path) -> None:
    sel = kmod.ModuleIndex(moddir).select(["virtio_net", "virtio_blk"])
    order = names(sel)
    assert set(order) == {"virtio_ring", "virtio", "failover", "net_failover", "virtio_net",
                          "virtio_blk"}
    for before, after in [("virtio_ring", "virtio"), ("virtio", "virtio_net"),
                          ("failover", "net_failover"), ("net_failover", "virtio_net"),
                          ("virtio", "virtio_blk")]:
        assert order.index(before) < order.index(after)
    assert len(order) == len(set(order))


def test_softdeps_pre_before_post_after_through_aliases(moddir: Path) -> None:
    index = kmod.ModuleIndex(moddir)
    order = names(index.select(["xfs", "vfat"]))
    # crypto-crc32c -> crc32c_intel (module) and crc32c_generic (built in)
    assert order.index("crc32c_intel") < order.index("libcrc32c") < order.index("xfs")
    assert order.index("fat") < order.index("vfat") < order.index("nls_cp437")
    assert "ignored_word" not in order  # words before pre:/post: are ignored, as by modprobe


def test_builtin_absent_and_required(moddir: Path) -> None:
    index = kmod.ModuleIndex(moddir)
    sel = index.select(["ext4", "nvme", "e1000", "vfat", "fs-ext4"])
    assert sel.builtin == ["ext4", "nvme", "fs-ext4"]
    assert sel.absent == ["e1000"]
    with pytest.raises(SsiError, match=r"not in kernel .*: e1000"):
        index.select(["vfat", "e1000"], required=["e1000"])
    assert names(index.select(["ext4"], required=["ext4"])) == []  # built in is fine


def test_names_with_dashes_and_aliases_resolve(moddir: Path) -> None:
    index = kmod.ModuleIndex(moddir)
    assert index.resolve("crc32c-intel") == ["crc32c_intel"]
    assert index.resolve("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00") == \
        ["virtio_net"]
    assert index.resolve("crc32") == []  # a built-in module's alias
    assert index.resolve("nosuch") is None
    assert index.modules["nls_cp437"].relpath == "kernel/fs/nls/nls_cp437.ko"  # old abs paths


def test_omitting_a_dependency_drops_its_dependents(moddir: Path) -> None:
    sel = kmod.ModuleIndex(moddir).select(["virtio_net", "virtio_blk", "vfat"],
                                          omit=["net-failover"])
    assert "virtio_net" not in names(sel) and "net_failover" not in names(sel)
    assert "virtio_blk" in names(sel)
    assert sel.dropped == ["virtio_net (needs net_failover)"]
    assert "vfat" not in names(kmod.ModuleIndex(moddir).select(["vfat"], omit=["vfat"]))


def test_installed_names_and_ramdisk_dep(moddir: Path) -> None:
    index = kmod.ModuleIndex(moddir)
    sel = index.select(["virtio_blk", "vfat"])
    installed = {m.name: m.installed for m in sel.modules}
    assert installed["virtio_blk"] == "kernel/drivers/block/virtio_blk.ko"
    assert installed["fat"] == "kernel/fs/fat/fat.ko"
    dep = index.ramdisk_dep(sel.modules)
    assert "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko " \
        "kernel/drivers/virtio/virtio_ring.ko\n" in dep
    assert "kernel/fs/fat/fat.ko:\n" in dep
    assert ".xz" not in dep and ".zst" not in dep and ".gz" not in dep


def test_compressed_modules_are_decompressed_once(moddir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    index = kmod.ModuleIndex(moddir)
    cache = tmp_path / "cache"
    for name in ("virtio_net", "virtio_blk", "fat", "vfat"):
        m = index.modules[name]
        path = kmod.materialize(moddir, m, cache)
        assert path.read_bytes()[:64 + len(m.relpath)].endswith(m.relpath.encode())
    assert kmod.materialize(moddir, index.modules["vfat"], cache) == moddir / \
        "kernel/fs/fat/vfat.ko"  # plain .ko: used in place
    calls: list[Path] = []

    def counting(src: Path, how: str) -> bytes:
        calls.append(src)
        return b""

    monkeypatch.setattr(kmod, "decompress", counting)
    kmod.materialize(moddir, index.modules["virtio_net"], cache)
    assert calls == []


SIGNED = b"~Module signature appended~\n"


def test_a_compressed_signed_module_keeps_its_signature(moddir: Path, tmp_path: Path) -> None:
    # Kernels sign a module, then compress it: decompressed, it is the signed module again,
    # which a kernel locked down by Secure Boot loads (and no other).
    signed = fake_ko("kernel/fs/fat/fat.ko.gz") + b"PKCS7 stand-in" + SIGNED
    (moddir / "kernel/fs/fat/fat.ko.gz").write_bytes(gzip.compress(signed))
    module = kmod.ModuleIndex(moddir).modules["fat"]
    assert kmod.materialize(moddir, module, tmp_path).read_bytes() == signed


def test_corrupt_compressed_module_is_an_error(moddir: Path, tmp_path: Path) -> None:
    (moddir / "kernel/fs/fat/fat.ko.gz").write_bytes(b"not gzip")
    with pytest.raises(SsiError, match=r"fat\.ko\.gz: cannot decompress"):
        kmod.materialize(moddir, kmod.ModuleIndex(moddir).modules["fat"], tmp_path)


def test_missing_modules_dep_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SsiError, match=r"modules\.dep: no such file") as e:
        kmod.ModuleIndex(tmp_path)
    assert e.value.hint is not None and "depmod" in e.value.hint


real = kernel.cached()


@pytest.mark.skipif(real is None, reason="kernel not fetched (python -m vm_tests.kernel)")
def test_debian_cloud_kernel_default_set() -> None:
    """What the cloud flavour builds in, lacks and needs, as measured when written."""
    assert real is not None
    sel = kmod.ModuleIndex(real.moddir).select(kmod.DEFAULT_MODULES)
    got = names(sel)
    assert {"virtio_net", "virtio_blk", "virtio_pci", "virtio_scsi", "sd_mod", "vfat",
            "nfs"} <= set(got)
    # xfs (4.2 MB) only when asked for: --add-modules xfs.
    assert not {"xfs", "libcrc32c"} & set(got)
    # What the documented features need (NFS root, overlay, ESP, Secure Boot state).
    assert {"nfsv3", "nfsv4", "sunrpc", "overlay", "efivarfs", "nls_cp437", "nls_utf8"} \
        <= set(got)
    assert {"ext4", "nvme"} <= set(sel.builtin)
    # The cloud flavour has no physical NIC or AHCI drivers at all.
    assert {"e1000", "e1000e", "igb", "ixgbe", "ahci"} <= set(sel.absent)
    assert got.index("virtio_ring") < got.index("virtio") < got.index("virtio_pci")


@pytest.mark.skipif(real is None, reason="kernel not fetched (python -m vm_tests.kernel)")
def test_debian_modules_go_into_the_ramdisk_signed_byte_for_byte(tmp_path: Path) -> None:
    """Under Secure Boot the kernel loads only signed modules (measured under OVMF)."""
    assert real is not None
    index = kmod.ModuleIndex(real.moddir)
    for module in index.select(kmod.DEFAULT_MODULES).modules:
        data = kmod.materialize(real.moddir, module, tmp_path).read_bytes()
        assert data.endswith(SIGNED), module.relpath
        if module.compression is None:
            assert data == (real.moddir / module.relpath).read_bytes()


def test_modinfo_and_firmware_as_modinfo_reads_them(moddir: Path, tmp_path: Path) -> None:
    index = kmod.ModuleIndex(moddir)
    net = kmod.materialize(moddir, index.modules["virtio_net"], tmp_path)
    assert kmod.firmware(net) == ["virtio/fw.bin"]
    assert kmod.firmware(moddir / "kernel/fs/fat/vfat.ko") == []
    ko = tmp_path / "x.ko"
    ko.write_bytes(fake_ko("x", {"license": ["GPL"], "firmware": ["a.bin", "b/c.bin"]}))
    assert kmod.modinfo(ko) == [("license", "GPL"), ("firmware", "a.bin"),
                                ("firmware", "b/c.bin")]
    ko.write_bytes(b"not a module")
    with pytest.raises(SsiError, match="cannot read module info"):
        kmod.firmware(ko)
