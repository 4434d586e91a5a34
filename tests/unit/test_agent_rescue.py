"""The rescue shell runs as a child on a terminal of its own; a shell that cannot start is
reported as absent, so the agent reboots instead of looping."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from linuxrc_agent import rescue


@pytest.fixture
def pty() -> Iterator[str]:
    """A terminal's path for the shell; its master side stays open meanwhile."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    try:
        yield name
    finally:
        os.close(master)


def script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def test_shell_runs_on_its_tty_with_a_clean_environment(
        tmp_path: Path, pty: str, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = pty
    monkeypatch.setenv("LD_LIBRARY_PATH", "/ssi/agent/_internal")
    out = tmp_path / "out"
    shell = script(tmp_path / "sh", f"#!/bin/sh\n{{ tty; echo \"[$LD_LIBRARY_PATH]\"; "
                                    f"echo \"$PATH\"; echo \"$ENV\"; }} > {out}\nexit 3\n")
    assert rescue.run_shell("testing", shell, name) is True
    tty, ld, path, profile = out.read_text().splitlines()
    assert tty == name  # stdin is the terminal
    assert ld == "[]"
    assert path.startswith("/bin:/sbin")
    assert profile == "/etc/profile"  # what ash reads when interactive: ramdisk_skel's
    lines = capfd.readouterr().out.splitlines()
    assert lines[0] == "linuxrc: rescue shell: testing"
    assert lines[-1] == "linuxrc: rescue shell exited (3)"


def test_a_shell_that_cannot_start_counts_as_none(
        tmp_path: Path, pty: str, capfd: pytest.CaptureFixture[str]) -> None:
    shell = script(tmp_path / "sh", "#!/nonexistent/interpreter\n")
    assert rescue.run_shell("testing", shell, pty) is False
    assert "cannot start the rescue shell" in capfd.readouterr().out


def test_no_shell_at_all(tmp_path: Path) -> None:
    assert rescue.run_shell("testing", str(tmp_path / "none")) is False
    assert not rescue.shell_available(str(tmp_path / "none"))


def test_console_tty_falls_back_to_dev_console(tmp_path: Path) -> None:
    assert rescue.console_tty(str(tmp_path / "none")) == "/dev/console"
