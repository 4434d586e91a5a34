"""lilo.ssi pushes the pair to local-boot nodes: real sshd per node, real ssh/scp, no mocks.

Each node is a network namespace with its own sshd and its own boot directory
(vm_tests.sshnodes). The admin side is the real `lilo.ssi` command in a hub
namespace, reaching the nodes by their ssitab addresses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linuxrc_agent.bootpair.engine import sync_boot_dir
from linuxrc_agent.ssitab import BootDev, BootDevKind, Node
from mkinitrd_ssi.local import node as localnode
from mkinitrd_ssi.local.partition import local_only
from mkinitrd_ssi.push import spool as pairspool
from vm_tests import netns
from vm_tests.sshnodes import SshCluster, wait_gone

_why_not = netns.available() or (None if shutil.which("sshd") or os.path.exists(
    "/usr/sbin/sshd") else "sshd not installed (make deps)")
pytestmark = [pytest.mark.integration, pytest.mark.skipif(_why_not is not None,
                                                          reason=_why_not or "")]

CMDLINE = "root=LABEL=ssiroot console=ttyS0,115200"
OLD_CMDLINE = "root=LABEL=ssiroot console=ttyS0"
KIB = 1024
# The post-quantum hybrid key exchange OpenSSH 9 picks by default costs tens of
# ms of CPU per connection; on this shared 2-core machine that is most of a
# test's time, and it is not what these tests are about.
FAST_KEX = ["--ssh-option", "KexAlgorithms=curve25519-sha256"]


def write_pair(where: Path, kernel_kib: int, initrd_kib: int) -> tuple[Path, Path]:
    where.mkdir(parents=True, exist_ok=True)
    kernel, initrd = where / "vmlinuz", where / "initrd.img"
    kernel.write_bytes(os.urandom(kernel_kib * KIB))
    initrd.write_bytes(os.urandom(initrd_kib * KIB))
    return kernel, initrd


def snapshot(boot: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(boot)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(boot.rglob("*")) if p.is_file()}


def by_node(stdout: str) -> dict[int, dict[str, object]]:
    return {n["node"]: n for n in json.loads(stdout)["nodes"]}


def statuses(stdout: str) -> dict[int, str]:
    return {k: str(v["status"]) for k, v in by_node(stdout).items()}


def spool_listing(cluster: SshCluster, number: int) -> list[str]:
    """What is left in the node's private spool (seen from inside its mount namespace)."""
    sshd = cluster.nodes[number].sshd
    assert sshd is not None
    out = subprocess.run(["nsenter", "-t", str(sshd.pid), "-m", "ls", "-A",
                          str(cluster.workdir / "mnt/spool")],
                         check=True, capture_output=True, text=True).stdout
    return out.split()


@pytest.fixture
def admin_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    write_pair(root / "boot", 256, 768)
    (root / "etc/ssi").mkdir(parents=True)
    (root / "etc/ssi/cmdline").write_text(CMDLINE + "\n")
    return root


@pytest.fixture
def old_pair(tmp_path: Path) -> tuple[Path, Path]:
    return write_pair(tmp_path / "old", 200, 600)


def new_pair(root: Path) -> pairspool.Pair:
    return pairspool.wanted_pair(root / "boot/vmlinuz", root / "boot/initrd.img", CMDLINE)


def install(boot: Path, pair: tuple[Path, Path], cmdline: str) -> None:
    result = sync_boot_dir(boot, *pair, cmdline)
    assert result.status.value == "updated", result


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[list[SshCluster]]:
    """The clusters a test made; after it, each must have left nothing behind."""
    made: list[SshCluster] = []
    yield made
    prefix = f"{netns.PREFIX}{os.getpid()}"
    for cluster in made:
        assert wait_gone(cluster) == []
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert [line for line in left.splitlines() if line.startswith(prefix)] == []
    mounts = Path("/proc/self/mounts").read_text()
    assert str(tmp_path) not in mounts


