"""The agent's kernel command line: the contract's keys, kernel quoting, hostile input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linuxrc_agent.cmdline import (
    DEFAULT_INIT,
    DEFAULT_INITRD,
    DEFAULT_KERNEL,
    DEFAULT_TIMEOUT,
    Cmdline,
    parse,
    read,
    split,
)


def test_defaults() -> None:
    c = parse("")
    assert c == Cmdline()
    assert (c.root, c.readonly, c.init, c.kernel, c.initrd, c.timeout, c.debug) == \
        (None, True, DEFAULT_INIT, DEFAULT_KERNEL, DEFAULT_INITRD, DEFAULT_TIMEOUT, False)


def test_a_real_command_line() -> None:
    c = parse("BOOT_IMAGE=/vmlinuz console=ttyS0 panic=-1 root=LABEL=ssiroot rootfstype=ext4 "
              "rootflags=noatime,data=ordered rw init=/lib/systemd/systemd "
              "ssi.kernel=/boot/vmlinuz-6.1 ssi.initrd=/boot/initrd-6.1.img "
              "ssi.bootif=52-54-00-12-34-01 ssi.break=root ssi.debug ssi.timeout=5 quiet\n")
    assert c.root == "LABEL=ssiroot"
    assert c.rootfstype == "ext4"
    assert c.rootflags == "noatime,data=ordered"
    assert c.readonly is False
    assert c.init == "/lib/systemd/systemd"
    assert (c.kernel, c.initrd) == ("/boot/vmlinuz-6.1", "/boot/initrd-6.1.img")
    assert c.bootif == "52:54:00:12:34:01"
    assert c.breaks == ("root",)
    assert c.debug is True
    assert c.timeout == 5.0
    assert c.warnings == ()


@pytest.mark.parametrize(("text", "words"), [
    ('a b  c', [("a", None), ("b", None), ("c", None)]),
    ('k="a b" x', [("k", "a b"), ("x", None)]),
    ('"k=a b" x', [("k", "a b"), ("x", None)]),
    ('k=v=w', [("k", "v=w")]),
    ('k=', [("k", "")]),
    ('a -- root=/dev/sdz init=/bin/x', [("a", None)]),  # after --: init's arguments
    ('k="unterminated value', [("k", "unterminated value")]),
    ('\t\nk=v\n', [("k", "v")]),
])
def test_split_follows_the_kernel(text: str, words: list[tuple[str, str | None]]) -> None:
    assert split(text) == words


def test_quoted_values_reach_the_fields() -> None:
    c = parse('root="LABEL=my root" rootflags="data=journal"')
    assert c.root == "LABEL=my root"
    assert c.rootflags == "data=journal"


def test_ro_rw_last_one_wins() -> None:
    assert parse("rw ro").readonly is True
    assert parse("ro rw").readonly is False
    assert parse("ro=1").readonly is True  # not the flag: ignored, default stays


def test_pxelinux_bootif_and_ssi_bootif_wins() -> None:
    assert parse("BOOTIF=01-52-54-00-AB-CD-EF").bootif == "52:54:00:ab:cd:ef"
    both = parse("BOOTIF=01-52-54-00-ab-cd-ef ssi.bootif=52:54:00:00:00:01")
    assert both.bootif == "52:54:00:00:00:01"
    both = parse("ssi.bootif=52:54:00:00:00:01 BOOTIF=01-52-54-00-ab-cd-ef")
    assert both.bootif == "52:54:00:00:00:01"


@pytest.mark.parametrize("text", [
    "BOOTIF=52-54-00-ab-cd-ef", "BOOTIF=06-52-54-00-ab-cd-ef", "BOOTIF=01-52-54-00-ab-cd",
    "ssi.bootif=nonsense", "ssi.bootif", "ssi.bootif=52:54:00:ab:cd:ef:00",
])
def test_bad_bootif_warns(text: str) -> None:
    c = parse(text)
    assert c.bootif is None
    assert len(c.warnings) == 1


def test_breaks() -> None:
    assert parse("ssi.break").breaks == ("switch_root",)
    assert parse("ssi.break=ROOT,modules ssi.break=root").breaks == ("root", "modules")
    c = parse("ssi.break=root,$(reboot)")
    assert c.breaks == ("root",)
    assert "$(reboot)" in c.warnings[0]


@pytest.mark.parametrize(("value", "expected"), [
    ("1", 1.0), ("2.5", 2.5), ("86400", 86400.0),
    ("0", DEFAULT_TIMEOUT), ("-3", DEFAULT_TIMEOUT), ("nan", DEFAULT_TIMEOUT),
    ("inf", DEFAULT_TIMEOUT), ("1e400", DEFAULT_TIMEOUT), ("86401", DEFAULT_TIMEOUT),
    ("thirty", DEFAULT_TIMEOUT), ("", DEFAULT_TIMEOUT), ("9" * 5000, DEFAULT_TIMEOUT),
])
def test_timeout(value: str, expected: float) -> None:
    c = parse(f"ssi.timeout={value}")
    assert c.timeout == expected
    assert bool(c.warnings) == (expected == DEFAULT_TIMEOUT)


def test_bare_timeout_warns() -> None:
    c = parse("ssi.timeout")
    assert c.timeout == DEFAULT_TIMEOUT
    assert c.warnings


@pytest.mark.parametrize(("text", "debug"), [
    ("ssi.debug", True), ("ssi.debug=1", True), ("ssi.debug=yes", True),
    ("ssi.debug=0", False), ("ssi.debug=off", False), ("ssi.debug ssi.debug=0", False),
])
def test_debug(text: str, debug: bool) -> None:
    c = parse(text)
    assert c.debug is debug
    assert c.warnings == ()


def test_debug_garbage_warns_and_stays_off() -> None:
    c = parse("ssi.debug=maybe")
    assert c.debug is False
    assert c.warnings


@pytest.mark.parametrize("text", [
    "init=sbin/init", "init=", "init", "ssi.kernel=vmlinuz", "ssi.initrd=",
    "init=/sbin/\x01init", "init=/" + "a" * 5000,
])
def test_paths_must_be_absolute_and_sane(text: str) -> None:
    c = parse(text)
    assert (c.init, c.kernel, c.initrd) == (DEFAULT_INIT, DEFAULT_KERNEL, DEFAULT_INITRD)
    assert len(c.warnings) == 1


@pytest.mark.parametrize("text", ["root=", "root", "root=" + "x" * 5000, "rootfstype=EXT4",
                                  "rootfstype=ext4;rm", "rootfstype"])
def test_bad_root_values_warn(text: str) -> None:
    c = parse(text)
    assert c.root is None and c.rootfstype is None
    assert c.warnings


def test_warning_shortens_huge_values() -> None:
    c = parse("ssi.bootif=" + "z" * 100000)
    assert len(c.warnings[0]) < 200


def test_module_parameters_and_blacklist() -> None:
    c = parse('virtio_blk.queue_depth=64 e1000e.IntMode=1 e1000e.debug foo-bar.x="a b" '
              'modprobe.blacklist=floppy,pcspkr ssi.unknown=1 net.ifnames=0')
    assert c.params_for("virtio_blk") == "queue_depth=64"
    assert c.params_for("e1000e") == "IntMode=1 debug"
    assert c.params_for("foo_bar") == 'x="a b"'
    assert c.params_for("ssi") == ""
    assert c.blacklist == ("floppy", "pcspkr")
    assert c.warnings == ()


def test_module_mode() -> None:
    assert parse("").modules == "auto"
    assert parse("ssi.modules=all").modules == "all"
    c = parse("ssi.modules=most")
    assert c.modules == "auto" and c.warnings


def test_overlay() -> None:
    assert parse("").overlay == ""
    assert parse("ssi.overlay=tmpfs").overlay == "tmpfs"
    assert parse("ssi.overlay=tmpfs ssi.overlay=none").overlay == ""  # the last one wins
    for text in ("ssi.overlay", "ssi.overlay=zram", "ssi.overlay=TMPFS"):
        c = parse(text)
        assert c.overlay == "" and c.warnings == (
            f"ignoring ssi.overlay={(text.partition('=')[2])!r}: expected tmpfs (or none)",)
    c = parse("root=nfs4:10.77.0.1:/srv/ssiroot:vers=4.2,timeo=14 ssi.overlay=tmpfs")
    assert (c.root, c.overlay) == ("nfs4:10.77.0.1:/srv/ssiroot:vers=4.2,timeo=14", "tmpfs")


def test_unknown_keys_are_ignored() -> None:
    assert parse("quiet splash ssi.future=1 foo=bar loglevel=3") == Cmdline()


def test_nul_bytes_and_huge_input() -> None:
    assert parse("root=/dev/vda\0ssi.debug").debug is True
    c = parse("x " * 1_000_000 + "root=/dev/vda")
    assert c.root is None  # beyond MAX_CMDLINE: not a real kernel command line


def test_read(tmp_path: Path) -> None:
    f = tmp_path / "cmdline"
    f.write_bytes(b"root=/dev/vda ssi.debug \xff\xfe\n")
    c = read(str(f))
    assert c.root == "/dev/vda" and c.debug
    missing = read(str(tmp_path / "nope"))
    assert missing.root is None and missing.warnings


_words = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["root", "rootfstype", "rootflags", "ro", "rw", "init", "ssi.kernel",
                     "ssi.initrd", "ssi.bootif", "BOOTIF", "ssi.break", "ssi.debug",
                     "ssi.timeout", "ssi.modules", "modprobe.blacklist", "x.y"]).flatmap(
        lambda k: st.text(max_size=40).map(lambda v: f"{k}={v}")),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_words, max_size=12).map(" ".join))
def test_never_raises(text: str) -> None:
    c = parse(text)
    assert c.timeout > 0
    assert c.init.startswith("/")
    assert all(isinstance(w, str) for w in c.warnings)
