"""Console lines: the `linuxrc:` prefix, markers, debug timestamps, the start-time lookup."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from linuxrc_agent import console


@pytest.fixture(autouse=True)
def no_debug() -> Iterator[None]:
    yield
    console.set_debug(False)


def test_every_line_is_prefixed(capfd: pytest.CaptureFixture[str]) -> None:
    console.say("one\ntwo")
    console.warn("careful\ndetail")
    console.fatal("broken\nwhy")
    console.debug("hidden")
    assert capfd.readouterr().out == (
        "linuxrc: one\nlinuxrc: two\n"
        "linuxrc: warning: careful\nlinuxrc:          detail\n"
        "linuxrc: FATAL: broken\nlinuxrc:        why\n")


def test_debug_adds_timestamps(capfd: pytest.CaptureFixture[str]) -> None:
    console.set_debug(True)
    console.debug("step")
    console.say("stage")
    out = capfd.readouterr().out.splitlines()
    assert all(re.fullmatch(r"linuxrc: \[ *\d+\.\d{3}\] (step|stage)", line) for line in out)


def test_unencodable_text_does_not_raise(capfd: pytest.CaptureFixture[str]) -> None:
    console.say("bad \udcff byte")
    assert capfd.readouterr().out.startswith("linuxrc: bad ")


def test_exec_time_from_kmsg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(b"6,1,100,-;Linux version 6.1.0\n"
                     b"6,420,2877800,-;Run /init as init process\n"
                     b" SUBSYSTEM=whatever\n"
                     b"6,421,2900000,-;Run /init as init process, but not this one\n")
    assert console._exec_time(str(kmsg)) == pytest.approx(2.8778)
    monkeypatch.setattr(console, "_clock_start", 5.0)
    assert console.refine_start(str(kmsg)) == pytest.approx(5.0 - 2.8778)
    assert console._clock_start == pytest.approx(2.8778)


@pytest.mark.parametrize("content", [b"", b"garbage without fields\n",
                                     b"6,x,notanumber,-;Run /init as init process\n"])
def test_exec_time_unknown(tmp_path: Path, content: bytes) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(content)
    assert console._exec_time(str(kmsg)) is None
    assert console._exec_time(str(tmp_path / "none")) is None


def test_a_later_start_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(b"6,1,9000000,-;Run /init as init process\n")
    monkeypatch.setattr(console, "_clock_start", 5.0)
    assert console.refine_start(str(kmsg)) == 0.0  # a clock mismatch: keep Python's start
    assert console._clock_start == 5.0
