"""lilo.ssi in-process: what it publishes, that it is atomic and idempotent, and its errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import xxhash

from mkinitrd_ssi.lilo import main
from mkinitrd_ssi.netboot.publish import KEEP_SETS, pair_hash

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


def test_publish_writes_the_shared_roots_manifest(tree: Path) -> None:
    assert main(["--root", str(tree), "--cmdline", CMDLINE]) == 0
    manifest = json.loads((tree / "boot/ssi-manifest.json").read_text())
    assert manifest["kernel"]["name"] == "vmlinuz" and manifest["kernel"]["size"] == 1000
    assert manifest["initrd"]["name"] == "initrd.img" and manifest["initrd"]["size"] == 3000


def test_push_with_no_local_node_says_so(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "etc").mkdir()
    (tree / "etc/ssitab").write_text("2  10.77.0.12/24  52:54:00:12:34:02  0  -\n")
    assert main(["--root", str(tree), "--cmdline", CMDLINE]) == 0
    assert capsys.readouterr().out.endswith("no local-boot nodes to push to\n")
    assert main(["--root", str(tree), "--nodes", "2"]) == 1
    assert "no local boot flag in the node table: 2" in capsys.readouterr().err


# -- lilo.ssi --local-only on a boot partition mounted at --boot-dir


@pytest.fixture
def local(tree: Path) -> list[str]:
    (tree / "boot/initrd-ssi.img").rename(tree / "boot/initrd.img")
    (tree / "etc/ssi").mkdir(parents=True)
    (tree / "etc/ssi/cmdline").write_text(CMDLINE + "\n")
    (tree / "part").mkdir()
    return ["--root", str(tree), "--local-only", "--boot-dir", str(tree / "part")]


def test_local_only_syncs_then_finds_it_unchanged(
        tree: Path, local: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*local, "-n"]) == 0
    assert capsys.readouterr().out.startswith(f"{tree / 'part'}: stale (would update")
    assert not (tree / "part/extlinux.conf").exists()
    assert main(local) == 0
    assert capsys.readouterr().out.startswith(f"{tree / 'part'}: updated (wrote kernel")
    # The local config right-aligns the arguments after APPEND (a fixed-size file).
    assert re.search(rf"\n  APPEND +{re.escape(CMDLINE)}\n",
                     (tree / "part/extlinux.conf").read_text())
    before = snapshot(tree / "part")
    assert main([*local, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "status": "unchanged", "reason": "", "boot_dir": str(tree / "part")}
    assert snapshot(tree / "part") == before


def test_local_only_hashes_describe_the_installed_pair(
        tree: Path, local: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*local, "--hashes"]) == 0
    assert json.loads(capsys.readouterr().out)["pair"] is None
    assert main(local) == 0
    capsys.readouterr()
    assert main([*local, "--hashes"]) == 0
    pair = json.loads(capsys.readouterr().out)["pair"]
    assert pair == {"kernel": {"size": 1000, "xxh3_128": xxhash.xxh3_128_hexdigest(b"K" * 1000)},
                    "initrd": {"size": 3000, "xxh3_128": xxhash.xxh3_128_hexdigest(b"I" * 3000)},
                    "append": CMDLINE}


def test_local_only_failure_exits_1_and_says_why(
        tree: Path, local: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "boot/vmlinuz").unlink()
    assert main([*local, "--json"]) == 0  # the agent's rule: no shared pair is a skip
    assert json.loads(capsys.readouterr().out)["status"] == "skipped"
    assert main([*local[:-1], str(tree / "nosuch")]) == 1
    assert capsys.readouterr().err == f"lilo.ssi: --boot-dir {tree / 'nosuch'}: not a directory\n"
    (tree / "boot/vmlinuz").write_bytes(b"K" * 1000)
    (tree / "part/ssi").write_text("a file where the pair's directory goes")
    assert main(local) == 1
    assert capsys.readouterr().out.startswith(f"{tree / 'part'}: failed (")


@pytest.mark.parametrize("args", [["--hashes"], ["--boot-dir", "/x"], ["--from", "/x"],
                                  ["--local-only", "--hashes", "--from", "/x"]])
def test_local_only_options_alone_are_usage_errors(
        tree: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tree), *args]) == 2
    assert "lilo.ssi: --" in capsys.readouterr().err


def test_a_set_is_durable_before_any_config_names_it(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mkinitrd_ssi.netboot import publish as netboot

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[1])
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(f"rename {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert main(["--root", str(tree), "--cmdline", CMDLINE, "--no-push"]) == 0
    name = netboot.pair_hash(tree / "boot/vmlinuz", tree / "boot/initrd.img")
    named = events.index(f"rename {name}")
    assert events.index(f"fsync .{name}.tmp") < named  # the set's own entries
    assert events.index("fsync sets", named) < events.index("rename ssi.ipxe")
    assert events.index("fsync sets", named) < events.index("rename default")
    assert events.index("fsync sets", named) < events.index("rename grub.cfg")


# -- UEFI: shim, signed GRUB, grub.cfg


def test_uefi_chain_is_published_beside_the_bios_configs(tree: Path) -> None:
    from mkinitrd_ssi.netboot import publish as netboot

    # The shared root's packages win over the host's.
    shim = tree / "usr/lib/shim/shimx64.efi.signed"
    shim.parent.mkdir(parents=True)
    shim.write_bytes(b"shim from ROOT")
    assert main(["--root", str(tree), "--cmdline", CMDLINE, "--no-push"]) == 0
    tftp = tree / "tftpboot"
    name = pair_hash(tree / "boot/vmlinuz", tree / "boot/initrd.img")
    cfg = (tftp / "grub/grub.cfg").read_text()
    assert f"linux /ssi/sets/{name}/vmlinuz {CMDLINE} ssi.bootif=${{net_default_mac}}\n" in cfg
    assert f"initrd /ssi/sets/{name}/initrd.img\nboot\n" in cfg
    assert 'set superusers=""' in cfg  # no editing at GRUB's prompt
    assert (tftp / netboot.EFI_BOOT_FILE).read_bytes() == b"shim from ROOT"
    grub = Path(netboot.EFI_FILES["grubx64.efi"][0])
    if grub.is_file():  # grub-efi-amd64-signed on this host (make deps installs it)
        assert (tftp / "grubx64.efi").read_bytes() == grub.read_bytes()
        assert (tftp / "grubx64.efi").stat().st_mode & 0o777 == 0o644


def test_missing_efi_packages_warn_and_publish_for_bios(
        tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from mkinitrd_ssi.netboot import publish as netboot

    monkeypatch.setattr(netboot, "EFI_FILES", {
        "shimx64.efi": ("/nonexistent/shimx64.efi.signed", "shim-signed"),
        "grubx64.efi": ("/nonexistent/grubnetx64.efi.signed", "grub-efi-amd64-signed")})
    assert main(["--root", str(tree), "--cmdline", CMDLINE, "--no-push"]) == 0
    err = capsys.readouterr().err
    assert "apt-get install shim-signed" in err and "apt-get install grub-efi-amd64-signed" in err
    assert "published for BIOS only" in err
    tftp = tree / "tftpboot"
    assert (tftp / "ssi.ipxe").is_file() and (tftp / "pxelinux.cfg/default").is_file()
    assert not (tftp / "shimx64.efi").exists() and not (tftp / "grubx64.efi").exists()


def test_local_only_makes_an_esp_bootable_from_roots_packages(
        tree: Path, local: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # An ESP (it has EFI/): the agent's code, so shim and GRUB come from ROOT.
    for path, data in (("usr/lib/shim/shimx64.efi.signed", b"shim"),
                       ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", b"grub")):
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(data)
    (tree / "part/EFI").mkdir()
    assert main(local) == 0
    out = capsys.readouterr().out
    assert "updated" in out and "installed EFI/BOOT/grubx64.efi, EFI/BOOT/BOOTX64.EFI" in out
    assert (tree / "part/EFI/BOOT/BOOTX64.EFI").read_bytes() == b"shim"
    assert b"menuentry ssi-" in (tree / "part/EFI/BOOT/grub.cfg").read_bytes()
    assert not (tree / "part/extlinux.conf").exists()
    assert main([*local, "--hashes"]) == 0
    assert json.loads(capsys.readouterr().out)["pair"]["append"] == CMDLINE
    assert main(local) == 0
    assert "unchanged" in capsys.readouterr().out
