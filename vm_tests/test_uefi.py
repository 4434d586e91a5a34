"""UEFI and Secure Boot under OVMF: firmware PXE -> shim -> Debian's signed GRUB -> kernel.

The same admin tree as the BIOS tests (mkdhcpd.ssi from the example proto,
lilo.ssi publishing shim, GRUB and grub.cfg beside iPXE and PXELINUX), real
dhcpd and tftpd-hpa in a namespace; the NICs carry no option ROM, so OVMF's
own PXE runs, as on real hardware. OVMF under TCG is slow (about 20 s of
firmware a boot), so the tests boot two machines at once where they can.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from linuxrc_agent.cmdline import tokenize
from mkinitrd_ssi.netboot.publish import EFI_FILES
from vm_tests import cluster
from vm_tests.kernel import Kernel
from vm_tests.pxe import PxeNet, admin_tree, serving
from vm_tests.qemu import ENV_END, OVMF_DIR, Disk, Uefi, Vm

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespace, taps"),
    pytest.mark.skipif(not (OVMF_DIR / "OVMF_CODE_4M.secboot.fd").is_file(),
                       reason="ovmf not installed (make deps installs it)"),
    pytest.mark.skipif(not all(Path(path).is_file() for path, _pkg in EFI_FILES.values()),
                       reason="shim-signed or grub-efi-amd64-signed not installed (make deps)"),
]

# A quoted value with a space: GRUB re-quotes it on the way (cmdline.for_grub), iPXE
# passes it as written; the kernel must read the same word from both.
CMDLINE = f'root=LABEL={cluster.ROOT_LABEL} console=ttyS0 panic=-1 quiet ssi.note="a b"'
BOOT_TIMEOUT = 600  # OVMF under TCG, two or three machines on two shared cores
# What Debian's GRUB says when shim refuses the kernel's signature.
REFUSED = "bad shim signature"


def shared_root(root_images: dict[str, Path]) -> Disk:
    return Disk(root_images["plain"], extra=",snapshot=on")


def joined_after(vms: dict[str, Vm], timeout: float = BOOT_TIMEOUT) -> dict[str, float]:
    """Seconds from each machine's power-on to its shared root's init printing node.env,
    watching all at once (so that one slow machine does not hide when another joined)."""
    joined: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(joined) < len(vms):
        for name, vm in vms.items():
            if name not in joined and ENV_END in vm.output():
                joined[name] = time.monotonic() - vm.started
        if time.monotonic() > deadline:
            missing = [name for name in vms if name not in joined]
            vms[missing[0]].wait_for(ENV_END, 0)  # fails with that machine's console
        time.sleep(0.2)
    return joined


def test_uefi_and_bios_nodes_pxe_boot_at_once_from_one_table(
        net: PxeNet, root_images: dict[str, Path], tmp_path: Path) -> None:
    uefi = Uefi.fresh(tmp_path / "n1-vars.fd")
    with net.node(cluster.MAC_N1, tmp_path / "n1-uefi.log", [shared_root(root_images)],
                  uefi=uefi) as n1, \
            net.node(cluster.MAC_N3, tmp_path / "n3-bios.log", [shared_root(root_images)]) as n3:
        joined = joined_after({"uefi": n1, "bios": n3})
        envs = {"uefi": n1.node_env(), "bios": n3.node_env()}
        cmdlines = {"uefi": n1.proc_cmdline(), "bios": n3.proc_cmdline()}
        console = n1.output()
    print(f"\npower-on to joined, booting at once: UEFI (OVMF PXE, shim, GRUB) "
          f"{joined['uefi']:.1f} s, BIOS (iPXE) {joined['bios']:.1f} s")
    assert (envs["uefi"]["SSI_NODE"], envs["uefi"]["SSI_IP"]) == ("1", "10.77.0.11")
    assert (envs["uefi"]["SSI_FIRMWARE"], envs["uefi"]["SSI_SECURE_BOOT"]) == ("uefi", "0")
    assert envs["uefi"]["SSI_MAC"] == cluster.MAC_N1  # ssi.bootif from net_default_mac
    assert (envs["bios"]["SSI_NODE"], envs["bios"]["SSI_FIRMWARE"]) == ("3", "bios")
    # The chain as the consoles tell it (tftpd-hpa logs to a syslog the namespace lacks):
    # DHCP sent OVMF shim, shim fetched GRUB, GRUB read lilo.ssi's grub.cfg and passed
    # the kernel its BOOT_IMAGE; the BIOS machine's iPXE ran ssi.ipxe (no BOOT_IMAGE).
    chain = ["NBP filename is shimx64.efi", "Fetching Netboot Image grubx64.efi",
             "lilo.ssi: booting ssi/sets/"]
    assert [console.find(step) for step in chain] == sorted(console.find(s) for s in chain)
    assert all(step in console for step in chain), console[:3000]
    assert "BOOT_IMAGE=/ssi/sets/" in cmdlines["uefi"]
    assert "BOOT_IMAGE=" not in cmdlines["bios"] and "ssi.bootif=52:54:00:12:34:03" in \
        cmdlines["bios"]
    # The quoted argument reached both kernels as one word, whatever each loader did.
    for name, text in cmdlines.items():
        words = [(w.key, w.value) for w in tokenize(text).kernel]
        assert ("ssi.note", "a b") in words, (name, text)
    assert '"ssi.note=a b"' in cmdlines["uefi"]  # GRUB's own quoting, as measured


def tampered(kernel: Path, out: Path) -> Path:
    """The kernel with one byte changed, inside the signed part (its middle)."""
    data = bytearray(kernel.read_bytes())
    data[len(data) // 2] ^= 0x01
    out.write_bytes(data)
    return out


def test_secure_boot_node_joins_and_a_tampered_kernel_is_refused(
        net: PxeNet, root_images: dict[str, Path], kernel: Kernel, ramdisk: Path,
        tmp_path: Path) -> None:
    # The tampered kernel is published by a second admin tree on a second network of
    # its own, so both machines boot at once.
    bad_root = admin_tree(tmp_path / "badroot", tampered(kernel.vmlinuz, tmp_path / "vmlinuz"),
                          ramdisk, CMDLINE)
    with serving(bad_root) as bad_net, \
            net.node(cluster.MAC_N1, tmp_path / "n1-sb.log", [shared_root(root_images)],
                     uefi=Uefi.fresh(tmp_path / "n1-vars.fd", secure_boot=True)) as good, \
            bad_net.node(cluster.MAC_N3, tmp_path / "n3-tampered.log",
                         [shared_root(root_images)],
                         uefi=Uefi.fresh(tmp_path / "n3-vars.fd", secure_boot=True)) as bad:
        bad.wait_for("lilo.ssi: GRUB could not boot", BOOT_TIMEOUT)
        refused = bad.output()
        env = good.node_env(BOOT_TIMEOUT)
        console = good.output()
    assert (env["SSI_NODE"], env["SSI_FIRMWARE"], env["SSI_SECURE_BOOT"]) == ("1", "uefi", "1")
    # Locked down by Secure Boot, the kernel loads only signed modules: Debian's, as the
    # ramdisk carries them, byte for byte.
    assert "linuxrc: modules: loaded 9 of" in console and "virtio_net" in console
    # shim checked GRUB, GRUB had shim check the kernel: the changed byte stops the boot.
    assert REFUSED in refused, refused[-3000:]
    assert "Linux version" not in refused
