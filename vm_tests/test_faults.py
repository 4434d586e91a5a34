"""Broken input and failing hardware at boot: a clear message, never a panic (QEMU, TCG).

- a shared root whose kernel was replaced without updating its manifest: the agent
  retries, then boots without syncing (SSI_SYNC=skipped, with the reason), the local
  partition untouched;
- hostile kernel command lines: bad values are warned about and the node still
  joins; a bad or missing root= ends in a rescue shell that works;
- a corrupt node table in the ramdisk (patched into a built image): every error with
  its line and column, then a rescue shell;
- the local disk failing mid-sync (QEMU blkdebug: write errors, read errors, every
  I/O failing), the shared root without init, the ramdisk without the NIC driver:
  each ends in a clear message, and the partition's old pair is intact (checked
  from the host on the image).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkinitrd_ssi.initrd.cpio import Entry, write_newc
from mkinitrd_ssi.initrd.image import read_image
from mkinitrd_ssi.local.partition import publish_manifest
from vm_tests import cluster, images, powercut
from vm_tests.conftest import BootVm
from vm_tests.kernel import Kernel
from vm_tests.localdisk import image_digest
from vm_tests.qemu import INIT_MARKER, Disk, Vm

RESCUE = r"linuxrc: .*rescue shell: type 'exit'"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices")


def root_args(*extra: str) -> str:
    return powercut.root_args(*extra)


def assert_rescue_shell_and_no_panic(vm: Vm) -> str:
    """The rescue shell is up and answers; the kernel never panicked, init never ran."""
    vm.wait_for(RESCUE)
    vm.send("echo RESCUE-$((6*7))\n")  # the console echoes the command, not its result
    vm.wait_for(r"RESCUE-42")
    out = vm.output()
    assert "Kernel panic" not in out and INIT_MARKER not in out
    return out


# --- shared roots and node 2's disk -----------------------------------------------------------


@dataclass(frozen=True)
class Roots:
    work: Path
    stale: Path  # node 2's disk with the old pair; copy it
    old: powercut.Pair
    new: powercut.Pair  # the shared roots' default pair (real kernel, real ramdisk)
    images: dict[str, Path]

    def setup(self, kernel: Kernel, ramdisk: Path, name: str) -> powercut.Setup:
        return powercut.Setup(kernel.vmlinuz, ramdisk, self.images[name], self.stale,
                              self.old, self.new)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory, kernel: Kernel, ramdisk: Path) -> Roots:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices")
    work = tmp_path_factory.mktemp("faults")
    built: dict[str, Path] = {}

    def root(name: str, *, init: bool = True, kernel_bytes: bytes | None = None) -> None:
        tree = images.shared_root_tree(work / name, kernel=kernel.vmlinuz, initrd=ramdisk,
                                       init=images.TEST_INIT if init else None)
        publish_manifest(tree / "boot" / "vmlinuz", tree / "boot" / "initrd.img")
        if kernel_bytes is not None:  # replaced after lilo.ssi wrote the manifest
            (tree / "boot" / "vmlinuz").write_bytes(kernel_bytes)
        built[name] = images.ext4_image(work / f"{name}.img", tree, size_mb=64,
                                        label=cluster.ROOT_LABEL, uuid=cluster.ROOT_UUID)

    real = kernel.vmlinuz.read_bytes()
    root("good")
    root("no-init", init=False)
    root("kernel-replaced", kernel_bytes=real + b"a newer kernel\n" * 64)
    root("kernel-replaced-same-size", kernel_bytes=real[:-4096] + b"\xa5" * 4096)
    old = powercut.old_pair(work, kernel.vmlinuz)
    stale = powercut.stale_disk(work / "stale.img", *old)
    return Roots(work, stale, powercut.Pair.of(*old),
                 powercut.Pair.of(kernel.vmlinuz, ramdisk), built)


def node2_disk(roots: Roots, tmp_path: Path) -> Path:
    return powercut.copy_image(roots.stale, tmp_path / "n2.img")


def shared(roots: Roots, name: str) -> Disk:
    return Disk(roots.images[name], extra=",snapshot=on")


def old_pair_intact(roots: Roots, kernel: Kernel, ramdisk: Path, disk: Path,
                    tmp_path: Path) -> powercut.Inspection:
    found = powercut.inspect(disk, roots.setup(kernel, ramdisk, "good"), tmp_path / "check.img")
    assert found.fsck in ("clean", "journal"), found
    assert found.linux.pair == "old" and not found.linux.problems, found
    return found


# --- torn update on the shared root ----------------------------------------------------------


@needs_root
def test_kernel_replaced_without_manifest_update_skips_the_sync_untouched(
        boot_vm: BootVm, roots: Roots, tmp_path: Path) -> None:
    disk = node2_disk(roots, tmp_path)
    before = image_digest(disk)
    vm = boot_vm(root_args(), [shared(roots, "kernel-replaced"), Disk(disk)],
                 macs=(cluster.MAC_N2,))
    env = vm.node_env()
    assert (env["SSI_NODE"], env["SSI_SYNC"]) == ("2", "skipped")
    # It retried (3 tries, 0.5 s apart) and says why it gave up.
    line = vm.wait_for(r"linuxrc: .*sync: skipped: (.*)").group(1)
    assert "shared root mid-update?" in line and "(try 3 of 3)" in line, line
    assert "ssi-manifest.json" in line and "bytes" in line, line
    assert image_digest(disk) == before  # not a byte of the partition written


@needs_root
def test_same_size_kernel_replacement_is_caught_while_copying_old_pair_kept(
        boot_vm: BootVm, roots: Roots, tmp_path: Path, kernel: Kernel, ramdisk: Path) -> None:
    disk = node2_disk(roots, tmp_path)
    vm = boot_vm(root_args(), [shared(roots, "kernel-replaced-same-size"), Disk(disk)],
                 macs=(cluster.MAC_N2,))
    env = vm.node_env()
    assert (env["SSI_NODE"], env["SSI_SYNC"]) == ("2", "skipped")
    line = vm.wait_for(r"linuxrc: .*sync: skipped: (.*)").group(1)
    assert "does not match" in line and "(try 3 of 3)" in line, line
    found = old_pair_intact(roots, kernel, ramdisk, disk, tmp_path)
    assert found.fsck == "clean" and found.linux.files == []  # its copies were removed


# --- hostile kernel command lines ------------------------------------------------------------

# Words the agent knows, with values it must refuse, and words it does not know.
# The kernel passes at most 32 unknown words to init (more is its own panic), so
# the batch stays well below that.
HOSTILE_WORDS = [
    "ssi.bootif=zz:zz:zz:zz:zz:zz", "BOOTIF=02-52-54-00-12-34-01", "ssi.timeout=1e999",
    "ssi.timeout=-5", "ssi.debug=maybe", "ssi.break=no_such_stage,Bad!",
    "init=relative/init", "ssi.kernel=../../etc/shadow", "ssi.initrd=" + "i" * 900,
    "rootfstype=BAD/TYPE", "ssi.modules=some", "modprobe.blacklist=,,$$,",
    "ssi.frobnicate=1", "frobnicate=yes", "bogus.param=" + "v" * 300, "lonelyword",
    '"quoted=a b c"', "ssi.bootif=",
]


def test_hostile_kernel_arguments_are_warned_about_and_the_node_joins(
        boot_vm: BootVm, roots: Roots) -> None:
    append = root_args(*HOSTILE_WORDS)
    assert len(append) < 1900  # the x86 command line holds 2048 bytes with ours
    vm = boot_vm(append, [shared(roots, "good")], macs=(cluster.MAC_N1,))
    env = vm.node_env()
    assert (env["SSI_NODE"], env["SSI_IFACE"]) == ("1", "eth0")
    out = vm.output()
    for key in ("ssi.bootif", "BOOTIF", "ssi.timeout", "ssi.debug", "init", "ssi.kernel",
                "ssi.initrd", "rootfstype", "ssi.modules", "modprobe.blacklist"):
        assert f"warning: ignoring {key}=" in out, key
    assert "ssi.break=no_such_stage: no such stage" in out
    # A huge value is shown shortened by the agent (the shared root's test init
    # prints /proc/cmdline whole, on a line of its own).
    agent = "\n".join(line for line in out.splitlines() if "linuxrc:" in line)
    assert "i" * 100 not in agent
    assert "Kernel panic" not in out and "Traceback" not in out


@pytest.mark.parametrize(("root", "expect"), [
    ("root=nfs:nfs-server:/srv/root",
     [r"FATAL: devices: root=nfs:nfs-server:/srv/root: SERVER 'nfs-server' is not an IPv4",
      r"check: root=nfs:SERVER:/PATH\[:OPTIONS\] or root=nfs4:"]),
    ("root=LABEL=" + "x" * 1200, [r"FATAL: devices: root=LABEL=x{60,}\.\.\.: not a form",
                                  r"check: .*LABEL=NAME \(1-64 characters"]),
    ("root=UUID=not-a-uuid", [r"FATAL: devices: root=UUID=not-a-uuid: not a form"]),
    ("", [r"FATAL: devices: no root= on the kernel command line",
          r"check: add root=/dev/NAME"]),
], ids=["nfs-form", "huge-label", "bad-uuid", "missing"])
def test_bad_root_ends_in_a_working_rescue_shell(boot_vm: BootVm, roots: Roots, root: str,
                                                 expect: list[str]) -> None:
    vm = boot_vm(f"{root} ssi.timeout=2", [shared(roots, "good")], macs=(cluster.MAC_N1,))
    for pattern in expect:
        vm.wait_for(pattern)
    out = assert_rescue_shell_and_no_panic(vm)
    assert "x" * 200 not in out  # a huge value is shown shortened


# --- a corrupt node table in the ramdisk ------------------------------------------------------

CORRUPT_SSITAB = (
    b"# a table mkinitrd.ssi would have refused\n"
    b"1 10.77.0.11/24 52:54:00:12:34:01 0 -\n"
    b"2 10.77.0.11/24 52:54:00:12:34:02 1 LABEL=ssiboot\n"  # duplicate address
    b"3 10.77.0.13/99 52:54:00:12:34:03 0 - hostname=\"n3\"\n"  # bad prefix, bad hostname
    b"\xff\xfe\x00garbage\x1b[2J \x01\x02 { } ;\n"  # binary junk, a terminal escape
    + b"4 " + b"9" * 5000 + b"\n"  # a huge word
)


def patched_ramdisk(ramdisk: Path, out: Path, files: dict[str, bytes]) -> Path:
    """The built ramdisk with files replaced: a second, uncompressed archive appended.

    The kernel unpacks concatenated archives in order, and a later file replaces an
    earlier one of the same path, as with early microcode archives (the other way round).
    """
    base = ramdisk.read_bytes()
    buf = io.BytesIO()
    write_newc([Entry(path, 0o100644, data=data) for path, data in files.items()], buf)
    out.write_bytes(base + b"\0" * (-len(base) % 4) + buf.getvalue())
    members = {m.path: m.data for m in read_image(out.read_bytes())}  # last one wins
    assert all(members[p] == d for p, d in files.items())
    return out


def test_corrupt_ssitab_in_the_ramdisk_lists_its_errors_then_rescue_shell(
        boot_vm: BootVm, roots: Roots, ramdisk: Path, tmp_path: Path) -> None:
    bad = patched_ramdisk(ramdisk, tmp_path / "corrupt.img", {"etc/ssitab": CORRUPT_SSITAB})
    vm = boot_vm(root_args(), [shared(roots, "good")], macs=(cluster.MAC_N1,), initrd=bad)
    vm.wait_for(r"FATAL: identity: the ramdisk's node table is invalid \(\d+ errors\)")
    vm.wait_for(r"check: /etc/ssitab:3:3: duplicate IP address 10\.77\.0\.11 "
                r"\(first on line 2\)")
    vm.wait_for(r"check: /etc/ssitab:4:\d+: bad prefix '/99'")
    # Undecodable bytes and control characters are shown escaped, never sent raw.
    vm.wait_for(r"check: /etc/ssitab:5:1: bad node number "
                r"'\\xff\\xfe\\x00garbage\\x1b\[2J'")
    vm.wait_for(r"check: /etc/ssitab:6:\d+: too few columns \(2\)")
    vm.wait_for(r"check: fix /etc/ssitab on the shared root, then mkinitrd\.ssi && lilo\.ssi")
    out = assert_rescue_shell_and_no_panic(vm)
    assert "\x1b[2J" not in out and "\x00" not in out


# --- failing hardware -------------------------------------------------------------------------


@dataclass
class BlkdebugDisk(Disk):
    """A virtio disk behind QEMU's blkdebug driver, which fails I/O by the rules in `config`."""

    config: Path = Path()

    def arg(self) -> str:
        return (f"driver=blkdebug,config={self.config},image.driver=raw,"
                f"image.file.filename={self.path},if=virtio")