def test_mixed_cluster_updates_skips_reports_down_and_names_the_full_disk(
        tmp_path: Path, admin_root: Path, old_pair: tuple[Path, Path],
        cluster_factory: list[SshCluster]) -> None:
    # 1 up to date, 2 and 7 stale, 3 a fresh empty partition, 4 off (no sshd),
    # 5 no such host at all, 6 a partition too small for a second pair.
    cluster = SshCluster(tmp_path / "c", 7, down=[4], absent=[5], full={6: 1300})
    cluster_factory.append(cluster)
    with cluster:
        nodes = cluster.nodes
        (admin_root / "etc/ssitab").write_text(cluster.ssitab())
        install(nodes[1].boot, (admin_root / "boot/vmlinuz", admin_root / "boot/initrd.img"),
                CMDLINE)
        for n in (2, 6, 7):
            install(nodes[n].boot, old_pair, OLD_CMDLINE)
        before = {n: snapshot(node.boot) for n, node in nodes.items()}
        config6 = (nodes[6].boot / "extlinux.conf").read_bytes()
        old = localnode.installed_pair(nodes[6].boot)
        base = ["--root", str(admin_root), "--json", *cluster.push_args(), *FAST_KEX]

        rc, out, err = cluster.lilo([*base, "--no-push"])
        assert rc == 0, err
        assert "nodes" not in out and "published" not in out

        rc, out, err = cluster.lilo([*base, "--dry-run"])
        assert rc == 0, err
        assert statuses(out) == {1: "unchanged", 2: "stale", 3: "stale", 4: "down",
                                 5: "down", 6: "stale", 7: "stale"}
        assert {n: snapshot(node.boot) for n, node in nodes.items()} == before

        rx = {n: nodes[n].rx_bytes() for n in (1, 2, 3, 6, 7)}
        rc, out, err = cluster.lilo(base)
        assert rc == 1, err
        report = by_node(out)
        assert statuses(out) == {1: "unchanged", 2: "updated", 3: "updated", 4: "down",
                                 5: "down", 6: "failed", 7: "updated"}
        assert "Connection refused" in str(report[4]["detail"])
        assert "No space left on device" in str(report[6]["detail"])
        counts = json.loads(out)["counts"]
        assert counts == {"unchanged": 1, "updated": 3, "down": 2, "failed": 1}

        want = new_pair(admin_root)
        payload = want.kernel.size + want.initrd.size
        for n in (2, 3, 7):
            assert localnode.installed_pair(nodes[n].boot) == want
            assert nodes[n].rx_bytes() - rx[n] > payload
            assert report[n]["sent_bytes"] == payload
            assert spool_listing(cluster, n) == []
        # Up to date: not a byte of the pair sent, not a file touched.
        assert report[1]["sent_bytes"] == 0
        assert nodes[1].rx_bytes() - rx[1] < 64 * KIB
        assert snapshot(nodes[1].boot) == before[1]
        # The full disk: its config still names the old pair, which is whole;
        # nothing of the attempt is left, not even in the spool.
        assert (nodes[6].boot / "extlinux.conf").read_bytes() == config6
        assert localnode.installed_pair(nodes[6].boot) == old
        assert snapshot(nodes[6].boot) == before[6]
        assert spool_listing(cluster, 6) == []

        # The table for people says the same, and names the failure.
        rc, text, err = cluster.lilo([a for a in base if a != "--json"] + ["--nodes", "1,6"])
        assert rc == 1
        lines = text.splitlines()
        assert lines.pop(0).endswith("tftpboot: unchanged (set " + json.loads(out)["published"][
            "set"] + ")")
        assert lines[0].split()[:4] == ["NODE", "HOSTNAME", "ADDRESS", "STATUS"]
        assert lines[1].split()[:4] == ["1", "node1", "10.77.0.11", "unchanged"]
        assert lines[2].split()[:4] == ["6", "node6", "10.77.0.16", "failed"]
        assert lines[-1].startswith("2 local-boot node(s): 1 unchanged, 1 failed; "
                                    "failed: node 6")


