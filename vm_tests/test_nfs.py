"""Diskless nodes over NFS: a real nfs-ganesha, nodes with no disk at all (QEMU, TCG).

The export is the tests' shared root tree (images.shared_root_tree) with one
more init, /sbin/init-check: it prints the root's mounts and tries to write
(change a file, create one, delete one), then hands over to the usual test
init, which prints node.env and powers off. Two VMs boot at once where a
test has two things to show.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import xxhash

from vm_tests import cluster, images, localdisk, nfs
from vm_tests.kernel import Kernel
from vm_tests.nfs import NfsNet, nfs_network, nfs_server, tree_digest
from vm_tests.pxe import admin_tree, pxe_network
from vm_tests.qemu import INIT_MARKER, Disk, Nic, Vm, VmConfig, console_args

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, taps, loop devices"),
    pytest.mark.skipif(nfs.available() is not None, reason=str(nfs.available())),
]

RESCUE = r"linuxrc: .*rescue shell: type 'exit'"
CHECK_INIT = "/sbin/init-check"
INIT_CHECK = """#!/bin/busybox sh
# Report how the root is mounted and whether this node can write to it, then the test init.
b=/bin/busybox
$b mount -t proc proc /proc 2>/dev/null
n=$($b hostname)
$b grep -E ' / | /run/ssi/' /proc/mounts | $b sed 's/^/SSI-MOUNT /'
$b stat -c 'SSI-OWNER %u:%g %n' /run/ssi/lower /run/ssi/lower/etc/motd 2>/dev/null
if echo "written by $n" > /etc/motd 2>/dev/null && echo "$n" > "/node-$n" 2>/dev/null \\
        && $b rm /etc/remove-me 2>/dev/null; then
    gone=yes; [ -e /etc/remove-me ] && gone=no
    echo "SSI-WRITE ok motd=[$($b cat /etc/motd)] nodes=$($b ls / | $b grep -c '^node-')" \\
         "removed=$gone"
else
    echo "SSI-WRITE refused motd=[$($b cat /etc/motd)]"
fi
exec /sbin/init
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, kernel: Kernel, ramdisk: Path) -> Path:
    """The shared root the server exports: the test tree, its default pair, init-check."""
    tree = images.shared_root_tree(tmp_path_factory.mktemp("nfs") / "export",
                                   kernel=kernel.vmlinuz, initrd=ramdisk)
    (tree / "sbin" / "init-check").write_text(INIT_CHECK)
    (tree / "sbin" / "init-check").chmod(0o755)
    (tree / "etc" / "motd").write_text("the shared root\n")
    (tree / "etc" / "remove-me").write_text("a file the overlay hides\n")
    return tree


@pytest.fixture(scope="module")
def net(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NfsNet]:
    with nfs_network(tmp_path_factory.mktemp("nfsnet"), export) as net:
        yield net


@pytest.fixture
def vms() -> Iterator[ExitStack]:
    """Every VM a test starts is killed at its end, failed or not."""
    with ExitStack() as stack:
        yield stack


def nfs_vm(vms: ExitStack, net: NfsNet, kernel: Kernel, ramdisk: Path, mac: str, args: str,
           log: Path, disks: list[Disk] | None = None) -> Vm:
    """A node on the server's network; no disk unless given one."""
    config = VmConfig(kernel=kernel.vmlinuz, initrd=ramdisk, append=console_args([args]),
                      nics=[Nic(mac, netdev=net.netdev())], netns=net.ns, disks=disks or [])
    return vms.enter_context(Vm(config, log))


def mounts(vm: Vm) -> dict[str, tuple[str, str]]:
    """Mount point -> (fstype, options), from init-check's SSI-MOUNT lines."""
    found = {}
    for m in re.finditer(r"SSI-MOUNT (\S+) (\S+) (\S+) (\S+)", vm.output()):
        found[m.group(2)] = (m.group(3), m.group(4))
    return found


