"""mkdhcpd.ssi --reload without servers: refusals and what it says when none runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mkinitrd_ssi.mkdhcpd import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TABLE = "1 10.77.0.11/24 52:54:00:12:34:01 0 -\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc/kea").mkdir(parents=True)
    (tmp_path / "etc/ssitab").write_text(TABLE)
    shutil.copy(EXAMPLES / "dhcpd.proto", tmp_path / "etc/dhcpd.proto")
    doc = json.loads("\n".join(line for line in (EXAMPLES / "kea-dhcp4.proto.json")
                               .read_text().splitlines() if not line.strip().startswith("//")))
    (tmp_path / "etc/kea/kea-dhcp4.proto.json").write_text(json.dumps(doc))
    return tmp_path


def test_reload_needs_the_checker(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(root), "--reload", "--no-check"]) == 2
    assert "--reload needs the server's checker" in capsys.readouterr().err
    assert not (root / "etc/dhcpd.conf").exists()


def test_no_running_dhcpd_is_said_and_the_config_kept(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "run").mkdir()
    (root / "run/dhcpd.pid").write_text("999999999\n")  # stale
    assert main(["--root", str(root), "--reload", "--no-check"][:-1]) == 1
    io = capsys.readouterr()
    assert "written (1 nodes)" in io.out
    assert f"no running dhcpd found: {root}/run/dhcpd.pid names no live dhcpd" in io.err
    assert (root / "etc/dhcpd.conf").exists()
    # Unchanged now: nothing to apply, nothing looked for.
    assert main(["--root", str(root), "--reload"]) == 0
    assert "unchanged: the running server was not touched" in capsys.readouterr().out


def test_kea_without_control_socket_says_what_to_add(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(root), "--format", "kea", "--reload", "--no-check"][:-1]) == 1
    err = capsys.readouterr().err
    assert 'no unix "control-socket"' in err and '"socket-type": "unix"' in err
