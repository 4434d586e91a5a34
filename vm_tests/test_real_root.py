"""A real shared root, once: Debian 12 over NFS, sshd on the node, `lilo.ssi` pushes to it.

The export is vm_tests/debianroot.py's tree (debootstrap minbase, openssh-server, the
ssi-boot wheel in /opt/ssi-boot, cached in $SSI_CACHE/debianroot). Node 2 (local boot,
bootdev LABEL=ssiboot) boots it over NFSv4 with a tmpfs overlay; its init starts sshd.
The admin side, in the boot network's namespace, publishes a new pair and pushes it with
lilo.ssi's own options only: the node's `lilo.ssi --local-only` runs with no --boot-dir,
so it finds itself in ssitab by its own NIC's MAC and mounts the bootdev ssitab names.
The push tests in tests/integration run on veth namespaces, whose NICs cannot identify
a node; this is the one run of that path.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import xxhash

from vm_tests import cluster, debianroot, localdisk, nfs
from vm_tests.kernel import Kernel
from vm_tests.nfs import nfs_network
from vm_tests.pxe import admin_tree
from vm_tests.qemu import Disk, Nic, Vm, VmConfig, console_args
from vm_tests.sshnodes import LILO

pytestmark = [
    pytest.mark.skipif(debianroot.available() is not None, reason=str(debianroot.available())),
    pytest.mark.skipif(nfs.available() is not None, reason=str(nfs.available())),
]

NODE2_IP = "10.77.0.12"


@pytest.fixture(scope="module")
def tree() -> Iterator[Path]:
    """The cached Debian tree; the test's own files in it are removed afterwards."""
    root = debianroot.ensure_tree()
    yield root
    for rel in ("root/.ssh/authorized_keys", "etc/ssitab", "boot/vmlinuz", "boot/initrd.img"):
        (root / rel).unlink(missing_ok=True)


def new_ramdisk(ramdisk: Path, work: Path) -> Path:
    """The ramdisk with one more cpio member appended: a pair that differs and still boots."""
    member = work / "member"
    (member / "etc").mkdir(parents=True)
    (member / "etc/ssi-pushed").write_text("the pushed pair\n")
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=member,
                             input=b"etc\netc/ssi-pushed\n", capture_output=True,
                             check=True).stdout
    out = work / "initrd-new.img"
    out.write_bytes(ramdisk.read_bytes() + archive)
    return out


def test_lilo_pushes_a_new_pair_to_a_node_running_a_real_debian_root(
        tree: Path, kernel: Kernel, ramdisk: Path, tmp_path: Path) -> None:
    key = tmp_path / "push_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lilo-push",
                    "-f", str(key)], check=True)
    auth = tree / "root/.ssh/authorized_keys"
    auth.write_text(key.with_suffix(".pub").read_text())
    auth.chmod(0o600)
    (tree / "etc/ssitab").write_text(cluster.SSITAB)
    (tree / "boot").mkdir(exist_ok=True)
    (tree / "boot/vmlinuz").write_bytes(kernel.vmlinuz.read_bytes())
    (tree / "boot/initrd.img").write_bytes(ramdisk.read_bytes())

    # NFSv4, owners as numbers (vm_tests/nfs.py: by name, root@domain, the node's kernel,
    # with no idmapper, would map them to nobody and sshd refuse /root/.ssh).
    root = f"nfs4:{nfs.SERVER_IP}:{nfs.PSEUDO}"
    args = f"root={root} ssi.overlay=tmpfs init={debianroot.INIT_PATH}"
    disk = localdisk.stale_disk(tmp_path, kernel.vmlinuz, args)
    pushed = new_ramdisk(ramdisk, tmp_path)
    admin = admin_tree(tmp_path / "admin", kernel.vmlinuz, pushed, console_args([args]))

    with ExitStack() as stack:
        net = stack.enter_context(nfs_network(tmp_path / "net", tree))
        config = VmConfig(kernel=kernel.vmlinuz, initrd=ramdisk, append=console_args([args]),
                          nics=[Nic(cluster.MAC_N2, netdev=net.netdev())], netns=net.ns,
                          disks=[Disk(disk)])
        vm = stack.enter_context(Vm(config, tmp_path / "n2.log"))
        env = vm.node_env(timeout=300)
        assert (env["SSI_NODE"], env["SSI_SYNC"], env["SSI_ROOT"]) == ("2", "updated", root)
        vm.wait_for(f"{debianroot.SSHD_UP}|SSI-SSHD-FAILED", timeout=120)
        assert debianroot.SSHD_UP in vm.output(), vm.output()[-3000:]

        ssh_opts = [f"IdentityFile={key}", "IdentitiesOnly=yes", "StrictHostKeyChecking=no",
                    "UserKnownHostsFile=/dev/null"]
        # No --remote-lilo, no --boot-dir: the node's own lilo.ssi on PATH decides.
        done = net.netns.run(
            [LILO, "--root", str(admin), "--nodes", "2", "--json", "--connect-timeout", "20",
             "--timeout", "300", *[w for o in ssh_opts for w in ("--ssh-option", o)]],
            check=False, timeout=600)
        out, err = done.stdout.decode(), done.stderr.decode()
        assert done.returncode == 0, f"{out}\n{err}\n{vm.output()[-3000:]}"
        report = json.loads(out)
        [row] = report["nodes"]
        assert (str(row["node"]), row["address"], row["status"]) == ("2", NODE2_IP, "updated"), \
            row

        # Off, from the node itself, once its writes are on the disk.
        net.netns.run(["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes",
                       "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                       "-o", "BatchMode=yes", f"root@{NODE2_IP}",
                       # In the background, so ssh returns before the node is gone.
                       "sync; (sleep 1; echo o > /proc/sysrq-trigger) </dev/null >/dev/null "
                       "2>&1 &"], check=False, timeout=60)
        vm.wait_exit(60)

    # The config names the pushed files (the older pair may stay beside them).
    on_disk = localdisk.pair_on_disk(disk)
    config_text = on_disk.pop("extlinux.conf")
    for path in (kernel.vmlinuz, pushed):
        digest = xxhash.xxh3_128_hexdigest(path.read_bytes())
        named = [rel for rel, h in on_disk.items() if h == digest and f"ssi/{rel}" in config_text]
        assert named, (path, on_disk, config_text)
    assert "Kernel panic" not in vm.output()
