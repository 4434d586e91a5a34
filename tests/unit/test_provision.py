"""lilo.ssi --provision in-process, without root: argument errors, refusals, dry runs.

mkfs.ext4 and sfdisk work on plain files, so an image holding a filesystem or
a partition table is made here; provisioning itself (loop devices, mount) is
in tests/integration/test_provision.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from linuxrc_agent import mac_match
from mkinitrd_ssi.lilo import main
from mkinitrd_ssi.local.provision import label_problem

MiB = 1 << 20


def blank(path: Path, mib: int = 32) -> Path:
    with open(path, "wb") as f:
        f.truncate(mib * MiB)
    return path


def digest(path: Path) -> str:
    return xxhash.xxh3_128_hexdigest(path.read_bytes())


@pytest.mark.parametrize("argv,message", [
    (["--force"], "--force needs --provision DEVICE"),
    (["--label", "boot"], "--label needs --provision DEVICE"),
    (["--size", "64"], "--size needs --provision DEVICE"),
    (["--fs", "vfat"], "--fs needs --provision DEVICE"),
    (["--provision", "x.img", "--local-only"], "--local-only does not go with --provision"),
    (["--provision", "x.img", "--cmdline", "root=/dev/sda"], "--cmdline does not go with"),
    (["--provision", "x.img", "--label", "my boot"], "ssitab's bootdev could not name it"),
    (["--provision", "x.img", "--fs", "vfat", "--label", "twelve-chars"], "at most 11 ASCII"),
    (["--provision", "x.img", "--label", "seventeen-bytes-x"], "holds at most 16 bytes"),
])
def test_usage_errors_exit_2_and_say_why(tmp_path: Path, argv: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.img").exists()


@pytest.mark.parametrize("argv", [["--fs", "zfs"], ["--size", "0"], ["--size", "big"]])
def test_argparse_rejects_bad_values(tmp_path: Path, argv: list[str]) -> None:
    assert main(["--provision", str(tmp_path / "x.img"), *argv]) == 2


def test_label_rules() -> None:
    assert label_problem("ssiboot", "ext4") is None
    assert label_problem("SSI-BOOT", "vfat") is None
    assert label_problem("ssi.boot", "vfat") is not None  # mkfs.fat refuses '.'
    assert label_problem("ssi.boot", "ext4") is None


def test_refuses_an_image_holding_a_filesystem(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    image = blank(tmp_path / "data.img")
    assert os.system(f"mkfs.ext4 -q -L data {image}") == 0
    before = digest(image)
    assert main(["--provision", str(image)]) == 1
    err = capsys.readouterr().err
    assert f"lilo.ssi: {image} holds ext4 LABEL=data: lilo.ssi --provision would destroy it" \
        in err
    assert "hint: add --force if that is what you want" in err
    assert digest(image) == before
    # A dry run with --force says it would destroy it, and still changes nothing.
    assert main(["--provision", str(image), "--force", "-n"]) == 0
    out, err = capsys.readouterr()
    assert "ext4 LABEL=data: it would be destroyed (--force)" in err
    assert "would write a new dos partition table" in out
    assert digest(image) == before


def test_refuses_an_image_holding_a_partition_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = blank(tmp_path / "disk.img")
    assert os.system(f"echo 'label: gpt' | sfdisk -q {image}") == 0
    assert main(["--provision", str(image)]) == 1
    assert "holds a gpt partition table (no partitions)" in capsys.readouterr().err


def test_missing_image_needs_size_and_size_needs_a_new_image(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--provision", str(tmp_path / "new.img")]) == 1
    assert "add --size MIB" in capsys.readouterr().err
    existing = blank(tmp_path / "old.img")
    assert main(["--provision", str(existing), "--size", "64"]) == 1
    assert "exists: --size only creates a new disk image" in capsys.readouterr().err
    assert main(["--provision", "/dev/ssit-nosuch", "--size", "64"]) == 1
    assert "never under /dev" in capsys.readouterr().err
    assert not Path("/dev/ssit-nosuch").exists()
    assert main(["--provision", str(tmp_path / "small.img"), "--size", "8"]) == 1
    assert "too small for a boot partition" in capsys.readouterr().err
    assert not (tmp_path / "small.img").exists()


def test_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--provision", str(tmp_path / "new.img"), "--size", "64", "-n"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"would create {tmp_path}/new.img, a sparse 64 MiB disk image",
        f"would write a new dos partition table to {tmp_path}/new.img: partition 1 from 1 MiB, "
        "63.0 MiB, active; Syslinux's mbr.bin as boot code",
        "would make ext4 LABEL=ssiboot on partition 1 and install extlinux on it"]
    assert not (tmp_path / "new.img").exists()
    image = blank(tmp_path / "blank.img")
    before = digest(image)
    assert main(["--provision", str(image), "--fs", "vfat", "--label", "BOOT", "-n"]) == 0
    assert "would make vfat LABEL=BOOT on partition 1" in capsys.readouterr().out
    assert digest(image) == before


def test_default_label_is_this_nodes_label_bootdev(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nics = mac_match.local_nics()
    if not nics:
        pytest.skip("this machine has no Ethernet NIC to be a node by")
    (tmp_path / "etc").mkdir()
    table = tmp_path / "etc/ssitab"
    argv = ["--root", str(tmp_path), "--provision", str(tmp_path / "new.img"), "--size", "64",
            "-n"]
    table.write_text(f"4  10.77.0.14/24  {nics[0].mac}  1  LABEL=n4boot\n")
    assert main(argv) == 0
    assert "ext4 LABEL=n4boot on partition 1" in capsys.readouterr().out
    uuid = "0b9a4b1e-1111-4222-8333-944455556666"
    table.write_text(f"4  10.77.0.14/24  {nics[0].mac}  1  UUID={uuid}\n")
    assert main(argv) == 0
    assert "LABEL=ssiboot" in capsys.readouterr().out
    table.write_text("5  10.77.0.15/24  02:00:5e:00:00:05  1  LABEL=other\n")
    assert main(argv) == 0  # this machine is not node 5
    assert "LABEL=ssiboot" in capsys.readouterr().out
    assert main([*argv, "--label", "mine"]) == 0
    assert "LABEL=mine" in capsys.readouterr().out