def test_two_diskless_nodes_write_through_their_overlays_and_the_export_stays_as_it_was(
        net: NfsNet, export: Path, kernel: Kernel, ramdisk: Path, vms: ExitStack,
        tmp_path: Path) -> None:
    before = tree_digest(export)
    # nfs4: and nfs: side by side: nfs: negotiates the same NFSv4.2 with this server.
    roots = {"n1": net.server.root("nfs4"), "n3": net.server.root("nfs")}
    nodes = {
        name: nfs_vm(vms, net, kernel, ramdisk, mac,
                     f"root={roots[name]} ssi.overlay=tmpfs init={CHECK_INIT}",
                     tmp_path / f"{name}.log")
        for name, mac in (("n1", cluster.MAC_N1), ("n3", cluster.MAC_N3))
    }
    envs = {name: vm.node_env(timeout=240) for name, vm in nodes.items()}
    for name, vm in nodes.items():
        env = envs[name]
        assert (env["SSI_HOSTNAME"], env["SSI_ROOT"], env["SSI_OVERLAY"]) == \
            (name, roots[name], "tmpfs")
        # Each node wrote, sees its own writes only, and the deleted file is gone for it.
        assert f"SSI-WRITE ok motd=[written by {name}] nodes=1 removed=yes" in vm.output()
        seen = mounts(vm)
        assert seen["/"][0] == "overlay" and "lowerdir=/run/ssi/lower" in seen["/"][1]
        assert seen["/run/ssi/lower"][0] == "nfs4" and "vers=4.2" in seen["/run/ssi/lower"][1]
        assert seen["/run/ssi/lower"][1].startswith("ro,")
        assert seen["/run/ssi/overlay"][0] == "tmpfs"
        assert re.search(r"linuxrc: .*root: 10\.77\.0\.1:/srv/ssiroot mounted over NFS 4\.2 "
                         r"\(ro\) on /run/ssi/lower", vm.output())
        # Owners as numbers (the server's Only_Numeric_Owners): root's files are root's.
        assert "SSI-OWNER 0:0 /run/ssi/lower/etc/motd" in vm.output()
        assert "owned by uid" not in vm.output()
        stages = dict(w.split(":") for w in env["SSI_STAGES_MS"].split())
        assert int(stages["devices"]) < 1000  # no device to wait for
        assert "Kernel panic" not in vm.output()
    assert tree_digest(export) == before
    assert (export / "etc" / "motd").read_text() == "the shared root\n"


def test_without_overlay_the_root_is_read_only_and_refusals_are_named(
        net: NfsNet, kernel: Kernel, ramdisk: Path, vms: ExitStack, tmp_path: Path) -> None:
    # Three nodes at once: NFSv3 read-only; an export that does not exist; one not for us
    # (over NFSv3: an NFSv4 server hides an export from a client it refuses: ENOENT).
    v3 = net.server.root("nfs", "vers=3")
    ro = nfs_vm(vms, net, kernel, ramdisk, cluster.MAC_N1, f"root={v3} init={CHECK_INIT}",
                tmp_path / "ro.log")
    wrong = net.server.root("nfs4", path="/srv/no-such-root")
    absent = nfs_vm(vms, net, kernel, ramdisk, cluster.MAC_N3, f"root={wrong}",
                    tmp_path / "wrong.log")
    private = net.server.root("nfs", "vers=3", path=nfs.PRIVATE)
    denied = nfs_vm(vms, net, kernel, ramdisk, cluster.MAC_N4, f"root={private}",
                    tmp_path / "denied.log")
    env = ro.node_env(timeout=240)
    assert (env["SSI_NODE"], env["SSI_ROOT"], env["SSI_OVERLAY"]) == ("1", v3, "")
    assert "SSI-WRITE refused motd=[the shared root]" in ro.output()
    fstype, options = mounts(ro)["/"]
    assert fstype == "nfs" and options.startswith("ro,") and "vers=3" in options
    assert "nolock" in options
    absent.wait_for(r"linuxrc: .*FATAL.*NFS root 10\.77\.0\.1:/srv/no-such-root: the server "
                    r"has no export /srv/no-such-root \(ENOENT, NFS 4\.2\)", timeout=240)
    denied.wait_for(r"linuxrc: .*FATAL.*NFS root 10\.77\.0\.1:/srv/private: access denied by "
                    r"10\.77\.0\.1 \(E(ACCES|PERM), NFS 3\)", timeout=240)
    for vm in (absent, denied):
        vm.wait_for(RESCUE)
        assert INIT_MARKER not in vm.output() and "Kernel panic" not in vm.output()
        assert "waiting for the NFS server" not in vm.output()  # a no is not waited on


