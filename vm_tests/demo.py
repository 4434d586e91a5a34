"""`make demo`: build the ramdisk from the bundled node table and boot a small cluster.

Four machines boot at once under QEMU (TCG): node 1 (diskless), node 2 (local
boot flag, its disk starting with a stale kernel and ramdisk), node 3 (diskless,
UEFI with Secure Boot: OVMF's own PXE, shim, Debian's signed GRUB) and a
machine whose MAC is in no table. As root they PXE-boot from real dhcpd and
tftpd-hpa in a private network namespace, and the shared root comes over NFS
(nfs-ganesha on that network, `root=nfs4:` with a tmpfs overlay per node): the
diskless machines have no disk at all, and the table says where each root came
from. Without root, QEMU's user-mode network (its built-in BOOTP/TFTP) stands
in and the shared root is an ext4 image on a disk of every machine. Once node 2 has joined it boots
once more, from its disk alone, while the others finish. Live progress while
they boot, a table at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from linuxrc_agent.bootpair.manifest import MANIFEST_NAME
from mkinitrd_ssi.lilo import main as lilo
from mkinitrd_ssi.local.partition import provision
from mkinitrd_ssi.mkinitrd import main as mkinitrd
from mkinitrd_ssi.netboot.publish import EFI_BOOT_FILE, GRUB_CFG, IPXE_SCRIPT
from vm_tests import cluster, images, nfs
from vm_tests.kernel import kernel as fetch_kernel
from vm_tests.pxe import PxeNet, pxe_network
from vm_tests.qemu import (
    ENV_BEGIN,
    INIT_MARKER,
    OVMF_DIR,
    Disk,
    Nic,
    Uefi,
    Vm,
    VmConfig,
    parse_env,
)

REPO = Path(__file__).resolve().parent.parent
CMDLINE = f"root=LABEL={cluster.ROOT_LABEL} console=ttyS0 panic=-1 quiet"
# As root: no node has a disk holding the shared root. nfs-ganesha exports the tree on
# the boot network, read-only; each node writes into a tmpfs overlay of its own.
NFS_CMDLINE = (f"root=nfs4:{nfs.SERVER_IP}:{nfs.PSEUDO} ssi.overlay=tmpfs console=ttyS0 "
               "panic=-1 quiet")

# Console milestones, in boot order: the last one seen is the node's stage. A BIOS
# machine never prints the UEFI chain's (OVMF's PXE, shim, GRUB's echo from grub.cfg),
# and with `quiet` no machine prints the kernel's banner.
STAGES = (
    ("firmware", r""),
    ("pxe", r">>Start PXE over IPv4"),
    ("shim", rf"NBP filename is {EFI_BOOT_FILE}"),
    ("grub", r"lilo\.ssi: booting"),
    ("kernel", r"Linux version"),
    ("agent", r"linuxrc: .*ssi-boot agent"),
    ("modules", r"linuxrc: .*modules: loaded"),
    ("identity", r"linuxrc: .*(node \d+|not in the node table)"),
    ("sync", r"linuxrc: .*sync:"),
    ("switch_root", r"linuxrc: .*switching to"),
    ("joined", INIT_MARKER),
)


@dataclass
class Machine:
    name: str
    mac: str
    boot_path: str
    uefi: bool = False  # OVMF, and then always with Secure Boot, as servers ship
    vm: Vm | None = None
    stage: str = "firmware"
    started: float = field(default_factory=time.monotonic)
    joined_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    outcome: str = ""

    def poll(self, net: PxeNet | None) -> bool:
        """Update the stage from the console; True when the machine is done."""
        assert self.vm is not None
        text = self.vm.output()
        for stage, pattern in STAGES[1:]:
            if re.search(pattern, text):
                self.stage = stage
        if "not in the node table" in text:
            self.outcome = "unknown node: banner with its MACs"
            return True
        if net is not None and self.stage == "firmware" \
                and net.dhcpd_output().count(f"DHCPDISCOVER from {self.mac}") >= 2 \
                and "DHCPOFFER on" not in _dhcp_lines(net, self.mac):
            self.stage = "refused"
            self.outcome = "no lease: dhcpd refused the unknown MAC"
            return True
        if ENV_BEGIN in text and "SSI-NODE-ENV-END" in text:
            self.joined_s = time.monotonic() - self.started
            block = text.split(ENV_BEGIN, 1)[1].split("SSI-NODE-ENV-END", 1)[0]
            self.env = parse_env(block)
            self.outcome = "joined"
            return True
        return self.vm.proc.poll() is not None


    @property
    def label(self) -> str:
        """The name, and the firmware for a machine that is not the usual BIOS one."""
        return f"{self.name} (UEFI+SB)" if self.uefi else self.name


def _dhcp_lines(net: PxeNet, mac: str) -> str:
    return "\n".join(line for line in net.dhcpd_output().splitlines() if mac in line)


def prepare(work: Path, nfs_root: bool) -> tuple[Path, Path, Path | None, Path]:
    """Admin tree (table, dhcpd.conf, tftpboot), the shared root's tree and (unless it is
    served over NFS) its ext4 image, node 2's stale disk."""
    kernel = fetch_kernel()
    admin = work / "admin"
    (admin / "etc").mkdir(parents=True)
    (admin / "boot").mkdir()
    (admin / "etc/ssitab").write_text(cluster.SSITAB)
    shutil.copyfile(REPO / "examples/dhcpd.proto", admin / "etc/dhcpd.proto")
    shutil.copyfile(kernel.vmlinuz, admin / "boot/vmlinuz")
    step("mkinitrd.ssi: building the ramdisk from examples/ssitab")
    if mkinitrd(["--root", str(admin), "--moddir", str(kernel.moddir)]) != 0:
        raise SystemExit("demo: mkinitrd.ssi failed")
    step("lilo.ssi: installing the default pair, publishing it for network boot")
    cmdline = NFS_CMDLINE if nfs_root else CMDLINE
    if lilo(["--root", str(admin), "--cmdline", cmdline, "--no-push"]) != 0:
        raise SystemExit("demo: lilo.ssi failed")
    step("shared root: a tree whose /boot holds the default pair, "
         + (f"exported over NFS ({cmdline.split()[0]}, a tmpfs overlay per node)" if nfs_root
            else "as an ext4 image on a disk of every machine"))
    tree = images.shared_root_tree(work / "rootfs", kernel=admin / "boot/vmlinuz",
                                   initrd=admin / "boot/initrd.img")
    if (admin / "boot" / MANIFEST_NAME).is_file():
        shutil.copyfile(admin / "boot" / MANIFEST_NAME, tree / "boot" / MANIFEST_NAME)
    root_img = None if nfs_root else images.ext4_image(work / "root.img", tree, size_mb=96,
                                                        label=cluster.ROOT_LABEL)
    # Without root there are no loop devices: a FAT partition made with mtools instead.
    fs = "ext4" if os.geteuid() == 0 else "vfat"
    step(f"node 2's disk: an extlinux boot partition ({fs}, LABEL=ssiboot), empty = stale")
    disk = work / "n2-disk.img"
    provision(disk, size_mib=128, label=cluster.BOOT_LABEL, fs=fs)
    return admin, tree, root_img, disk


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