def test_32_nodes_at_once_then_nothing_to_do(
        tmp_path: Path, admin_root: Path, old_pair: tuple[Path, Path],
        cluster_factory: list[SshCluster]) -> None:
    cluster = SshCluster(tmp_path / "c", 32)
    cluster_factory.append(cluster)
    with cluster:
        (admin_root / "etc/ssitab").write_text(cluster.ssitab())
        for node in cluster.nodes.values():
            install(node.boot, old_pair, OLD_CMDLINE)
        base = ["--root", str(admin_root), "--json", "--fanout", "16", *cluster.push_args(),
                *FAST_KEX]
        started = time.monotonic()
        rc, out, err = cluster.lilo(base)
        first = time.monotonic() - started
        assert rc == 0, err
        assert set(statuses(out).values()) == {"updated"} and len(statuses(out)) == 32
        want = new_pair(admin_root)
        for node in cluster.nodes.values():
            assert localnode.installed_pair(node.boot) == want, node.number

        before = {n: snapshot(node.boot) for n, node in cluster.nodes.items()}
        rx = {n: node.rx_bytes() for n, node in cluster.nodes.items()}
        started = time.monotonic()
        rc, out, err = cluster.lilo(base)
        second = time.monotonic() - started
        assert rc == 0, err
        assert set(statuses(out).values()) == {"unchanged"}
        assert json.loads(out)["sent_bytes"] == 0
        assert {n: snapshot(node.boot) for n, node in cluster.nodes.items()} == before
        assert all(node.rx_bytes() - rx[n] < 64 * KIB for n, node in cluster.nodes.items())
        print(f"32 nodes: push {first:.1f} s, unchanged check {second:.1f} s")


def test_tree_mode_carries_the_push_through_a_gateway(
        tmp_path: Path, admin_root: Path, cluster_factory: list[SshCluster]) -> None:
    """With a ClusterShell topology.conf, the same command goes admin -> gateway -> nodes."""
    cluster = SshCluster(tmp_path / "c", 3)
    cluster_factory.append(cluster)
    config = tmp_path / "clustershell"
    config.mkdir()
    # The admin node is named by its host name, as ClusterShell finds itself in the tree.
    (config / "topology.conf").write_text(
        f"[routes]\n{socket.gethostname()}: 10.77.0.11\n10.77.0.11: 10.77.0.[12-13]\n")
    env = [f"CLUSTERSHELL_CFGDIR={config}",
           # The gateway runs `python -m ClusterShell.Gateway`: ours has ClusterShell.
           f"CLUSTERSHELL_GW_PYTHON_EXECUTABLE={sys.executable}"]
    with cluster:
        (admin_root / "etc/ssitab").write_text(cluster.ssitab())
        rc, out, err = cluster.lilo(["--root", str(admin_root), "--json", "--nodes", "2-3",
                                     *cluster.push_args(), *FAST_KEX], env=env)
        assert rc == 0, err
        assert statuses(out) == {2: "updated", 3: "updated"}
        for n in (2, 3):
            assert localnode.installed_pair(cluster.nodes[n].boot) == new_pair(admin_root)
            log = (cluster.workdir / f"logs/sshd-{n}.log").read_text()
            assert "Accepted publickey for root from 10.77.0.11 " in log
            assert "from 10.77.0.1 " not in log  # never straight from the admin node
        assert localnode.installed_pair(cluster.nodes[1].boot) is None


