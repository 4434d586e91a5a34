"""The agent knows its node and keeps a local boot partition in sync (QEMU, TCG).

Identity: MACs against the table, several NICs, ssi.bootif, an unknown
machine. Local boot: a stale partition is updated to exactly the shared
root's pair (checked from the host on the disk image), a second boot leaves
the image byte-identical, a missing partition does not stop the node, and
the synced disk then boots alone through extlinux.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import xxhash

from vm_tests import cluster, localdisk
from vm_tests.conftest import BootVm
from vm_tests.kernel import Kernel
from vm_tests.qemu import INIT_MARKER, Disk, Nic, Vm, VmConfig

RESCUE = r"linuxrc: .*rescue shell: type 'exit'"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices")


def shared_root(root_images: dict[str, Path]) -> Disk:
    return Disk(root_images["plain"], extra=",snapshot=on")


def root_args() -> str:
    return f"root=LABEL={cluster.ROOT_LABEL}"


# --- identity -------------------------------------------------------------------------


def test_known_mac_joins_as_its_node(boot_vm: BootVm, root_images: dict[str, Path]) -> None:
    env = boot_vm(root_args(), [shared_root(root_images)], macs=(cluster.MAC_N1,)).node_env()
    assert env["SSI_NODE"] == "1"
    assert (env["SSI_IP"], env["SSI_PREFIX"]) == ("10.77.0.11", "24")
    assert env["SSI_HOSTNAME"] == "n1" and env["SSI_MAC"] == cluster.MAC_N1
    assert env["SSI_IFACE"] == "eth0" and env["SSI_LOCAL_BOOT"] == "0"
    assert env["SSI_SYNC"] == "skipped"


def test_only_second_nic_listed(boot_vm: BootVm, root_images: dict[str, Path]) -> None:
    vm = boot_vm(root_args(), [shared_root(root_images)],
                 macs=(cluster.MAC_UNKNOWN, cluster.MAC_N1))
    env = vm.node_env()
    assert (env["SSI_NODE"], env["SSI_IFACE"], env["SSI_MAC"]) == ("1", "eth1", cluster.MAC_N1)


def test_bootif_chooses_between_listed_nics(boot_vm: BootVm,
                                            root_images: dict[str, Path]) -> None:
    vm = boot_vm(f"{root_args()} ssi.bootif={cluster.MAC_N3_SECOND}",
                 [shared_root(root_images)], macs=(cluster.MAC_N3, cluster.MAC_N3_SECOND))
    env = vm.node_env()
    assert (env["SSI_NODE"], env["SSI_MAC"], env["SSI_IFACE"]) == \
        ("3", cluster.MAC_N3_SECOND, "eth1")
    # PXELINUX's form of the same thing:
    vm = boot_vm(f"{root_args()} BOOTIF=01-{cluster.MAC_N3_SECOND.replace(':', '-')}",
                 [shared_root(root_images)], macs=(cluster.MAC_N3, cluster.MAC_N3_SECOND),
                 name="pxelinux")
    assert vm.node_env()["SSI_MAC"] == cluster.MAC_N3_SECOND


def test_unknown_machine_shows_its_macs_and_no_panic(boot_vm: BootVm,
                                                     root_images: dict[str, Path]) -> None:
    vm = boot_vm(f"{root_args()} ssi.timeout=2", [shared_root(root_images)],
                 macs=(cluster.MAC_UNKNOWN,))
    vm.wait_for(r"not in the node table")
    vm.wait_for(rf"eth0\s+{cluster.MAC_UNKNOWN}")
    vm.wait_for(rf"5\s+10\.77\.0\.15/24\s+{cluster.MAC_UNKNOWN}\s+0\s+-")  # paste-ready
    vm.wait_for(RESCUE)
    out = vm.output()
    assert "Kernel panic" not in out and INIT_MARKER not in out


# --- local boot partition -------------------------------------------------------------


@pytest.fixture(scope="module")
def stale_disk(tmp_path_factory: pytest.TempPathFactory, kernel: Kernel) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices")
    return localdisk.stale_disk(tmp_path_factory.mktemp("stale"), kernel.vmlinuz,
                                f"console=ttyS0 {root_args()}")


@needs_root
def test_stale_partition_is_updated_then_unchanged_then_boots_alone(
        boot_vm: BootVm, root_images: dict[str, Path], stale_disk: Path, tmp_path: Path,
        ramdisk: Path, kernel: Kernel) -> None:
    disk = tmp_path / "n2.img"
    shutil.copyfile(stale_disk, disk)
    before = localdisk.pair_on_disk(disk)
    assert xxhash.xxh3_128_hexdigest(ramdisk.read_bytes()) not in before.values()

    env = boot_vm(root_args(), [shared_root(root_images), Disk(disk)],
                  macs=(cluster.MAC_N2,), name="sync").node_env()
    assert (env["SSI_NODE"], env["SSI_LOCAL_BOOT"], env["SSI_SYNC"]) == ("2", "1", "updated")
    after = localdisk.pair_on_disk(disk)
    want = {xxhash.xxh3_128_hexdigest(kernel.vmlinuz.read_bytes()),
            xxhash.xxh3_128_hexdigest(ramdisk.read_bytes())}
    assert {v for k, v in after.items() if k != "extlinux.conf"} == want
    assert all(name in after["extlinux.conf"] for name in after if name != "extlinux.conf")

    # Booted again: unchanged, and not one byte of the disk image written.
    digest = localdisk.image_digest(disk)
    env = boot_vm(root_args(), [shared_root(root_images), Disk(disk)],
                  macs=(cluster.MAC_N2,), name="again").node_env()
    assert env["SSI_SYNC"] == "unchanged"
    assert localdisk.image_digest(disk) == digest

    # From the disk alone: no -kernel, no network boot. extlinux loads the synced pair.
    config = VmConfig(disks=[Disk(disk), shared_root(root_images)],
                      nics=[Nic(cluster.MAC_N2, netdev="user,restrict=on")],
                      extra=["-boot", "c"])
    with Vm(config, tmp_path / "disk-alone.log") as vm:
        env = vm.node_env(timeout=240)
        assert "SYSLINUX" in vm.output()  # extlinux, not -kernel, loaded the pair
    assert (env["SSI_NODE"], env["SSI_SYNC"]) == ("2", "unchanged")


def test_missing_boot_partition_still_joins(boot_vm: BootVm,
                                            root_images: dict[str, Path]) -> None:
    # Node 4 has the local flag and bootdev /dev/vdb1, but no second disk at all.
    vm = boot_vm(root_args(), [shared_root(root_images)], macs=(cluster.MAC_N4,))
    env = vm.node_env()
    assert (env["SSI_NODE"], env["SSI_LOCAL_BOOT"], env["SSI_SYNC"]) == \
        ("4", "1", "no-boot-partition")
    assert "mkfs" in vm.output()  # how to create it