@contextmanager
def network(admin: Path, work: Path, use_root: bool) -> Iterator[PxeNet | None]:
    if not use_root:
        yield None
        return
    net_dir = work / "net"
    net_dir.mkdir()
    with pxe_network(net_dir, admin / "etc/dhcpd.conf", admin / "tftpboot") as net:
        yield net


def uefi_missing(tftpboot: Path) -> str | None:
    """Why a UEFI machine cannot boot here, or None: OVMF and what lilo.ssi publishes
    for it (shim and GRUB come from packages it only warns about)."""
    if not (OVMF_DIR / "OVMF_CODE_4M.secboot.fd").is_file():
        return "ovmf is not installed"
    if not all((tftpboot / name).is_file() for name in (EFI_BOOT_FILE, "grubx64.efi", GRUB_CFG)):
        return "lilo.ssi published no shim or GRUB (shim-signed, grub-efi-amd64-signed)"
    return None


def start(machine: Machine, net: PxeNet | None, admin: Path, disks: list[Disk],
          logs: Path, netboot: bool = True) -> None:
    if net is not None:
        nic = Nic(machine.mac, netdev=net.netdev())
    else:
        # QEMU's BOOTP cannot tell firmwares apart by option 93 as dhcpd does, but each
        # machine has a user-mode network of its own: name the file its firmware runs.
        bootfile = EFI_BOOT_FILE if machine.uefi else IPXE_SCRIPT
        nic = Nic(machine.mac, netdev=f"user,tftp={admin / 'tftpboot'},bootfile={bootfile}")
    uefi = Uefi.fresh(logs / f"{machine.name}-vars.fd", secure_boot=True) \
        if machine.uefi else None
    config = VmConfig(nics=[nic], netboot=netboot, disks=disks,
                      netns=net.ns if net is not None else None, uefi=uefi)
    if not netboot:
        config.extra += ["-boot", "c"]
    machine.started = time.monotonic()
    machine.vm = Vm(config, logs / f"{machine.name}.log")


