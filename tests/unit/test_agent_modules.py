"""Kernel modules: .modinfo parsing, modalias matching, the load plan and missing drivers.

Modules are small synthetic ELF64 objects holding only a .modinfo section
(what the agent reads); devices are a fake /sys/bus tree. Actual loading
(finit_module) is stubbed: it needs a kernel, and the QEMU boots cover it.
"""

from __future__ import annotations

import errno
import fnmatch
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linuxrc_agent import modules
from linuxrc_agent.kmodinfo import AliasIndex, module_name, read_alias_file, read_modinfo
from linuxrc_agent.modules import Loader, devices, missing_drivers, read_order


def make_ko(path: Path, *items: str) -> Path:
    """A minimal relocatable ELF64 with a .modinfo section of NUL-separated key=value items."""
    modinfo = b"".join(i.encode() + b"\0" for i in items)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    body = modinfo + shstrtab
    shoff = 64 + len(body)
    shoff += -shoff % 8
    ehdr = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    sections = [
        bytes(64),
        struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, 64, len(modinfo), 0, 0, 1, 0),
        struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, 64 + len(modinfo), len(shstrtab), 0, 0, 1, 0),
    ]
    data = ehdr + body
    data += bytes(shoff - len(data)) + b"".join(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_module_name() -> None:
    assert module_name("/lib/modules/k/kernel/a/virtio_blk.ko") == "virtio_blk"
    assert module_name("crc32c-intel.ko.zst") == "crc32c_intel"
    assert module_name("x/nls_cp437.ko.xz") == "nls_cp437"


def test_read_modinfo(tmp_path: Path) -> None:
    ko = make_ko(tmp_path / "virtio_blk.ko", "license=GPL", "alias=virtio:d00000002v*",
                 "depends=virtio,virtio_ring", "softdep=pre: crc32c post: foo-bar",
                 "name=virtio_blk", "vermagic=6.1.0 SMP mod_unload")
    info = read_modinfo(str(ko))
    assert info.name == "virtio_blk"
    assert info.aliases == ("virtio:d00000002v*",)
    assert info.depends == ("virtio", "virtio_ring")
    assert info.softdeps == ("crc32c", "foo-bar")


def test_read_modinfo_without_name_uses_the_file_name(tmp_path: Path) -> None:
    info = read_modinfo(str(make_ko(tmp_path / "crc32c-intel.ko", "depends=")))
    assert info.name == "crc32c_intel" and info.depends == ()


@pytest.mark.parametrize("content", [b"", b"\x7fELF\x01\x01" + bytes(58), b"\x28\xb5\x2f\xfd",
                                     b"\x7fELF\x02\x01" + bytes(58)])
def test_read_modinfo_rejects_what_is_not_a_module(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.ko"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        read_modinfo(str(path))


def test_read_modinfo_truncated(tmp_path: Path) -> None:
    good = make_ko(tmp_path / "x.ko", "alias=a")
    path = tmp_path / "cut.ko"
    path.write_bytes(good.read_bytes()[:-70])
    with pytest.raises(ValueError):
        read_modinfo(str(path))


PATTERNS = [
    ("pci:v00001AF4d00001001sv*sd*bc*sc*i*", "virtio_pci"),
    ("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio_pci"),
    ("pci:v*d*sv*sd*bc01sc06i01*", "ahci"),
    ("virtio:d00000002v*", "virtio_blk"),
    ("virtio:d00000001v*", "virtio_net"),
    ("acpi*:PNP0501:*", "serial"),
    ("usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*", "usb_storage"),
    ("fs-vfat", "vfat"),
    ("scsi:t-0x0[07]*", "sd_mod"),
    ("*", "catchall"),
]


@pytest.mark.parametrize(("modalias", "expected"), [
    ("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", {"virtio_pci", "catchall"}),
    ("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", {"ahci", "catchall"}),
    ("virtio:d00000002v00001AF4", {"virtio_blk", "catchall"}),
    ("acpi:PNP0501:", {"serial", "catchall"}),
    ("scsi:t-0x07", {"sd_mod", "catchall"}),
    ("scsi:t-0x05", {"catchall"}),
    ("fs-vfat", {"vfat", "catchall"}),
])
def test_alias_index(modalias: str, expected: set[str]) -> None:
    assert AliasIndex(PATTERNS).match(modalias) == expected


_alias_chars = st.sampled_from("pciv0123ABd:*?-")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(_alias_chars, min_size=1, max_size=12), min_size=1, max_size=20),
       st.text(st.sampled_from("pciv0123ABd:-"), max_size=14))
