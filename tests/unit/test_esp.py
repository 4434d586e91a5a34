"""The ESP writer (bootpair.esp): grub.cfg's fixed layout, what GRUB reads from it (torn
or not), the loaders from the shared root, and the sync that ties them together.

Run on plain directories: an ESP is recognised by its EFI directory here (and,
on a UEFI machine, by being FAT: tests/integration and vm_tests/test_uefi.py).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linuxrc_agent.bootpair import esp
from linuxrc_agent.bootpair.esp import GRUB_ESP, REGION
from linuxrc_agent.bootpair.pair import SLOTS, FileId, LocalPair, PairMember, member_name
from linuxrc_agent.cmdline import tokenize
from linuxrc_agent.nodeenv import SyncStatus
from tests.unit.test_cmdline_grammar import grub_cmdline, grub_words, kernel_words

APPEND = 'root=LABEL=ssiroot console=ttyS0 ro foo="a b"'


def pair(slot: str, tag: str, append: str = APPEND) -> LocalPair:
    digest = (tag * 32)[:32]
    return LocalPair(PairMember(member_name("kernel", digest, slot), FileId(1000, digest)),
                     PairMember(member_name("initrd", digest, slot), FileId(2000, digest)),
                     append)


def entry(config: bytes, slot: str) -> list[str]:
    """The lines of slot's menu entry, as GRUB's script lexer would see the region."""
    start = GRUB_ESP.offset(slot)
    lines = config[start:start + REGION].decode().split("\n")
    first = lines.index(f"menuentry ssi-{slot} --unrestricted {{")
    return lines[first:lines.index("}", first) + 1]


def test_config_round_trip_and_what_grub_boots() -> None:
    p = pair("b", "c")
    config = GRUB_ESP.render(p, "b")
    assert len(config) == GRUB_ESP.size and GRUB_ESP.size % 512 == 0
    assert GRUB_ESP.layout(config) == (("b", p))
    head = config[:512].decode()
    assert "set default=ssi-b\nset timeout=0\n" in head and 'set superusers=""' in head
    linux = next(line for line in entry(config, "b") if line.startswith("  linux "))
    words = grub_words(linux.strip())
    assert words[:2] == ["linux", f"/{p.kernel.name}"]
    # What reaches the kernel: the persisted arguments, word for word.
    assert kernel_words(grub_cmdline(words[2:])) == kernel_words(APPEND)
    assert f"  initrd /{p.initrd.name}" in entry(config, "b")


def test_the_cluster_may_allow_editing_at_grubs_prompt() -> None:
    config = GRUB_ESP.render(pair("a", "c", APPEND + " ssi.loader_edit"), "a")
    assert b"superusers" not in config[:512]


def test_an_edited_or_foreign_config_is_not_ours() -> None:
    config = GRUB_ESP.render(pair("a", "c"), "a")
    assert GRUB_ESP.layout(config) is not None
    assert GRUB_ESP.layout(config.replace(b"set timeout=0", b"set timeout=9")) is None
    assert GRUB_ESP.layout(config.replace(b"ro foo", b"rw foo")) is None
    assert GRUB_ESP.layout(b"menuentry x { linux /vmlinuz }\n") is None
    # The spare region may hold any version of its entry, but lines where ours are.
    spare = GRUB_ESP.offset("b")
    assert GRUB_ESP.layout(config[:spare] + b"\n" + config[spare:-1]) is None
    # A region of one slot read as the other's is not ours either.
    a = GRUB_ESP.region("a", pair("a", "c"))
    assert GRUB_ESP._region("b", a) == (False, None)


def test_words_grub_cannot_carry_are_left_out_of_the_entry_but_kept_recorded() -> None:
    append = "root=/dev/vda x=it's y=a\\b z=1"
    config = GRUB_ESP.render(pair("a", "c", append), "a")
    linux = next(line for line in entry(config, "a") if line.startswith("  linux "))
    assert kernel_words(grub_cmdline(grub_words(linux.strip())[2:]))[0] == \
        [("root", "/dev/vda"), ("z", "1")]
    assert GRUB_ESP.parse(config) == pair("a", "c", append)


_WORDS = st.sampled_from(["root=/dev/vda", 'x="a b"', "q={x}", "h=#a", "s=a;b", "d=$x",
                          "y", "--", "w=}", "v={", 'k="} {"', "c=ttyS0"])


def _quote_and_braces(region: str) -> tuple[bool, list[str]]:
    """(a single quote still open at the end, the braces GRUB's lexer sees as syntax):
    single quotes, comments from a # opening a word, blanks and newlines between words."""
    in_quote = in_comment = False
    word_start = True
    braces = []
    for c in region:
        if in_comment:
            in_comment = c != "\n"
            word_start = True
        elif in_quote:
            in_quote = c != "'"
        elif c == "'":
            in_quote, word_start = True, False
        elif c == "#" and word_start:
            in_comment = True
        elif c in " \t\n":
            word_start = True
        else:
            if c in "{}":
                braces.append(c)
            word_start = False
    return in_quote, braces


@settings(max_examples=150, deadline=None)
@given(st.lists(_WORDS, max_size=12), st.lists(_WORDS, max_size=12), st.data())
def test_a_region_torn_between_two_versions_stays_one_entry(
        old_words: list[str], new_words: list[str], data: st.DataObject) -> None:
    # A power cut mid-write leaves each 512-byte sector of the spare region old or
    # new: whatever the mix, no quote stays open past the entry and the only braces
    # GRUB sees are the entry's own, so the live region after it is read intact.
    old = GRUB_ESP.region("a", pair("a", "c", " ".join(old_words)))
    new = GRUB_ESP.region("a", pair("a", "d", " ".join(new_words)))
    sectors = REGION // 512
    mask = data.draw(st.lists(st.booleans(), min_size=sectors, max_size=sectors))
    torn = b"".join((new if m else old)[i * 512:(i + 1) * 512] for i, m in enumerate(mask))
    open_quote, braces = _quote_and_braces(torn.decode())
    assert not open_quote and braces == ["{", "}"]


def test_every_tear_of_a_quoted_entry_is_closed_by_the_guard() -> None:
    old = GRUB_ESP.region("b", pair("b", "c", "root=/dev/vda 'a b' x=1"))
    new = GRUB_ESP.region("b", pair("b", "d", 'root=/dev/vda q="{ ; }" m="#"'))
    sectors = REGION // 512
    for mask in itertools.product((False, True), repeat=sectors):
        torn = b"".join((new if m else old)[i * 512:(i + 1) * 512] for i, m in enumerate(mask))
        assert _quote_and_braces(torn.decode()) == (False, ["{", "}"]), mask


# -- the loaders and the sync


def shared_root(tmp: Path) -> Path:
    root = tmp / "root"
    for path, data in (("usr/lib/shim/shimx64.efi.signed", b"shim"),
                       ("usr/lib/shim/mmx64.efi.signed", b"mokmanager"),
                       ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", b"grub"),
                       ("boot/vmlinuz", b"K" * 5000), ("boot/initrd.img", b"I" * 7000)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def sync(root: Path, part: Path, *, uefi: bool = True, append: str = APPEND,
         writes: list[str] | None = None) -> tuple[SyncStatus, str]:
    result = esp.sync_boot_partition(part, root / "boot/vmlinuz", root / "boot/initrd.img",
                                     append, root=root, uefi=uefi,
                                     before_write=lambda: (writes or []).append("rw"))
    return result.status, result.reason


@pytest.fixture
def trees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    # The boot partition: an empty directory that the test calls FAT.
    monkeypatch.setattr(esp.syscalls, "fs_magic", lambda path: esp.syscalls.MSDOS_SUPER_MAGIC)
    part = tmp_path / "esp"
    part.mkdir()
    return shared_root(tmp_path), part


def test_an_empty_esp_becomes_bootable_then_is_left_alone(trees: tuple[Path, Path]) -> None:
    root, part = trees
    status, reason = sync(root, part)
    assert status is SyncStatus.UPDATED, reason
    assert "installed EFI/BOOT/grubx64.efi, EFI/BOOT/mmx64.efi, EFI/BOOT/BOOTX64.EFI" in reason
    assert (part / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"shim"
    assert (part / "EFI/BOOT/grubx64.efi").read_bytes() == b"grub"
    layout = GRUB_ESP.layout((part / "EFI/BOOT/grub.cfg").read_bytes())
    assert layout is not None and layout.pair is not None
    assert (part / layout.pair.kernel.name).read_bytes() == b"K" * 5000
    before = {p: p.stat().st_mtime_ns for p in part.rglob("*")}
    writes: list[str] = []
    assert sync(root, part, writes=writes) == (SyncStatus.UNCHANGED, "")
    assert writes == [] and {p: p.stat().st_mtime_ns for p in part.rglob("*")} == before


def test_a_new_pair_commits_in_the_other_slot_and_new_loaders_follow(
        trees: tuple[Path, Path]) -> None:
    root, part = trees
    sync(root, part)
    (root / "boot/initrd.img").write_bytes(b"J" * 7000)
    (root / "usr/lib/shim/shimx64.efi.signed").write_bytes(b"shim 2")
    status, reason = sync(root, part)
    assert status is SyncStatus.UPDATED and "installed EFI/BOOT/BOOTX64.EFI" in reason
    layout = GRUB_ESP.layout((part / "EFI/BOOT/grub.cfg").read_bytes())
    assert layout is not None and layout.pair is not None and layout.live == SLOTS[1]
    assert (part / layout.pair.initrd.name).read_bytes() == b"J" * 7000
    assert (part / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"shim 2"
    assert sorted(os.listdir(part / "ssi" / SLOTS[0])) == []


def test_extlinux_partitions_and_bios_machines_keep_extlinux(trees: tuple[Path, Path]) -> None:
    root, part = trees
    (part / "ldlinux.sys").write_bytes(b"extlinux")
    assert sync(root, part)[0] is SyncStatus.UPDATED
    assert (part / "extlinux.conf").is_file() and not (part / "EFI").exists()
    (part / "ldlinux.sys").unlink()
    (part / "extlinux.conf").unlink()
    assert not esp.is_esp(part, uefi=False)  # an empty FAT partition on a BIOS machine
    assert esp.is_esp(part, uefi=True)
    (part / "EFI").mkdir()
    assert esp.is_esp(part, uefi=False)  # an ESP whichever firmware syncs it


def test_missing_loaders_and_a_foreign_config_fail_before_writing(
        trees: tuple[Path, Path]) -> None:
    root, part = trees
    (root / "usr/lib/shim/shimx64.efi.signed").unlink()
    status, reason = sync(root, part)
    assert status is SyncStatus.FAILED and "shimx64.efi.signed" in reason
    assert "shim-signed" in reason and list(part.iterdir()) == []
    (root / "usr/lib/shim/shimx64.efi.signed").write_bytes(b"shim")
    (part / "EFI/debian").mkdir(parents=True)
    (part / "EFI/debian/grub.cfg").write_text("search ...\n")
    status, reason = sync(root, part)
    assert status is SyncStatus.FAILED and "EFI/debian/grub.cfg" in reason
    assert not (part / "EFI/BOOT").exists()


def test_tokenize_agrees_on_the_recorded_arguments(trees: tuple[Path, Path]) -> None:
    root, part = trees
    sync(root, part, append=APPEND + " -- single")
    recorded = GRUB_ESP.parse((part / "EFI/BOOT/grub.cfg").read_bytes())
    assert recorded is not None and tokenize(recorded.append) == tokenize(APPEND + " -- single")