def blkdebug_config(path: Path, after_writes: int, iotype: str | None, once: bool) -> Path:
    """Fail I/O from the `after_writes`-th write request on (each write moves the state on)."""
    rules = [f'[set-state]\nevent = "pwritev"\nstate = "{n}"\nnew_state = "{n + 1}"\n'
             for n in range(1, after_writes)]
    inject = (f'[inject-error]\nevent = "pwritev"\nstate = "{after_writes}"\nerrno = "5"\n'
              f'once = "{"on" if once else "off"}"\n')
    if iotype:
        inject += f'iotype = "{iotype}"\n'
    path.write_text("\n".join([*rules, inject]))
    return path


@needs_root
@pytest.mark.parametrize(("after", "iotype", "once"), [
    # The whole sync of kernel + ramdisk (23 MB) takes a few dozen write requests;
    # the 8th is one of the kernel's data writes.
    (8, "write", True),  # one write fails mid-copy
    (8, "write", False),  # the disk stops taking writes
    (8, "read", False),  # reads fail once the copy is under way: the read-back check
    (8, None, False),  # every request fails: the disk is as good as gone
], ids=["one-write-error", "writes-fail", "reads-fail", "disk-gone"])
def test_disk_errors_mid_sync_fail_the_sync_keep_the_old_pair_and_join(
        boot_vm: BootVm, roots: Roots, tmp_path: Path, kernel: Kernel, ramdisk: Path,
        after: int, iotype: str | None, once: bool) -> None:
    disk = node2_disk(roots, tmp_path)
    config = blkdebug_config(tmp_path / "blkdebug.conf", after, iotype, once)
    vm = boot_vm(root_args(), [shared(roots, "good"), BlkdebugDisk(disk, config=config)],
                 macs=(cluster.MAC_N2,))
    env = vm.node_env(180)
    assert (env["SSI_NODE"], env["SSI_SYNC"]) == ("2", "failed")
    # The disk and the error: "sync: failed: /dev/vdb1: Input/output error".
    vm.wait_for(r"linuxrc: .*sync: failed: /dev/vd[a-z]+1: .*Input/output error")
    out = vm.output()
    assert "Kernel panic" not in out and "Traceback" not in out
    old_pair_intact(roots, kernel, ramdisk, disk, tmp_path)
    # Healthy again, the next boot syncs.
    env = boot_vm(root_args(), [shared(roots, "good"), Disk(disk)], macs=(cluster.MAC_N2,),
                  name="healthy").node_env()
    assert env["SSI_SYNC"] == "updated"


