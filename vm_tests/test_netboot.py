"""Network boot end to end: QEMU's iPXE ROM -> real ISC dhcpd -> tftpd-hpa -> our ramdisk.

One private boot network (namespace, bridge, dhcpd, tftpd) serves the whole
module; each test attaches its nodes on fresh tap devices.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from mkinitrd_ssi.lilo import main as lilo
from mkinitrd_ssi.mkinitrd import main as mkinitrd
from vm_tests import cluster, localdisk
from vm_tests.kernel import Kernel
from vm_tests.pxe import PxeNet
from vm_tests.qemu import Disk, Nic, Vm, VmConfig

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespace, taps")

CMDLINE = f"root=LABEL={cluster.ROOT_LABEL} console=ttyS0 panic=-1 quiet"


def shared_root(root_images: dict[str, Path]) -> Disk:
    return Disk(root_images["plain"], extra=",snapshot=on")


def test_diskless_node_pxe_boots_and_joins(net: PxeNet, root_images: dict[str, Path],
                                          tmp_path: Path) -> None:
    with net.node(cluster.MAC_N1, tmp_path / "n1.log", [shared_root(root_images)]) as vm:
        env = vm.node_env(timeout=240)
    assert env["SSI_NODE"] == "1"
    assert env["SSI_IP"] == "10.77.0.11" and env["SSI_PREFIX"] == "24"
    assert env["SSI_MAC"] == cluster.MAC_N1 and env["SSI_HOSTNAME"] == "n1"
    assert env["SSI_LOCAL_BOOT"] == "0"
    assert f"DHCPACK on 10.77.0.11 to {cluster.MAC_N1}" in net.dhcpd_output()


def test_local_node_pxe_boots_syncs_then_boots_from_disk_alone(
        net: PxeNet, root_images: dict[str, Path], kernel: Kernel, ramdisk: Path,
        tmp_path: Path) -> None:
    disk = localdisk.stale_disk(tmp_path, kernel.vmlinuz, CMDLINE)
    with net.node(cluster.MAC_N2, tmp_path / "n2-pxe.log",
                  [Disk(disk), shared_root(root_images)]) as vm:
        env = vm.node_env(timeout=240)
    assert (env["SSI_NODE"], env["SSI_SYNC"]) == ("2", "updated")
    on_disk = localdisk.pair_on_disk(disk)
    assert xxhash.xxh3_128_hexdigest(ramdisk.read_bytes()) in on_disk.values()
    # Powered off; now no network boot: the BIOS boots the disk, extlinux the synced pair.
    config = VmConfig(nics=[Nic(cluster.MAC_N2, netdev=net.netdev())], netns=net.ns,
                      disks=[Disk(disk), shared_root(root_images)], extra=["-boot", "c"])
    with Vm(config, tmp_path / "n2-disk.log") as vm:
        env = vm.node_env(timeout=240)
        assert "SYSLINUX" in vm.output()
    assert (env["SSI_NODE"], env["SSI_SYNC"]) == ("2", "unchanged")


def test_unknown_mac_gets_no_lease_then_joins_once_added(
        net: PxeNet, admin_root: Path, kernel: Kernel, root_images: dict[str, Path],
        tmp_path: Path) -> None:
    mac = cluster.MAC_UNKNOWN
    with net.node(mac, tmp_path / "unknown.log", [shared_root(root_images)]) as vm:
        # Two DISCOVERs and no OFFER: dhcpd saw the ROM and refused it.
        _wait_log(net, f"DHCPDISCOVER from {mac}", count=2)
        assert "DHCPOFFER on" not in _lines_for(net, mac)
        assert "Linux version" not in vm.output()
    # The seed's "beautiful part": add the MAC, rebuild, republish, boot the same VM.
    with open(admin_root / "etc/ssitab", "a") as f:
        f.write(f"5  10.77.0.15/24  {mac}  0  -  hostname=n5\n")
    assert mkinitrd(["--root", str(admin_root), "--moddir", str(kernel.moddir)]) == 0
    assert lilo(["--root", str(admin_root), "--no-push"]) == 0
    net.restart_dhcpd()
    with net.node(mac, tmp_path / "added.log", [shared_root(root_images)]) as vm:
        env = vm.node_env(timeout=240)
    assert (env["SSI_NODE"], env["SSI_IP"], env["SSI_HOSTNAME"]) == ("5", "10.77.0.15", "n5")


def test_three_nodes_boot_at_once(net: PxeNet, root_images: dict[str, Path],
                                  tmp_path: Path) -> None:
    # Not node 3's two NICs as two VMs: they share one address, as they would on one machine.
    macs = {"1": cluster.MAC_N1, "3": cluster.MAC_N3_SECOND, "4": cluster.MAC_N4}
    vms = {name: net.node(mac, tmp_path / f"{name}.log", [shared_root(root_images)])
           for name, mac in macs.items()}
    try:
        envs = {name: vm.node_env(timeout=360) for name, vm in vms.items()}
    finally:
        for vm in vms.values():
            vm.kill()
    assert {name: env["SSI_NODE"] for name, env in envs.items()} == {"1": "1", "3": "3", "4": "4"}
    assert envs["3"]["SSI_MAC"] == cluster.MAC_N3_SECOND  # node 3 by its second MAC
    # Node 4 has the local flag but no disk: it says so and joins all the same.
    assert envs["4"]["SSI_SYNC"] == "no-boot-partition"


def _lines_for(net: PxeNet, mac: str) -> str:
    return "\n".join(line for line in net.dhcpd_output().splitlines() if mac in line)


def _wait_log(net: PxeNet, text: str, count: int, timeout: float = 90.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while net.dhcpd_output().count(text) < count:
        assert time.monotonic() < deadline, f"dhcpd never logged {text!r} x{count}:\n" \
            + net.dhcpd_output()[-2000:]
        time.sleep(0.2)