def watch(machines: list[Machine], net: PxeNet | None, timeout: float,
          then: Callable[[Machine], Machine | None] | None = None) -> None:
    """Until every machine is done; then(m), when m is done, may start a machine that
    joins the list (and the progress line)."""
    done: set[str] = set()
    shown = ""
    deadline = time.monotonic() + timeout
    while len(done) < len(machines) and time.monotonic() < deadline:
        for m in list(machines):
            if m.name not in done and m.poll(net):
                done.add(m.name)
                if m.vm is not None:
                    m.vm.kill()
                if then is not None and (follow := then(m)) is not None:
                    machines.append(follow)
        line = "    " + "   ".join(f"{x.label}: {x.stage:<11}" for x in machines)
        if line != shown:
            shown = line
            print(line.rstrip(), flush=True)
        time.sleep(0.5)
    for m in machines:
        if m.name not in done:
            m.outcome = m.outcome or f"timed out at stage {m.stage}"
            if m.vm is not None:
                m.vm.kill()


def _kill(machine: Machine) -> None:
    if machine.vm is not None:
        machine.vm.kill()


def table(machines: list[Machine]) -> str:
    # firmware and secure boot: what the agent found (node.env), not what was configured.
    head = ("machine", "node", "MAC", "IP", "boot path", "shared root", "firmware",
            "secure boot", "sync", "join s", "outcome", "console log")
    rows = [head]
    for m in machines:
        e = m.env
        rows.append((m.name, e.get("SSI_NODE", "-") or "-", m.mac,
                     e.get("SSI_IP", "-") or "-", m.boot_path, _root(e), e.get("SSI_FIRMWARE", "-"),
                     e.get("SSI_SECURE_BOOT", "-"), e.get("SSI_SYNC", "-"),
                     f"{m.joined_s:.1f}" if m.joined_s else "-", m.outcome,
                     str(m.vm.log) if m.vm else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _root(env: dict[str, str]) -> str:
    """Where the node's root came from (node.env), and its writable layer."""
    root = env.get("SSI_ROOT") or "-"
    return f"{root} + {env['SSI_OVERLAY']} overlay" if env.get("SSI_OVERLAY") else root


def cast(admin: Path) -> list[Machine]:
    """The demo's machines: two BIOS nodes (one diskless, one with a local disk), a UEFI
    node with Secure Boot where OVMF and shim are installed, and a machine ssitab lacks."""
    machines = [Machine("n1", cluster.MAC_N1, "PXE, diskless"),
                Machine("n2", cluster.MAC_N2, "PXE, local disk"),
                Machine("n3", cluster.MAC_N3, "PXE (OVMF, shim, GRUB), diskless", uefi=True),
                Machine("stranger", cluster.MAC_UNKNOWN, "PXE")]
    if (missing := uefi_missing(admin / "tftpboot")) is not None:
        step(f"node 3 (UEFI) left out: {missing}")
        machines = [m for m in machines if not m.uefi]
    return machines


def boot_all(machines: list[Machine], admin: Path, workdir: Path, use_root: bool,
             tree: Path, root_img: Path | None, disk: Path, timeout: float) -> None:
    """Boot every machine at once, and node 2 again from its disk once it has joined;
    every VM is killed on the way out."""
    logs = workdir / "logs"
    logs.mkdir()
    shared = [] if root_img is None else [Disk(root_img, extra=",snapshot=on")]
    with ExitStack() as stack:
        net = stack.enter_context(network(admin, workdir, use_root))
        if net is not None and root_img is None:
            stack.enter_context(nfs.nfs_server(net.netns, workdir / "ganesha", tree))
        step(f"booting {len(machines)} machines at once"
             + (f" on a private network ({net.ns}: dhcpd, tftpd-hpa)" if net else ""))
        for m in machines:
            stack.callback(_kill, m)
            start(m, net, admin, [Disk(disk), *shared] if m.name == "n2" else shared, logs)

        def from_disk(m: Machine) -> Machine | None:
            # At once, not after the slowest (the UEFI machine): the demo waits for it once.
            if m.name != "n2" or m.outcome != "joined":
                return None
            step("node 2 joined: again, from its local disk alone (no network boot)")
            again = Machine("n2-disk", cluster.MAC_N2, "local disk (extlinux)")
            stack.callback(_kill, again)
            start(again, net, admin, [Disk(disk), *shared], logs, netboot=False)
            return again

        watch(machines, net, timeout, then=from_disk)


def succeeded(machines: list[Machine]) -> bool:
    """Every node joined (node 2 twice), the stranger got nothing, and the agent saw the
    firmware each machine really ran."""
    joined = {m.name for m in machines if m.outcome == "joined"}
    expected = {"n1", "n2", "n2-disk"} | {m.name for m in machines if m.uefi}
    strangers = [m for m in machines if m.mac == cluster.MAC_UNKNOWN]
    stranger_ok = bool(strangers) and all(m.outcome.startswith(("no lease", "unknown node"))
                                          for m in strangers)
    firmware_ok = all((m.env.get("SSI_FIRMWARE"), m.env.get("SSI_SECURE_BOOT"))
                      == (("uefi", "1") if m.uefi else ("bios", "0"))
                      for m in machines if m.outcome == "joined")
    return joined == expected and stranger_ok and firmware_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "demo")
    parser.add_argument("--user-net", action="store_true",
                        help="QEMU user-mode network even as root")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    use_root = os.geteuid() == 0 and not args.user_net
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    if not use_root:
        step("not root (or --user-net): QEMU's user-mode network (built-in BOOTP/TFTP) stands "
             "in for dhcpd and tftpd; the unknown machine gets an address from it and is "
             "stopped by the agent instead")
    no_nfs = nfs.available() if use_root else "not root: no network namespace"
    if use_root and no_nfs is not None:
        step(f"shared root on a disk of every machine, not over NFS: {no_nfs}")
    admin, tree, root_img, disk = prepare(args.workdir, nfs_root=no_nfs is None)
    machines = cast(admin)
    t0 = time.monotonic()
    boot_all(machines, admin, args.workdir, use_root, tree, root_img, disk, args.timeout)
    print()
    print(table(machines))
    print(f"\n{len(machines)} boots in {time.monotonic() - t0:.0f} s; work tree: {args.workdir}")
    if not succeeded(machines):
        print("demo: not every machine did what it should; see the console logs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
