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

from linuxrc_agent.bootpair.esp import LOADERS as ESP_LOADERS
from linuxrc_agent.cmdline import tokenize
from mkinitrd_ssi.lilo import main as lilo
from mkinitrd_ssi.netboot.publish import EFI_FILES, GRUB_CFG, SETS_DIR
from mkinitrd_ssi.run import run
from vm_tests import cluster
from vm_tests.fetchstorm import http_fetches, start_nginx
from vm_tests.kernel import Kernel
from vm_tests.pxe import SERVER_IP, PxeNet, admin_tree, serving
from vm_tests.qemu import ENV_END, OVMF_DIR, Disk, Nic, Uefi, Vm, VmConfig

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


def test_http_url_keeps_a_secure_boot_node_booting(
        root_images: dict[str, Path], kernel: Kernel, ramdisk: Path, tmp_path: Path) -> None:
    """`lilo.ssi --http-url` (for iPXE's sake) must not strand a UEFI node. grub.cfg asks
    for the set by (http,SERVER)/PATH first, then over TFTP: Debian's signed network GRUB,
    all a Secure Boot machine may run, has no http (found by this test: it stopped at
    "disk `http,10.77.0.1' not found"), a GRUB with http takes the pair from nginx."""
    http_root = admin_tree(tmp_path / "httproot", kernel.vmlinuz, ramdisk, CMDLINE,
                           lilo_args=["--http-url", f"http://{SERVER_IP}/"])
    tftpboot = http_root / "tftpboot"
    assert f"(http,{SERVER_IP})/{SETS_DIR}/" in (tftpboot / GRUB_CFG).read_text()
    with serving(http_root) as http_net, \
            start_nginx(http_net.netns, tftpboot, http_root / "net"), \
            http_net.node(cluster.MAC_N1, tmp_path / "n1-http.log", [shared_root(root_images)],
                          uefi=Uefi.fresh(tmp_path / "n1-vars.fd", secure_boot=True)) as n1:
        env = n1.node_env(BOOT_TIMEOUT)
        console = n1.output()
    assert (env["SSI_NODE"], env["SSI_FIRMWARE"], env["SSI_SECURE_BOOT"]) == ("1", "uefi", "1")
    sets = [p for p in (tftpboot / SETS_DIR).iterdir() if not p.name.startswith(".")]
    pair = {f"{SETS_DIR}/{sets[0].name}/{name}" for name in ("vmlinuz", "initrd.img")}
    over_http = http_fetches(http_root / "net" / "nginx-access.log", tftpboot).get(
        "10.77.0.11", set())
    if "lilo.ssi: not over HTTP" in console:
        assert f"disk `http,{SERVER_IP}' not found" in console  # this GRUB has no http
        assert not over_http
    else:
        assert pair <= over_http


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


# -- local boot from an EFI System Partition


def empty_esp(path: Path, *, provisioned: bool) -> Path:
    """A 64 MiB disk with one EFI System Partition and nothing in it: made by
    lilo.ssi --provision --fs esp (LABEL=ssiboot, EFI/BOOT made), or bare (type ef,
    mkfs.vfat, not a file in it: the agent tells it is an ESP by the firmware)."""
    if provisioned:
        assert lilo(["--provision", str(path), "--size", "64", "--fs", "esp",
                     "--label", cluster.BOOT_LABEL]) == 0
    else:
        path.write_bytes(b"")
        os.truncate(path, 64 << 20)
        run(["sfdisk", "--quiet", str(path)], input=b"label: dos\nstart=2048, type=ef\n")
        run(["mkfs.vfat", "--offset", "2048", str(path), str((64 - 1) << 10)], capture=True)
    return path


def esp_file(disk: Path, name: str, out: Path) -> bytes:
    """A file of the disk's ESP, read with mtools (no mount)."""
    run(["mcopy", "-o", "-i", f"{disk}@@1M", f"::/{name}", str(out)],
        env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    return out.read_bytes()


def test_uefi_nodes_fill_an_empty_esp_then_boot_from_it_alone(
        net: PxeNet, root_images: dict[str, Path], tmp_path: Path) -> None:
    # Node 2 (LABEL=ssiboot): a provisioned ESP, Secure Boot off. Node 4 (/dev/vdb1): a
    # bare ESP, Secure Boot on. Both PXE-boot at once, sync, then boot from their disk.
    disks = {"2": empty_esp(tmp_path / "n2-esp.img", provisioned=True),
             "4": empty_esp(tmp_path / "n4-esp.img", provisioned=False)}
    macs, secure = {"2": cluster.MAC_N2, "4": cluster.MAC_N4}, {"2": False, "4": True}

    def machine(node: str, boot: str) -> Vm:
        # The shared root is vda, the ESP vdb; from disk: OVMF starts with the ESP.
        uefi = Uefi.fresh(tmp_path / f"n{node}-{boot}-vars.fd", secure_boot=secure[node])
        esp = Disk(disks[node], bootindex=1 if boot == "disk" else None)
        if boot == "pxe":
            return net.node(macs[node], tmp_path / f"n{node}-pxe.log",
                            [shared_root(root_images), esp], uefi=uefi)
        # Both disks on devices of their own, in order, so that they keep their names.
        root = Disk(root_images["plain"], extra=",snapshot=on", bootindex=2)
        config = VmConfig(nics=[Nic(macs[node], netdev=net.netdev())], netns=net.ns,
                          disks=[root, esp], uefi=uefi)
        return Vm(config, tmp_path / f"n{node}-disk.log")

    envs: dict[str, dict[str, dict[str, str]]] = {}
    consoles: dict[str, dict[str, str]] = {}
    for boot in ("pxe", "disk"):
        vms = {node: machine(node, boot) for node in disks}
        try:
            joined = joined_after(vms)
            envs[boot] = {node: vm.node_env() for node, vm in vms.items()}
            consoles[boot] = {node: vm.output() for node, vm in vms.items()}
        finally:
            for vm in vms.values():
                vm.kill()
        print(f"\n{boot}: power-on to joined " + ", ".join(
            f"node {n} {joined[n]:.1f} s" for n in sorted(joined)))
    for node in disks:
        pxe, disk = envs["pxe"][node], envs["disk"][node]
        assert (pxe["SSI_NODE"], pxe["SSI_SYNC"], pxe["SSI_FIRMWARE"]) == (node, "updated",
                                                                            "uefi"), pxe
        assert (disk["SSI_NODE"], disk["SSI_SYNC"]) == (node, "unchanged"), disk
        want = "1" if secure[node] else "0"
        assert pxe["SSI_SECURE_BOOT"] == disk["SSI_SECURE_BOOT"] == want
        # From the ESP alone: no network boot at all, shim and GRUB from the disk.
        console = consoles["disk"][node]
        assert "Start PXE" not in console and "UEFI Misc Device" in console, console[:2000]
        assert "Booting `ssi-" in console
        # shim and GRUB on the ESP are the shared root's, byte for byte.
        for name, path, required in ESP_LOADERS:
            if required:
                assert esp_file(disks[node], name, tmp_path / "x") == Path(path).read_bytes()