def test_server_down_or_hung_at_boot_gives_the_rescue_shell_and_exit_joins_once_it_is_up(
        export: Path, kernel: Kernel, ramdisk: Path, vms: ExitStack, tmp_path: Path) -> None:
    with nfs_network(tmp_path / "net", export, start=False) as net:
        root = net.server.root("nfs")
        vm = nfs_vm(vms, net, kernel, ramdisk, cluster.MAC_N1,
                    f"root={root} ssi.overlay=tmpfs ssi.timeout=4 init={CHECK_INIT}",
                    tmp_path / "n1.log")
        vm.wait_for(r"linuxrc: .*waiting for the NFS server 10\.77\.0\.1 \(Connection refused\)",
                    timeout=240)
        vm.wait_for(r"linuxrc: .*FATAL.*NFS root 10\.77\.0\.1:/srv/ssiroot: no answer from "
                    r"10\.77\.0\.1 on port 2049 within \d+ s \(Connection refused\)")
        vm.wait_for(RESCUE)
        assert INIT_MARKER not in vm.output()
        # The server that comes up speaks NFSv3 only: nfs: finds no v4 and falls back.
        net.server.protocols = "3"
        net.server.start()
        # But first it hangs: the port takes connections, no RPC is answered.
        net.server.pause()
        vm.send("exit\n")
        vm.wait_for(r"linuxrc: .*FATAL.*NFS root 10\.77\.0\.1:/srv/ssiroot: 10\.77\.0\.1 "
                    r"accepts connections on port 2049 but its NFS service did not reply "
                    r"within \d+ s", timeout=120)
        vm.wait_for(r"(?s)accepts connections.*" + RESCUE)
        net.server.resume()
        vm.send("exit\n")
        env = vm.node_env(timeout=120)
        assert vm.output().count("retrying stage root") == 2
    assert (env["SSI_NODE"], env["SSI_ROOT"], env["SSI_OVERLAY"]) == ("1", root, "tmpfs")
    fstype, options = mounts(vm)["/run/ssi/lower"]
    assert fstype == "nfs" and "vers=3" in options
    assert "SSI-WRITE ok motd=[written by n1]" in vm.output()


def test_an_nfs4_server_sending_owners_by_name_is_named_and_the_node_still_joins(
        export: Path, kernel: Kernel, ramdisk: Path, vms: ExitStack, tmp_path: Path) -> None:
    """nfs-ganesha's default: NFSv4 owners as user@domain. The ramdisk maps no names, so the
    whole shared root reads as owned by 4294967294 (-2); the agent says so and what to
    change."""
    with nfs_network(tmp_path / "net", export, numeric_owners=False) as net:
        root = net.server.root("nfs4")
        vm = nfs_vm(vms, net, kernel, ramdisk, cluster.MAC_N1,
                    f"root={root} ssi.overlay=tmpfs init={CHECK_INIT}", tmp_path / "n1.log")
        env = vm.node_env(timeout=240)
    assert (env["SSI_NODE"], env["SSI_ROOT"]) == ("1", root)
    assert "SSI-OWNER 4294967294:4294967294 /run/ssi/lower/etc/motd" in vm.output()
    assert re.search(r"linuxrc: .*warning: root: the shared root's / reads as owned by uid "
                     r"4294967294 over NFS 4\.2", vm.output())
    assert "Only_Numeric_Owners" in vm.output()


def test_local_boot_node_syncs_its_partition_from_the_pair_on_the_nfs_root(
        net: NfsNet, export: Path, kernel: Kernel, ramdisk: Path, vms: ExitStack,
        tmp_path: Path) -> None:
    args = f"root={net.server.root('nfs4')} ssi.overlay=tmpfs"
    disk = localdisk.stale_disk(tmp_path, kernel.vmlinuz, args)
    vm = nfs_vm(vms, net, kernel, ramdisk, cluster.MAC_N2, args, tmp_path / "n2.log",
                disks=[Disk(disk)])
    env = vm.node_env(timeout=300)
    vm.wait_exit(60)  # powered off: the disk is quiet before the host reads it
    assert (env["SSI_NODE"], env["SSI_SYNC"], env["SSI_OVERLAY"]) == ("2", "updated", "tmpfs")
    on_disk = localdisk.pair_on_disk(disk)
    for name in ("vmlinuz", "initrd.img"):
        assert xxhash.xxh3_128_hexdigest((export / "boot" / name).read_bytes()) \
            in on_disk.values()


def test_diskless_node_pxe_boots_through_dhcpd_and_tftpd_and_joins_over_nfs(
        export: Path, kernel: Kernel, ramdisk: Path, tmp_path: Path) -> None:
    # What an admin writes: lilo.ssi --cmdline with the NFS root, published for PXE.
    root = f"nfs4:{nfs.SERVER_IP}:{nfs.PSEUDO}"
    admin = admin_tree(tmp_path / "admin", kernel.vmlinuz, ramdisk,
                       f"root={root} ssi.overlay=tmpfs console=ttyS0 panic=-1 quiet")
    (tmp_path / "net").mkdir()
    with pxe_network(tmp_path / "net", admin / "etc/dhcpd.conf", admin / "tftpboot") as net, \
            nfs_server(net.netns, tmp_path / "ganesha", export), \
            net.node(cluster.MAC_N1, tmp_path / "n1.log") as vm:
        env = vm.node_env(timeout=300)
        assert f"DHCPACK on 10.77.0.11 to {cluster.MAC_N1}" in net.dhcpd_output()
    assert (env["SSI_NODE"], env["SSI_ROOT"], env["SSI_OVERLAY"]) == ("1", root, "tmpfs")
    assert "Kernel panic" not in vm.output()