def test_local_only_finds_mounts_syncs_and_unmounts_the_partition(
        tmp_path: Path, admin_root: Path) -> None:
    """Without --boot-dir: bootdev (here LABEL=, through udev's database or, where udev
    does not run, the agent's probe) resolved to a block device, mounted, synced, unmounted."""
    image = tmp_path / "boot.img"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    # A label of this test alone: other tests on this machine make ssiboot partitions.
    label = f"ssit{os.getpid()}"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, str(image)], check=True)
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        node = Node(1, "10.77.0.11", 24, ("52:54:00:5c:00:01",), True,
                    BootDev(BootDevKind.LABEL, label), "node1")
        assert localnode.find_bootdev(BootDev(BootDevKind.LABEL, label)) == Path(loop)
        kernel, initrd = admin_root / "boot/vmlinuz", admin_root / "boot/initrd.img"
        with localnode.boot_partition(None, lambda: node) as mnt:
            assert mnt.is_mount()
            assert local_only(mnt, kernel, initrd, CMDLINE).status.value == "updated"
            where = str(mnt)
        assert where not in Path("/proc/self/mounts").read_text()
        # --hashes and --dry-run look through a read-only mount.
        with localnode.boot_partition(None, lambda: node, read_only=True) as mnt:
            assert localnode.installed_pair(mnt) == new_pair(admin_root)
            options = next(line.split()[3] for line in
                           Path("/proc/self/mounts").read_text().splitlines()
                           if line.split()[1] == str(mnt))
            assert options.startswith("ro,")
        missing = Node(2, "10.77.0.12", 24, ("52:54:00:5c:00:02",), True,
                       BootDev(BootDevKind.LABEL, "nosuch"), "node2")
        with pytest.raises(localnode.NoBootPartition, match="no partition LABEL=nosuch"), \
                localnode.boot_partition(None, lambda: missing):
            pass
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False)


ROGUE = """#!/bin/sh
# A node that answers every push request with garbage: terminal escape
# sequences, a JSON document nested 200,000 deep, and ~40 MB of output.
if [ -e {boot}/ROGUE ]; then
    printf '\\033[2J\\033]0;owned\\007\\033[31mnode says hi\\n' >&2
    python3 -c '
import sys
sys.stdout.write("{{\\"status\\": \\"ok\\", \\"pair\\": " + "[" * 200000 + "]" * 200000 + "}}\\n")
sys.stdout.write(("\\033[2J" + "x" * 1000 + "\\n") * 40000)
sys.stdout.write("{{\\"status\\": \\"updated\\", \\"reason\\": \\"\\\\u001b[2Jowned\\"}}\\n")
'
    exit 0
fi
exec "$@"
"""


def test_a_rogue_node_fails_alone_and_cannot_touch_the_terminal(
        tmp_path: Path, admin_root: Path, cluster_factory: list[SshCluster]) -> None:
    cluster = SshCluster(tmp_path / "c", 3)
    cluster_factory.append(cluster)
    with cluster:
        (admin_root / "etc/ssitab").write_text(cluster.ssitab())
        (cluster.nodes[2].boot / "ROGUE").touch()
        script = tmp_path / "rogue.sh"
        script.write_text(ROGUE.format(boot=cluster.workdir / "mnt/boot"))
        script.chmod(0o755)
        args = cluster.push_args()
        at = args.index("--remote-lilo") + 1
        args[at] = f"{script} {args[at]}"
        for extra in (["--json"], []):
            rc, out, err = cluster.lilo(["--root", str(admin_root), *extra, *args, *FAST_KEX])
            assert rc == 1, err
            assert "Traceback" not in err and "RecursionError" not in err
            assert "\x1b" not in out and "\x1b" not in err  # nothing the node sent repaints
            assert "\x07" not in out and "\x07" not in err
            if extra:
                assert "\\x1b[2J" in str(by_node(out)[2]["detail"])  # shown, escaped
                assert statuses(out) == {1: "updated", 2: "failed", 3: "updated"} or \
                    statuses(out) == {1: "unchanged", 2: "failed", 3: "unchanged"}
            else:
                rows = [line.split() for line in out.splitlines()[2:5]]
                assert [r[3] for r in rows] == ["unchanged", "failed", "unchanged"]
                assert out.splitlines()[-1].endswith("failed: node 2")
        want = new_pair(admin_root)
        assert localnode.installed_pair(cluster.nodes[1].boot) == want
        assert localnode.installed_pair(cluster.nodes[3].boot) == want
        assert localnode.installed_pair(cluster.nodes[2].boot) is None
