"""lilo.ssi --servers: the published tree copied to boot servers over real ssh (sshd per
server in its own namespace, vm_tests.sshnodes), installed there by lilo.ssi itself."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vm_tests import netns
from vm_tests.sshnodes import LILO, SshCluster, wait_gone

_why_not = netns.available() or (None if shutil.which("sshd") or os.path.exists(
    "/usr/sbin/sshd") else "sshd not installed (make deps)")
pytestmark = [pytest.mark.integration, pytest.mark.skipif(_why_not is not None,
                                                          reason=_why_not or "")]

CMDLINE = "root=LABEL=ssiroot console=ttyS0"


def tree(where: Path) -> dict[str, bytes]:
    return {str(p.relative_to(where)): p.read_bytes() for p in sorted(where.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def server_args(cluster: SshCluster) -> list[str]:
    return [
        "--ssh-option", f"IdentityFile={cluster.workdir}/client_key",
        "--ssh-option", "IdentitiesOnly=yes", "--ssh-option", "StrictHostKeyChecking=no",
        "--ssh-option", "UserKnownHostsFile=/dev/null",
        "--ssh-option", "KexAlgorithms=curve25519-sha256",
        "--connect-timeout", "2", "--remote-lilo", LILO,
        "--remote-spool", f"{cluster.workdir}/mnt/spool",
        "--server-tftpboot", f"{cluster.workdir}/mnt/boot/tftp",
        "--no-push",
    ]


def test_servers_get_the_same_tree_atomically_and_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot/vmlinuz").write_bytes(os.urandom(300_000))
    (root / "boot/initrd-ssi.img").write_bytes(os.urandom(900_000))
    # Servers 1 and 2 up, 3 has no sshd (down).
    cluster = SshCluster(tmp_path / "c", 3, down=[3])
    with cluster:
        servers = ",".join(cluster.nodes[n].ip for n in (1, 2, 3))
        args = ["--root", str(root), "--cmdline", CMDLINE, "--http-url", "http://{server}/",
                "--servers", servers, *server_args(cluster)]
        rc, out, err = cluster.lilo(args)
        assert rc == 1, err  # a boot server down is a failure the admin must see
        table = out
        print(out)
        assert "10.77.0.13" in table and "down" in table and "not serving this set" in table
        local = tree(root / "tftpboot")
        for n in (1, 2):
            assert tree(cluster.nodes[n].boot / "tftp") == local, f"server {n}"
        first = {line.split()[0]: line for line in table.splitlines() if line.startswith("10.")}
        assert " updated " in first["10.77.0.11"] and " updated " in first["10.77.0.12"]

        # Again, servers 1 and 2 only: nothing to install; the set is not sent again.
        args[args.index("--servers") + 1] = ",".join(cluster.nodes[n].ip for n in (1, 2))
        rc, out, err = cluster.lilo(args)
        assert rc == 0, err
        rows = [line for line in out.splitlines() if line.startswith("10.")]
        print(out)
        assert len(rows) == 2 and all(" unchanged " in row for row in rows), out
        assert "2 boot server(s): 2 unchanged" in out
        assert [row.split()[2] for row in rows] == ["-", "-"]  # nothing sent at all

        # A new ramdisk: a new set everywhere, configs name it, the old set stays.
        (root / "boot/initrd-ssi.img").write_bytes(os.urandom(900_000))
        os.utime(root / "boot/initrd-ssi.img", (2e9, 2e9))
        rc, _out, err = cluster.lilo(args)
        assert rc == 0, err
        local = tree(root / "tftpboot")
        assert len({k.split("/")[2] for k in local if k.startswith("ssi/sets/")}) == 2
        for n in (1, 2):
            assert tree(cluster.nodes[n].boot / "tftp") == local
        # Nothing left in the servers' spools, nothing running afterwards.
    assert wait_gone(cluster) == []
