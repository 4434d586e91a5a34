"""lilo.ssi in-process: what it publishes, that it is atomic and idempotent, and its errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mkinitrd_ssi.lilo import main
from mkinitrd_ssi.netboot import KEEP_SETS, pair_hash

CMDLINE = "root=LABEL=ssiroot console=ttyS0"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "vmlinuz").write_bytes(b"K" * 1000)
    (tmp_path / "boot" / "initrd-ssi.img").write_bytes(b"I" * 3000)
    return tmp_path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_publishes_ipxe_and_pxelinux(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tree), "--cmdline", CMDLINE]) == 0
    name = pair_hash(tree / "boot/vmlinuz", tree / "boot/initrd.img")
    tftp = tree / "tftpboot"
    assert (tftp / f"ssi/sets/{name}/vmlinuz").read_bytes() == b"K" * 1000
    assert (tftp / f"ssi/sets/{name}/initrd.img").read_bytes() == b"I" * 3000
    script = (tftp / "ssi.ipxe").read_text()
    assert script.startswith("#!ipxe\n")
    assert f"kernel ssi/sets/{name}/vmlinuz {CMDLINE} ssi.bootif=${{netX/mac}}" in script
    assert f"initrd ssi/sets/{name}/initrd.img" in script
    cfg = (tftp / "pxelinux.cfg/default").read_text()
    assert f"APPEND {CMDLINE}\n" in cfg and "IPAPPEND 2" in cfg
    assert (tftp / "pxelinux.0").stat().st_size > 0 and (tftp / "ldlinux.c32").is_file()
    assert (tree / "etc/ssi/cmdline").read_text() == CMDLINE + "\n"
    assert "installing" in capsys.readouterr().out


def test_second_run_reuses_cmdline_and_rewrites_nothing(
        tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tree), "--cmdline", CMDLINE]) == 0
    before = snapshot(tree)
    capsys.readouterr()
    assert main(["--root", str(tree)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert snapshot(tree) == before


def test_new_ramdisk_publishes_new_set_and_keeps_recent_ones(tree: Path) -> None:
    sets = tree / "tftpboot/ssi/sets"
    for i in range(KEEP_SETS + 2):
        (tree / "boot/initrd-ssi.img").write_bytes(b"I" * 3000 + bytes([i]))
        os.utime(tree / "boot/initrd-ssi.img", (2e9 + i, 2e9 + i))
        assert main(["--root", str(tree), "--cmdline", CMDLINE]) == 0
    newest = pair_hash(tree / "boot/vmlinuz", tree / "boot/initrd.img")
    assert (tree / "boot/initrd.img").read_bytes().endswith(bytes([KEEP_SETS + 1]))
    names = sorted(p.name for p in sets.iterdir())
    assert newest in names and len(names) == KEEP_SETS
    assert newest in (tree / "tftpboot/ssi.ipxe").read_text()


def test_no_cmdline_is_a_clear_error(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tree)]) == 1
    err = capsys.readouterr().err
    assert "lilo.ssi: no kernel command line" in err and "--cmdline" in err
    assert not (tree / "tftpboot").exists()


def test_cmdline_without_root_is_refused(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tree), "--cmdline", "console=ttyS0"]) == 1
    assert "no root=" in capsys.readouterr().err
    assert not (tree / "etc/ssi/cmdline").exists()


def test_missing_kernel(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "boot/vmlinuz").unlink()
    assert main(["--root", str(tree), "--cmdline", CMDLINE]) == 1
    assert "vmlinuz: no such file" in capsys.readouterr().err
    assert not (tree / "tftpboot/ssi.ipxe").exists()


def test_dry_run_changes_nothing(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(tree)
    assert main(["--root", str(tree), "--cmdline", CMDLINE, "-n"]) == 0
    assert "would publish" in capsys.readouterr().out
    assert snapshot(tree) == before


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-such-option"]) == 2
