"""Shared fixtures of the boot tests: one kernel cache, one ramdisk per session."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vm_tests import cluster, images, pxe
from vm_tests.kernel import Kernel
from vm_tests.kernel import kernel as cached_kernel
from vm_tests.qemu import Disk, Nic, Vm, VmConfig, console_args


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "vm_tests" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed (make deps)")
    return cached_kernel()


@pytest.fixture(scope="session")
def build_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adminroot")
    (root / "etc").mkdir()
    (root / "etc" / "ssitab").write_text(cluster.SSITAB)
    return root


@pytest.fixture(scope="session")
def ramdisk(kernel: Kernel, build_root: Path) -> Path:
    """The ramdisk every boot test uses, built once by mkinitrd.ssi from the test table."""
    from mkinitrd_ssi.mkinitrd import main

    out = build_root / "boot" / "initrd-ssi.img"
    rc = main(["--root", str(build_root), "--moddir", str(kernel.moddir), "--no-dhcpd",
               "-o", str(out)])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def root_images(tmp_path_factory: pytest.TempPathFactory, kernel: Kernel,
                ramdisk: Path) -> dict[str, Path]:
    """Pristine shared-root images (copy before use: a boot may write to them)."""
    base = tmp_path_factory.mktemp("rootimg")
    tree = images.shared_root_tree(base / "tree", kernel=kernel.vmlinuz, initrd=ramdisk)
    return {
        "plain": images.ext4_image(base / "root.img", tree, size_mb=160,
                                   label=cluster.ROOT_LABEL, uuid=cluster.ROOT_UUID),
    }


@pytest.fixture(scope="module")
def admin_root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               kernel: Kernel, ramdisk: Path) -> Path:
    """The admin's tree of a PXE test module (pxe.admin_tree), with that module's CMDLINE."""
    name = request.module.__name__.rpartition(".")[2]
    return pxe.admin_tree(tmp_path_factory.mktemp(f"{name}-root"), kernel.vmlinuz, ramdisk,
                          request.module.CMDLINE)


@pytest.fixture(scope="module")
def net(admin_root: Path) -> Iterator[pxe.PxeNet]:
    """The private boot network serving admin_root: dhcpd and tftpd in a namespace."""
    with pxe.serving(admin_root) as boot_net:
        yield boot_net


@pytest.fixture
def root_image(root_images: dict[str, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "root.img"
    shutil.copyfile(root_images["plain"], copy)
    return copy


BootVm = Callable[..., Vm]


@pytest.fixture
def boot_vm(kernel: Kernel, ramdisk: Path, tmp_path: Path,
            request: pytest.FixtureRequest) -> BootVm:
    """Start a direct-kernel-boot VM; every VM a test starts is killed at its end."""
    vms: list[Vm] = []

    def start(append: str, disks: list[Disk], macs: tuple[str, ...] = (cluster.MAC_N1,),
              name: str = "vm", initrd: Path | None = None) -> Vm:
        config = VmConfig(kernel=kernel.vmlinuz, initrd=initrd or ramdisk,
                          append=console_args([append]), disks=disks,
                          nics=[Nic(mac) for mac in macs])
        vm = Vm(config, tmp_path / f"{name}.log")
        vms.append(vm)
        return vm

    def cleanup() -> None:
        for vm in vms:
            vm.kill()

    request.addfinalizer(cleanup)
    return start
