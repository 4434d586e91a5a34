"""The crash-state checker's reading of an ESP (vm_tests/bootviews.py: grub_entry,
esp_view): GRUB's choice of entry in the configs bootpair.esp writes, torn or not, and
the firmware's view of shim and GRUB. No VM, no disk image: configs and dictionaries.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import subprocess

import pytest
import xxhash

from linuxrc_agent.bootpair.esp import CONFIG, GRUB_ESP, grub_args
from linuxrc_agent.bootpair.pair import FileId, LocalPair, PairMember, member_name
from vm_tests.bootviews import Expected, esp_view, grub_entry, grub_words

APPEND = 'root=LABEL=ssiroot console=ttyS0 ro foo="a b" q={x} h=#a'
FILES = {name: random.Random(i).randbytes(3000 + i) for i, name in
         enumerate(("k1", "i1", "k2", "i2", "shim", "grub"))}
SHIM, GRUB = "EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi"


def digest(name: str) -> str:
    return xxhash.xxh3_128_hexdigest(FILES[name])


def member(role: str, name: str, slot: str) -> PairMember:
    return PairMember(member_name(role, digest(name), slot),
                      FileId(len(FILES[name]), digest(name)))


def local(slot: str, kernel: str, initrd: str, append: str = APPEND) -> LocalPair:
    return LocalPair(member("kernel", kernel, slot), member("initrd", initrd, slot), append)


def test_grub_boots_the_entry_the_head_names_with_the_arguments_as_persisted() -> None:
    config = GRUB_ESP.render(local("b", "k2", "i2"), "b").decode()
    entry, odd = grub_entry(config)
    assert odd == [] and entry is not None
    assert (entry.label, entry.kernel, entry.initrd) == \
        ("ssi-b", f"/ssi/b/vmlinuz-{digest('k2')}", f"/ssi/b/initrd-{digest('i2')}")
    # The words GRUB passes on, as esp.grub_args spelled them: the quoted value one word.
    assert entry.append == grub_words(grub_args(APPEND))
    assert "foo=a b" in entry.append.split("\n")


def test_a_default_naming_no_entry_boots_the_first_as_grub_does() -> None:
    config = GRUB_ESP.render(local("b", "k2", "i2"), "b").decode()
    for default in ("ssi-c", "7"):
        entry, _odd = grub_entry(config.replace("set default=ssi-b", f"set default={default}"))
        assert entry is not None and entry.label == "ssi-a", default
    entry, _odd = grub_entry(config.replace("set default=ssi-b", "set default=1     "))
    assert entry is not None and entry.label == "ssi-b"


def test_a_spare_region_torn_at_any_sector_leaves_the_live_entry_as_it_was() -> None:
    """A power cut while the free region is rewritten: each sector old or new. Quotes of
    one version (an argument with a space) meet the other's unquoted text: the `#'` guard
    closes what a tear left open, so the live entry after it is read unchanged."""
    live = local("a", "k1", "i1")
    before = bytearray(GRUB_ESP.render(live, "a"))
    start = GRUB_ESP.offset("b")
    before[start:start + GRUB_ESP.region_size] = GRUB_ESP.region(
        "b", local("b", "k1", "i2", "quiet 'x=" + "a " * 300 + "'"))
    new = GRUB_ESP.region("b", local("b", "k2", "i2", APPEND + " w=" + "z" * 900 + " v='c d'"))
    sectors = len(new) // 512
    rng = random.Random(1)
    masks = {1, (1 << sectors) - 2, *(rng.randrange(1, 1 << sectors) for _ in range(150))}
    for mask in sorted(masks):
        mixed = bytearray(before)
        for s in range(sectors):
            if mask >> s & 1:
                mixed[start + s * 512:start + (s + 1) * 512] = new[s * 512:(s + 1) * 512]
        entry, odd = grub_entry(bytes(mixed).decode())
        assert odd == [] and entry is not None, (mask, odd)
        assert (entry.label, entry.kernel, entry.append) == \
            ("ssi-a", f"/{live.kernel.name}", grub_words(grub_args(APPEND))), mask


def test_without_the_guard_a_torn_quote_swallows_the_live_entry() -> None:
    # The checker's own check: a layout without the guard line, torn inside a quoted
    # argument of the spare entry (slot a, before the live b), is caught.
    config = GRUB_ESP.render(local("b", "k2", "i2"), "b").decode().replace("  #'\n", "  #\n")
    start = GRUB_ESP.offset("a")
    torn = config[:start] + config[start:].replace("/ssi/a/vmlinuz", "/ssi/a/vmlinuz 'x=a", 1)
    entry, odd = grub_entry(torn)
    assert odd and (entry is None or entry.label != "ssi-b" or
                    entry.kernel != f"/ssi/b/vmlinuz-{digest('k2')}"), (entry, odd)
    # With the guard, the same tear costs the spare entry only.
    guarded = GRUB_ESP.render(local("b", "k2", "i2"), "b").decode()
    guarded = guarded[:start] + guarded[start:].replace("/ssi/a/vmlinuz", "/ssi/a/vmlinuz 'x=a",
                                                        1)
    entry, odd = grub_entry(guarded)
    assert odd == [] and entry is not None and entry.label == "ssi-b"


@pytest.mark.skipif(shutil.which("grub-script-check") is None, reason="grub-common absent")
def test_grub_script_check_agrees_the_configs_parse() -> None:
    config = GRUB_ESP.render(local("b", "k2", "i2"), "b")
    assert subprocess.run(["grub-script-check"], input=config, check=False).returncode == 0
    assert subprocess.run(["grub-script-check"], input=config + b"menuentry x {\n",
                          check=False, capture_output=True).returncode != 0


def want(old_bootable: bool = True) -> Expected:
    return Expected((digest("k1"), digest("i1")), (digest("k2"), digest("i2")), APPEND, APPEND,
                    old_bootable=old_bootable,
                    loaders=((SHIM, digest("shim")), (GRUB, digest("grub"))))


def esp(slot: str = "b", **changes: bytes | None) -> dict[str, bytes]:
    pair = local(slot, "k2", "i2") if slot == "b" else local(slot, "k1", "i1")
    files = {f"/{CONFIG}": GRUB_ESP.render(pair, slot), SHIM: FILES["shim"],
             GRUB: FILES["grub"], f"/{pair.kernel.name}": FILES["k2" if slot == "b" else "k1"],
             f"/{pair.initrd.name}": FILES["i2" if slot == "b" else "i1"]}
    for name, data in changes.items():
        path = {"shim": SHIM, "grub": GRUB, "config": f"/{CONFIG}"}[name]
        if data is None:
            del files[path]
        else:
            files[path] = data
    return files


def test_the_firmware_view_shim_then_grub_then_the_config() -> None:
    assert (v := esp_view(esp("b").get, want())).pair == "new" and not v.problems
    assert (v := esp_view(esp("a").get, want())).pair == "old" and v.entry == "ssi-a"
    # No shim, or a loader not whole: the firmware (or shim) loads nothing and goes on to
    # the network; harm only where the disk booted before the sync (else only noted).
    for changes in ({"shim": None}, {"shim": b""}, {"shim": FILES["shim"][:-1]},
                    {"grub": None}, {"grub": b""}):
        view = esp_view(esp(**changes).get, want(old_bootable=False))  # type: ignore[arg-type]
        assert (view.pair, view.problems) == ("none", []), changes
        assert bool(view.notes) == (changes != {"shim": None}), changes  # no shim: as before
        view = esp_view(esp(**changes).get, want())  # type: ignore[arg-type]
        assert view.problems and not view.notes, changes
    # Past whole loaders nothing falls back: GRUB without its config stops at its prompt.
    assert esp_view(esp(config=None).get, want(old_bootable=False)).problems
    # The entry's arguments must be the pair's.
    other = GRUB_ESP.render(local("b", "k2", "i2", APPEND + " extra"), "b")
    assert esp_view(esp(config=other).get, want()).problems


def test_during_an_update_either_version_of_each_loader_is_whole() -> None:
    older = dataclasses.replace(want(), old_loaders=((SHIM, digest("k1")),
                                                     (GRUB, digest("i1"))))
    mixed = esp(shim=FILES["k1"])  # the older shim beside the newer GRUB: both Debian's
    assert esp_view(mixed.get, older).pair == "new"
    assert esp_view(esp(grub=FILES["i1"]).get, older).problems == []
    assert esp_view(esp(grub=FILES["i1"][:-1]).get, older).problems
