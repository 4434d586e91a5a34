"""lilo.ssi --http-url: iPXE fetches the set over HTTP, GRUB over HTTP where it can, else
TFTP; kept, cleared, refused."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.lilo import main
from mkinitrd_ssi.netboot.http_url import checked, grub_dir, ipxe_dir, url_for
from mkinitrd_ssi.netboot.publish import pair_hash
from tests.unit.test_lilo import CMDLINE


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """ROOT with a kernel and a freshly built ramdisk (as test_lilo's)."""
    boot = tmp_path / "boot"
    boot.mkdir()
    for name, data in (("vmlinuz", b"K" * 1000), ("initrd-ssi.img", b"I" * 3000)):
        (boot / name).write_bytes(data)
    return tmp_path


def lilo(tree: Path, *args: str) -> int:
    return main(["--root", str(tree), "--no-push", *args])


def set_dir(tree: Path) -> str:
    return "ssi/sets/" + pair_hash(tree / "boot/vmlinuz", tree / "boot/initrd.img")


def test_http_url_in_ipxe_script_and_grub_config(tree: Path) -> None:
    assert lilo(tree, "--cmdline", CMDLINE, "--http-url", "http://10.77.0.1:8080/boot") == 0
    where = set_dir(tree)
    script = (tree / "tftpboot/ssi.ipxe").read_text()
    assert f"kernel http://10.77.0.1:8080/boot/{where}/vmlinuz {CMDLINE} " in script
    assert f"initrd http://10.77.0.1:8080/boot/{where}/initrd.img\n" in script
    grub = (tree / "tftpboot/grub/grub.cfg").read_text()
    assert f"if linux (http,10.77.0.1:8080)/boot/{where}/vmlinuz {CMDLINE} " in grub
    assert f"  if initrd (http,10.77.0.1:8080)/boot/{where}/initrd.img; then\n" in grub
    # A GRUB without http (Debian's signed one) falls back to TFTP, the same set.
    assert grub.index("over TFTP") < grub.index(f"linux /{where}/vmlinuz {CMDLINE} ")
    assert f"initrd /{where}/initrd.img\nboot\n" in grub
    checker = shutil.which("grub-script-check")
    if checker is not None:  # GRUB's own parser takes it (installed with grub-common)
        subprocess.run([checker, str(tree / "tftpboot/grub/grub.cfg")], check=True)
    # PXELINUX speaks TFTP only: unchanged, relative to its TFTP server.
    assert f"KERNEL {where}/vmlinuz" in (tree / "tftpboot/pxelinux.cfg/default").read_text()
    assert (tree / "etc/ssi/http-url").read_text() == "http://10.77.0.1:8080/boot/\n"


def test_server_placeholder_becomes_each_loaders_next_server(tree: Path) -> None:
    assert lilo(tree, "--cmdline", CMDLINE, "--http-url", "http://{server}/") == 0
    where = set_dir(tree)
    assert f"kernel http://${{next-server}}/{where}/vmlinuz " in \
        (tree / "tftpboot/ssi.ipxe").read_text()
    assert f"if linux (http,$net_default_server)/{where}/vmlinuz " in \
        (tree / "tftpboot/grub/grub.cfg").read_text()


def test_kept_url_is_reused_then_cleared(tree: Path) -> None:
    assert lilo(tree, "--cmdline", CMDLINE, "--http-url", "http://boot.example") == 0
    assert lilo(tree) == 0
    assert "http://boot.example/ssi/sets/" in (tree / "tftpboot/ssi.ipxe").read_text()
    assert lilo(tree, "--http-url", "") == 0
    assert not (tree / "etc/ssi/http-url").exists()
    script = (tree / "tftpboot/ssi.ipxe").read_text()
    assert "http" not in script and f"kernel {set_dir(tree)}/vmlinuz " in script
    assert f"linux /{set_dir(tree)}/vmlinuz " in (tree / "tftpboot/grub/grub.cfg").read_text()


def test_without_http_url_nothing_changes(tree: Path) -> None:
    assert lilo(tree, "--cmdline", CMDLINE) == 0
    before = {p: p.read_bytes() for p in (tree / "tftpboot").rglob("*") if p.is_file()}
    assert lilo(tree, "--http-url", "") == 0  # clearing a URL that was never set
    after = {p: p.read_bytes() for p in (tree / "tftpboot").rglob("*") if p.is_file()}
    assert before == after
    assert "http" not in (tree / "tftpboot/ssi.ipxe").read_text()


@pytest.mark.parametrize("url", [
    "https://10.77.0.1/", "ftp://x/", "http://", "http://10.77.0.1/a b", "http://x/${evil}",
    "http://x/#frag", "http://x/?q=1", "http://x:0/", "http://x:70000/", "http://-x/",
    "http://x/a;b", "http://{server}x/", "10.77.0.1",
])
def test_urls_a_loader_could_misread_are_refused(tree: Path, url: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert lilo(tree, "--cmdline", CMDLINE, "--http-url", url) == 1
    err = capsys.readouterr().err
    assert "lilo.ssi: --http-url" in err
    assert "hint: e.g. --http-url http://" in err or "port" in err
    assert not (tree / "etc/ssi/http-url").exists()


def test_url_helpers() -> None:
    assert checked("http://a.b//") == "http://a.b/"
    assert ipxe_dir(None, "ssi/sets/x") == "ssi/sets/x"
    assert grub_dir(None, "ssi/sets/x") == "/ssi/sets/x"
    assert grub_dir("http://a.b/", "ssi/sets/x") == "(http,a.b)/ssi/sets/x"
    assert url_for("http://{server}/t/", "ssi/sets/x", "10.0.0.2") == \
        "http://10.0.0.2/t/ssi/sets/x"
    with pytest.raises(SsiError):
        checked("http://x y/")