def test_alias_index_agrees_with_plain_fnmatch(patterns: list[str], modalias: str) -> None:
    pairs = [(p, f"m{i}") for i, p in enumerate(patterns)]
    brute = {m for p, m in pairs if fnmatch.fnmatchcase(modalias, p)}
    assert AliasIndex(pairs).match(modalias) == brute


def test_read_alias_file(tmp_path: Path) -> None:
    f = tmp_path / "modules.alias"
    f.write_text("# Aliases extracted from modules themselves.\nalias fs-vfat vfat\n"
                 "alias pci:v*d*sv*sd*bc01sc06i01* ahci\nbogus line\n")
    assert read_alias_file(str(f)) == [("fs-vfat", "vfat"), ("pci:v*d*sv*sd*bc01sc06i01*", "ahci")]


def fake_device(sys: Path, bus: str, name: str, modalias: str, bound: bool = False) -> None:
    d = sys / "bus" / bus / "devices" / name
    d.mkdir(parents=True)
    (d / "modalias").write_text(modalias + "\n")
    if bound:
        (d / "driver").symlink_to("/nonexistent/driver")  # only its presence counts


def test_devices(tmp_path: Path) -> None:
    fake_device(tmp_path, "pci", "0000:00:04.0", "pci:v00001AF4d00001001sv0sd0bc01sc00i00")
    fake_device(tmp_path, "virtio", "virtio0", "virtio:d00000002v00001AF4", bound=True)
    (tmp_path / "bus" / "cpu" / "devices" / "cpu0").mkdir(parents=True)  # no modalias
    got = [(d.syspath.rsplit("/", 1)[1], d.bound) for d in devices(str(tmp_path))]
    assert got == [("0000:00:04.0", False), ("virtio0", True)]
    assert devices(str(tmp_path / "nosys")) == []