@needs_root
def test_shared_root_without_init_rescue_shell_partition_untouched(
        boot_vm: BootVm, roots: Roots, tmp_path: Path) -> None:
    disk = node2_disk(roots, tmp_path)
    before = image_digest(disk)
    vm = boot_vm(root_args(), [shared(roots, "no-init"), Disk(disk)], macs=(cluster.MAC_N2,))
    vm.wait_for(r"FATAL: root: .*/sbin/init")
    vm.wait_for(r"check: init= names the right program")
    assert_rescue_shell_and_no_panic(vm)
    vm.kill()
    assert image_digest(disk) == before


@pytest.fixture(scope="module")
def ramdisk_without_nic_driver(kernel: Kernel, build_root: Path) -> Path:
    from mkinitrd_ssi.mkinitrd import main

    out = build_root / "boot" / "initrd-no-virtio-net.img"
    rc = main(["--root", str(build_root), "--moddir", str(kernel.moddir), "--no-dhcpd",
               "--omit-modules", "virtio_net", "-o", str(out)])
    assert rc == 0
    return out


@needs_root
def test_missing_nic_driver_says_so_rescue_shell_partition_untouched(
        boot_vm: BootVm, roots: Roots, tmp_path: Path, ramdisk_without_nic_driver: Path) -> None:
    disk = node2_disk(roots, tmp_path)
    before = image_digest(disk)
    vm = boot_vm(root_args("ssi.timeout=3"), [shared(roots, "good"), Disk(disk)],
                 macs=(cluster.MAC_N2,), initrd=ramdisk_without_nic_driver)
    vm.wait_for(r"No Ethernet interface was found")
    vm.wait_for(r"needs .*virtio_net, not in this ramdisk; rebuild with mkinitrd\.ssi "
                r"--add-modules virtio_net")
    vm.wait_for(r"FATAL: identity: this machine is not in the node table")
    assert_rescue_shell_and_no_panic(vm)
    vm.kill()
    assert image_digest(disk) == before

