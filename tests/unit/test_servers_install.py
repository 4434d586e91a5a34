"""lilo.ssi --install-published (the boot server's side of --servers), without ssh."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.lilo import main
from mkinitrd_ssi.netboot import servers

CMDLINE = "root=LABEL=ssiroot console=ttyS0"


def published(tmp_path: Path, initrd: bytes) -> tuple[Path, str]:
    root = tmp_path / "admin"
    (root / "boot").mkdir(parents=True, exist_ok=True)
    (root / "boot/vmlinuz").write_bytes(b"K" * 5000)
    (root / "boot/initrd-ssi.img").write_bytes(initrd)
    os.utime(root / "boot/initrd-ssi.img", (2e9 + len(initrd), 2e9 + len(initrd)))
    assert main(["--root", str(root), "--cmdline", CMDLINE, "--no-push"]) == 0
    tftp = root / "tftpboot"
    return tftp, (tftp / "ssi.ipxe").read_text().split("ssi/sets/")[1].split("/")[0]


def receive(tmp_path: Path, tftp: Path, set_name: str, wanted: tuple[str, ...] | None,
            server: Path, spoil: str | None = None) -> dict[str, object]:
    load = servers.payload(tftp, set_name)
    with servers.staged(tftp, load, [load.files if wanted is None else wanted]) as spools:
        spool = tmp_path / "spool" / load.name
        spool.parent.mkdir(exist_ok=True)
        os.rename(spools[0], spool)  # as scp leaves it on the server
        if spoil:
            (spool / servers.TREE / spoil).write_bytes(b"cut short")
        return servers.install(spool, server)


def test_install_then_unchanged_then_a_new_set(tmp_path: Path) -> None:
    tftp, first = published(tmp_path, b"I" * 7000)
    server = tmp_path / "server"
    assert receive(tmp_path, tftp, first, None, server)["status"] == "updated"
    files = {p.relative_to(server) for p in server.rglob("*") if p.is_file()}
    assert files == {p.relative_to(tftp) for p in tftp.rglob("*") if p.is_file()}
    assert receive(tmp_path, tftp, first, (), server)["status"] == "unchanged"
    tftp, second = published(tmp_path, b"J" * 8000)
    wanted = tuple(f for f in servers.tree_files(tftp, second) if "sets/" in f or
                   f.endswith(("ipxe", "default", "grub.cfg")))
    outcome = receive(tmp_path, tftp, second, wanted, server)
    assert outcome["status"] == "updated" and outcome["changed"][-1] == "ssi.ipxe"  # type: ignore[index]
    assert second in (server / "ssi.ipxe").read_text()
    assert (server / "ssi/sets" / first).is_dir()  # kept for nodes between config and fetch
    assert not list((tmp_path / "spool").iterdir())


def test_a_damaged_copy_installs_nothing(tmp_path: Path) -> None:
    tftp, name = published(tmp_path, b"I" * 7000)
    server = tmp_path / "server"
    with pytest.raises(SsiError, match=r"initrd\.img: not the published file"):
        receive(tmp_path, tftp, name, None, server, spoil=f"ssi/sets/{name}/initrd.img")
    assert not server.exists() or not any(server.rglob("*.ipxe"))
    assert not list((tmp_path / "spool").iterdir())  # the spool is gone all the same
    # A server that lacks a file it was not sent: refused too.
    with pytest.raises(SsiError, match="missing"):
        receive(tmp_path, tftp, name, (), server)
