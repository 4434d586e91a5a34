"""The ramdisk boots a real Debian kernel into the shared root (QEMU, TCG).

Each test decides by what the console shows: the shared root's test init
prints a marker and /run/ssi/node.env; the agent prints `linuxrc:` lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vm_tests import cluster
from vm_tests.conftest import BootVm
from vm_tests.kernel import Kernel
from vm_tests.qemu import INIT_MARKER, Disk

SWITCH = r"linuxrc: .*switching to /sbin/init"
RESCUE = r"linuxrc: .*rescue shell: type 'exit'"


def shared_root(root_images: dict[str, Path]) -> Disk:
    # snapshot=on: every VM writes to its own overlay, the image stays pristine.
    return Disk(root_images["plain"], extra=",snapshot=on")


@pytest.mark.parametrize("root", ["/dev/vda", f"LABEL={cluster.ROOT_LABEL}",
                                  f"UUID={cluster.ROOT_UUID}"])
def test_reaches_shared_root_init(boot_vm: BootVm, root_images: dict[str, Path],
                                  root: str) -> None:
    vm = boot_vm(f"root={root}", [shared_root(root_images)])
    vm.wait_for(SWITCH)
    env = vm.node_env()
    assert int(env["SSI_BOOT_MS"]) > 0
    assert env["SSI_SYNC"] in ("skipped", "unchanged", "updated", "no-boot-partition")
    # Every stage up to node.env timed, in boot order; what root= named; the firmware.
    stages = dict(word.split(":") for word in env["SSI_STAGES_MS"].split())
    assert list(stages)[:8] == ["mount_api", "cmdline", "modules", "devices", "identity",
                                "network", "root", "sync"]
    assert all(ms.isdigit() for ms in stages.values())
    assert sum(map(int, stages.values())) <= int(env["SSI_BOOT_MS"])
    assert env["SSI_ROOT"] == root
    assert (env["SSI_OVERLAY"], env["SSI_FIRMWARE"], env["SSI_SECURE_BOOT"]) == ("", "bios", "0")
    assert "Kernel panic" not in vm.output()


def test_missing_root_device_ends_in_rescue_shell_not_panic(
        boot_vm: BootVm, root_images: dict[str, Path]) -> None:
    vm = boot_vm("root=LABEL=no-such-root ssi.timeout=3", [shared_root(root_images)])
    vm.wait_for(r"linuxrc: .*FATAL.*root device LABEL=no-such-root not found")
    vm.wait_for(RESCUE)
    out = vm.output()
    assert "LABEL=ssiroot" in out or "/dev/vda" in out  # the devices seen are listed
    assert "Kernel panic" not in out and INIT_MARKER not in out


def test_break_opens_shell_before_stage_then_goes_on(
        boot_vm: BootVm, root_images: dict[str, Path]) -> None:
    vm = boot_vm("root=/dev/vda ssi.break=root", [shared_root(root_images)])
    vm.wait_for(r"linuxrc: .*ssi.break: stopping before stage root")
    vm.wait_for(RESCUE)
    # The shell read the image's /etc/profile (ramdisk_skel/): its hint, then its prompt.
    vm.wait_for(r"'exit' continues the boot")
    vm.wait_for(r"\(linuxrc rescue\) ~ # ")  # HOME is /, so \w shows the cwd / as ~
    assert INIT_MARKER not in vm.output()
    # The shell runs before the root is mounted: /newroot is still empty. The skeleton's
    # /etc/passwd names uid 0.
    vm.send("ls /newroot | wc -l | sed 's/^/NEWROOT-ENTRIES=/'; id -un | sed 's/^/USER=/'\n")
    vm.wait_for(r"NEWROOT-ENTRIES=0")
    vm.wait_for(r"USER=root")
    vm.send("exit\n")
    vm.wait_for(INIT_MARKER)


def test_missing_module_is_named(boot_vm: BootVm, root_images: dict[str, Path],
                                 ramdisk_without_virtio_blk: Path) -> None:
    vm = boot_vm("root=/dev/vda ssi.timeout=3", [shared_root(root_images)],
                 initrd=ramdisk_without_virtio_blk)
    vm.wait_for(r"needs module virtio_blk, not in\s+this ramdisk|needs module virtio_blk")
    vm.wait_for(r"--add-modules virtio_blk")
    vm.wait_for(RESCUE)
    assert "Kernel panic" not in vm.output()


@pytest.fixture(scope="session")
def ramdisk_without_virtio_blk(kernel: Kernel, build_root: Path,
                               tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mkinitrd_ssi.mkinitrd import main

    builtin = (kernel.moddir / "modules.builtin").read_text()
    if "/virtio_blk.ko" in builtin:
        pytest.fail("virtio_blk is built into this kernel: pick another module to omit")
    out = tmp_path_factory.mktemp("noblk") / "initrd.img"
    assert main(["--root", str(build_root), "--moddir", str(kernel.moddir), "--no-dhcpd",
                 "--omit-modules", "virtio_blk", "-o", str(out)]) == 0
    return out
