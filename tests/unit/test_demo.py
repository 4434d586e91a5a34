"""`make demo`'s reading of a console: the UEFI machine's chain and its firmware in the table.

The demo itself boots VMs for minutes and is not part of `make test`; what it
decides from a console is checked here on a UEFI machine's console as OVMF,
shim, GRUB and the agent print it (cut from a demo run).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from vm_tests import cluster
from vm_tests.demo import Machine, succeeded, table
from vm_tests.qemu import Vm

CONSOLE = [
    "\x1b[2J\x1b[01;01H\r\n>>Start PXE over IPv4.\r\n  Station IP address is 10.77.0.13\r\n",
    "  Server IP address is 10.77.0.1\r\n  NBP filename is shimx64.efi\r\n"
    "  NBP filesize is 1048504 Bytes\r\n Downloading NBP file...\r\n",
    "Fetching Netboot Image grubx64.efi\r\n\x1b[0m\x1b[30m\x1b[47mWelcome to GRUB!\n\r\n"
    "\r\x1b[0m\x1b[37m\x1b[40mlilo.ssi: booting ssi/sets/9b8d178e1c70a4d6\n",
    "\rlinuxrc: ssi-boot agent on kernel 6.1.0-57-cloud-amd64, 9.77 s after kernel start\r\n",
    "linuxrc: modules: loaded 9 of 33 carried (auto) in 1.25 s: virtio_net virtio_blk\r\n",
    "linuxrc: identity: node 3 (n3), eth0 52:54:00:12:34:03, ssitab line 5\r\n",
    "linuxrc: switching to /sbin/init on /dev/vda after 5.16 s\r\nSSI-INIT-REACHED pid=1\r\n",
    "SSI-NODE-ENV-BEGIN\r\nSSI_NODE=3\r\nSSI_IP=10.77.0.13\r\nSSI_SYNC=skipped\r\n"
    "SSI_FIRMWARE=uefi\r\nSSI_SECURE_BOOT=1\r\nSSI-NODE-ENV-END\r\n",
]


class FakeProc:
    def poll(self) -> int | None:
        return None


class FakeVm:
    """What Machine.poll reads of a Vm: the console so far, and whether QEMU runs."""

    def __init__(self) -> None:
        self.text = ""
        self.proc = FakeProc()
        self.log = Path("/logs/n3.log")

    def output(self) -> str:
        return self.text


def test_a_uefi_machine_walks_its_chain_and_the_table_shows_its_firmware() -> None:
    machine = Machine("n3", cluster.MAC_N3, "PXE (OVMF, shim, GRUB), diskless", uefi=True)
    vm = FakeVm()
    machine.vm = cast(Vm, vm)
    stages, done = [], False
    for chunk in CONSOLE:
        vm.text += chunk
        done = machine.poll(None)
        stages.append(machine.stage)
    assert stages == ["pxe", "shim", "grub", "agent", "modules", "identity", "joined",
                      "joined"]
    assert done and machine.outcome == "joined"
    assert (machine.env["SSI_FIRMWARE"], machine.env["SSI_SECURE_BOOT"]) == ("uefi", "1")
    assert machine.label == "n3 (UEFI+SB)"
    head, row = table([machine]).splitlines()
    column = head.index("firmware  secure boot  sync")
    assert row[column:].split()[:3] == ["uefi", "1", "skipped"]


def test_the_table_says_where_each_root_came_from() -> None:
    machine = Machine("n1", cluster.MAC_N1, "PXE, diskless")
    machine.env = {"SSI_NODE": "1", "SSI_ROOT": "nfs4:10.77.0.1:/srv/ssiroot",
                   "SSI_OVERLAY": "tmpfs"}
    head, row = table([machine]).splitlines()
    assert row[head.index("shared root"):].startswith("nfs4:10.77.0.1:/srv/ssiroot + tmpfs "
                                                      "overlay")
    machine.env = {"SSI_NODE": "1", "SSI_ROOT": "LABEL=ssiroot", "SSI_OVERLAY": ""}
    head, row = table([machine]).splitlines()
    assert row[head.index("shared root"):].split()[0] == "LABEL=ssiroot"


def _joined(name: str, mac: str, uefi: bool = False) -> Machine:
    m = Machine(name, mac, "PXE", uefi=uefi)
    m.outcome = "joined"
    m.env = {"SSI_FIRMWARE": "uefi" if uefi else "bios", "SSI_SECURE_BOOT": "1" if uefi else "0"}
    return m


def _run() -> list[Machine]:
    stranger = Machine("stranger", cluster.MAC_UNKNOWN, "PXE")
    stranger.outcome = "no lease: dhcpd refused the unknown MAC"
    return [_joined("n1", cluster.MAC_N1), _joined("n2", cluster.MAC_N2),
            _joined("n3", cluster.MAC_N3, uefi=True), stranger,
            _joined("n2-disk", cluster.MAC_N2)]


def test_the_demo_succeeds_only_when_every_machine_did_what_it_should() -> None:
    assert succeeded(_run())
    no_disk_boot = [m for m in _run() if m.name != "n2-disk"]
    assert not succeeded(no_disk_boot)
    insecure = _run()
    insecure[2].env["SSI_SECURE_BOOT"] = "0"  # the UEFI machine booted without Secure Boot
    assert not succeeded(insecure)
    let_in = _run()
    let_in[3].outcome = "joined"  # the stranger must never join
    assert not succeeded(let_in)
    assert not succeeded([m for m in _run() if m.name != "stranger"])
