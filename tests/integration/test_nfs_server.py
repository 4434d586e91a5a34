"""The NFS server harness (vm_tests/nfs.py): nfs-ganesha answers NFSv4 and NFSv3 RPCs, its
rpcbind knows MOUNT's port, and nothing of it outlives the context, test failed or not.

The host kernel has no NFS client, so the checks speak ONC RPC themselves
(RFC 5531): a NULL call to each program and version, and an rpcbind GETPORT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mkinitrd_ssi.run import run
from vm_tests import nfs
from vm_tests.netns import available
from vm_tests.nfs import nfs_network

pytestmark = pytest.mark.integration

# Run inside the server's namespace: one line per check.
RPC_CLIENT = r"""
import socket, struct, sys

def call(host, port, prog, vers, proc, args=b""):
    body = struct.pack(">IIIIII", 0x5551, 0, 2, prog, vers, proc) + struct.pack(">IIII", 0, 0, 0, 0)
    msg = body + args
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(struct.pack(">I", 0x80000000 | len(msg)) + msg)
        size = struct.unpack(">I", s.recv(4))[0] & 0x7FFFFFFF
        reply = b""
        while len(reply) < size:
            reply += s.recv(size - len(reply))
    xid, mtype, stat = struct.unpack(">III", reply[:12])
    verf_len = struct.unpack(">I", reply[16:20])[0]
    accept = struct.unpack(">I", reply[20 + verf_len:24 + verf_len])[0]
    return (xid, mtype, stat, accept), reply[24 + verf_len:]

host = sys.argv[1]
for vers in (3, 4):
    head, _ = call(host, 2049, 100003, vers, 0)
    print(f"nfs{vers}", "ok" if head == (0x5551, 1, 0, 0) else head)
head, rest = call(host, 111, 100000, 2, 3, struct.pack(">IIII", 100005, 3, 6, 0))
print("mountd-port", struct.unpack(">I", rest[:4])[0] if head == (0x5551, 1, 0, 0) else head)
"""


@pytest.fixture(autouse=True)
def need_server() -> None:
    reason = available() or nfs.available()
    if reason:
        pytest.skip(reason)


def export_tree(tmp_path: Path) -> Path:
    export = tmp_path / "export"
    (export / "etc").mkdir(parents=True)
    (export / "etc" / "motd").write_text("shared\n")
    return export


def alive(pids: set[int]) -> set[int]:
    """The pids still running: a zombie (dead, its parent gone, not yet reaped by init) is not."""
    running = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rpartition(")")[2].split()[0] != "Z":
            running.add(pid)
    return running


def namespaces() -> str:
    return run(["ip", "netns", "list"], capture=True).stdout.decode()


def netns_pids(name: str) -> set[int]:
    return {int(p) for p in run(["ip", "netns", "pids", name], capture=True).stdout.split()}


def test_serves_nfs4_and_nfs3_and_leaves_nothing_behind(tmp_path: Path) -> None:
    export = export_tree(tmp_path)
    before = nfs.tree_digest(export)
    with nfs_network(tmp_path / "net", export) as net:
        out = net.netns.run([sys.executable, "-c", RPC_CLIENT, nfs.SERVER_IP]).stdout.decode()
        pids, name = netns_pids(net.ns), net.ns
        assert len(pids) >= 2  # ganesha and its rpcbind
    assert out.split("\n")[:3] == ["nfs3 ok", "nfs4 ok", f"mountd-port {nfs.MNT_PORT}"]
    assert not alive(pids) and name not in namespaces()
    assert nfs.tree_digest(export) == before


def test_a_failing_test_leaves_nothing_behind_either(tmp_path: Path) -> None:
    pids: set[int] = set()
    name = ""
    with pytest.raises(RuntimeError, match="the test failed"), \
            nfs_network(tmp_path / "net", export_tree(tmp_path)) as net:
        pids, name = netns_pids(net.ns), net.ns
        raise RuntimeError("the test failed")
    assert pids and not alive(pids) and name not in namespaces()


def test_stop_and_start_again(tmp_path: Path) -> None:
    with nfs_network(tmp_path / "net", export_tree(tmp_path), start=False) as net:
        probe = [sys.executable, "-c", RPC_CLIENT, nfs.SERVER_IP]
        assert net.netns.run(probe, check=False).returncode != 0  # refused: nothing serves
        net.server.start()
        assert "nfs4 ok" in net.netns.run(probe).stdout.decode()
        net.server.stop()
        assert not netns_pids(net.ns)
        assert net.netns.run(probe, check=False).returncode != 0
        net.server.start()
        assert "nfs4 ok" in net.netns.run(probe).stdout.decode()