class Ramdisk:
    """Carried modules (synthetic .ko files), their order file, a fake sysfs and kernel."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.sys = root / "sys"
        (self.sys / "bus").mkdir(parents=True)
        self.paths: list[str] = []
        self.loaded: list[tuple[str, str]] = []
        self.refuse: dict[str, int] = {}
        self.on_load: dict[str, tuple[str, str, str]] = {}  # module -> device it creates
        monkeypatch.setattr(modules, "load_file", self._load)

    def carry(self, name: str, *items: str) -> None:
        path = make_ko(self.root / "lib" / f"{name}.ko", f"name={name}", *items)
        self.paths.append(str(path))

    def _load(self, path: str, params: str = "") -> int:
        name = module_name(path)
        if name in self.refuse:
            return self.refuse[name]
        if name in (n for n, _ in self.loaded):
            return errno.EEXIST
        self.loaded.append((name, params))
        if name in self.on_load:
            fake_device(self.sys, *self.on_load[name])
        return 0

    def loader(self, **kw: object) -> Loader:
        return Loader(self.paths, sys=str(self.sys), proc_modules=str(self.root / "modules"),
                      **kw)  # type: ignore[arg-type]

    def names(self) -> list[str]:
        return [n for n, _ in self.loaded]


@pytest.fixture
def ramdisk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ramdisk:
    rd = Ramdisk(tmp_path, monkeypatch)
    # Dependencies first, as the builder writes /etc/ssi/modules.
    rd.carry("virtio_ring")
    rd.carry("virtio", "depends=virtio_ring")
    rd.carry("virtio_pci", "alias=pci:v00001AF4d*sv*sd*bc*sc*i*", "depends=virtio,virtio_ring")
    rd.carry("virtio_blk", "alias=virtio:d00000002v*", "depends=virtio,virtio_ring")
    rd.carry("virtio_net", "alias=virtio:d00000001v*", "depends=virtio,virtio_ring")
    rd.carry("crc32c_generic", "alias=crypto-crc32c", "alias=crc32c")
    rd.carry("libcrc32c", "softdep=pre: crc32c")
    rd.carry("xfs", "alias=fs-xfs", "depends=libcrc32c")
    rd.carry("fat")
    rd.carry("vfat", "alias=fs-vfat", "depends=fat")
    rd.carry("nls_cp437", "alias=nls_cp437")
    rd.carry("e1000e", "alias=pci:v00008086d000010D3sv*sd*bc*sc*i*")
    return rd


def test_load_matching_follows_devices_that_drivers_create(ramdisk: Ramdisk) -> None:
    fake_device(ramdisk.sys, "pci", "0000:00:04.0",
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00")
    ramdisk.on_load["virtio_pci"] = ("virtio", "virtio0", "virtio:d00000002v00001AF4")
    loader = ramdisk.loader()
    new = loader.load_matching()
    assert new == ramdisk.names() == ["virtio_ring", "virtio", "virtio_pci", "virtio_blk"]
    assert loader.load_matching() == []  # nothing new: nothing loaded twice


def test_no_devices_at_all_is_an_error(ramdisk: Ramdisk) -> None:
    with pytest.raises(ValueError, match="no device"):
        ramdisk.loader().load_matching()


def test_bound_devices_need_nothing(ramdisk: Ramdisk) -> None:
    fake_device(ramdisk.sys, "pci", "0000:00:04.0", "pci:v00001AF4d00001001sv0sd0bc01sc00i00",
                bound=True)
    assert ramdisk.loader().load_matching() == []


def test_load_filesystem_with_softdeps_and_deps(ramdisk: Ramdisk) -> None:
    loader = ramdisk.loader()
    assert loader.load_filesystem("xfs") == ["crc32c_generic", "libcrc32c", "xfs"]
    assert loader.load_filesystem("vfat") == ["fat", "vfat", "nls_cp437"]
    assert loader.load_filesystem("ext4") == []  # not carried: built in, or missing


def test_load_all_in_order_with_params_and_blacklist(ramdisk: Ramdisk) -> None:
    ramdisk.refuse["e1000e"] = errno.ENODEV
    loader = ramdisk.loader(params={"virtio_blk": "queue_depth=64"}, blacklist=["nls-cp437"])
    loader.load_all()
    assert ramdisk.names() == [module_name(p) for p in ramdisk.paths
                               if not p.endswith(("nls_cp437.ko", "e1000e.ko"))]
    assert ("virtio_blk", "queue_depth=64") in ramdisk.loaded
    assert loader.report.mode == "all"
    assert loader.report.absent == ["e1000e"]
    assert loader.report.failed == {}


def test_failures_and_already_loaded(ramdisk: Ramdisk) -> None:
    (ramdisk.root / "modules").write_text("virtio_ring 40960 2 virtio, Live 0x0\n")
    ramdisk.refuse["virtio"] = errno.ENOENT
    loader = ramdisk.loader()
    loader.load(["virtio_ring", "virtio"])
    assert loader.report.already == ["virtio_ring"]
    assert "unknown symbol" in loader.report.failed["virtio"]


def test_closure_orders_by_the_builders_list(ramdisk: Ramdisk) -> None:
    assert ramdisk.loader().closure(["virtio_blk", "virtio_net"]) == \
        ["virtio_ring", "virtio", "virtio_blk", "virtio_net"]
    assert ramdisk.loader().closure(["fs-vfat"]) == ["fat", "vfat"]


def test_missing_drivers(ramdisk: Ramdisk, tmp_path: Path) -> None:
    fake_device(ramdisk.sys, "virtio", "virtio0", "virtio:d00000002v00001AF4")
    fake_device(ramdisk.sys, "virtio", "virtio1", "virtio:d00000004v00001AF4")
    fake_device(ramdisk.sys, "pci", "0000:00:1f.2", "pci:v00008086d00002922sv0sd0bc01sc06i01")
    fake_device(ramdisk.sys, "pci", "0000:00:03.0", "pci:v00008086d0000100Esv0sd0bc02sc00i00",
                bound=True)
    fake_device(ramdisk.sys, "acpi", "QEMU0002:00", "acpi:QEMU0002:")
    fake_device(ramdisk.sys, "platform", "QEMU0002:00", "acpi:QEMU0002:")
    alias = tmp_path / "modules.alias"
    alias.write_text("alias virtio:d00000002v* virtio_blk\nalias virtio:d00000004v* virtio_rng\n"
                     "alias pci:v*d*sv*sd*bc01sc06i01* ahci\nalias pci:v00008086d0000100Esv*sd*"
                     "bc*sc*i* e1000\nalias acpi*:QEMU0002:* qemu_fw_cfg\n")
    found = missing_drivers(ramdisk.loader(), str(alias))
    got = [(m.name, m.modules, m.carried, m.important) for m in found]
    assert got == [
        ("0000:00:1f.2", ("ahci",), False, True),
        ("virtio0", ("virtio_blk",), True, True),
        ("virtio1", ("virtio_rng",), False, True),
        ("QEMU0002:00", ("qemu_fw_cfg",), False, False),  # once, though on two buses
    ]
    assert missing_drivers(ramdisk.loader(), str(tmp_path / "none")) == []


def test_read_order(tmp_path: Path) -> None:
    f = tmp_path / "modules"
    f.write_text("/lib/modules/k/a.ko\n\n# comment\n/lib/modules/k/b.ko\n")
    assert read_order(str(f)) == ["/lib/modules/k/a.ko", "/lib/modules/k/b.ko"]
    assert read_order(str(tmp_path / "none")) == []


def test_parallel_loading_waits_for_dependencies_and_overlaps_the_rest(
        ramdisk: Ramdisk, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def slow_load(path: str, params: str = "") -> int:
        name = module_name(path)
        with lock:
            events.append(("start", name))
        time.sleep(0.05)
        with lock:
            events.append(("end", name))
        return errno.ENODEV if name == "e1000e" else 0

    monkeypatch.setattr(modules, "load_file", slow_load)
    loader = ramdisk.loader(parallel=True)
    names = loader.closure(["virtio_blk", "virtio_net", "fs-vfat", "e1000e"])
    new = loader.load(names)
    # Reported in the builder's order, whatever order they finished in.
    assert new == [n for n in names if n != "e1000e"]
    assert loader.report.loaded == new and loader.report.absent == ["e1000e"]
    at = {(kind, name): i for i, (kind, name) in enumerate(events)}
    for module, deps in {"virtio": ["virtio_ring"], "virtio_blk": ["virtio", "virtio_ring"],
                         "virtio_net": ["virtio", "virtio_ring"], "vfat": ["fat"]}.items():
        assert all(at["end", d] < at["start", module] for d in deps), (module, events)
    # Independent modules ran side by side: virtio_blk and virtio_net, fat and virtio_ring.
    assert at["start", "virtio_net"] < at["end", "virtio_blk"]
    assert at["start", "fat"] < at["end", "virtio_ring"]


def test_parallel_loading_falls_back_to_order_without_metadata(
        ramdisk: Ramdisk, tmp_path: Path) -> None:
    (tmp_path / "lib" / "virtio.ko").write_bytes(b"not an ELF file")
    loader = ramdisk.loader(parallel=True)
    loader.load(["virtio_ring", "virtio", "virtio_blk"])
    assert ramdisk.names() == ["virtio_ring", "virtio", "virtio_blk"]
