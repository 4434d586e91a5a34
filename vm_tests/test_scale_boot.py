"""Past one TFTP server (issue 15), end to end: QEMU's iPXE ROM, real dhcpd, tftpd-hpa, nginx.

- `lilo.ssi --http-url`: two nodes boot at once; nginx's access log shows each fetch the
  set's kernel and ramdisk in full over HTTP, and tftpd-hpa's own log (its syslog, captured
  through a private /dev/log: vm_tests.pxe.Syslog) shows each fetch only the iPXE script
  over TFTP.
- Two boot servers, each in its own namespace on the one boot network, one dhcpd, one
  table split between them by `server=`, one `--http-url http://{server}/`: each node gets
  the script from its own server's tftpd and the pair from its own server's nginx, and
  none from the other. The two servers' scripts differ by one word (ssi.note=srv-a or
  srv-b) so the kernel's own /proc/cmdline says whose script it ran, too.

Both machines of a test boot at once; every wait is on a console marker, nothing sleeps.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from mkinitrd_ssi.lilo import main as lilo
from mkinitrd_ssi.netboot.publish import IPXE_SCRIPT, SETS_DIR
from vm_tests import cluster
from vm_tests.fetchstorm import http_fetches, start_nginx
from vm_tests.kernel import Kernel
from vm_tests.netns import Netns
from vm_tests.pxe import SERVER_IP, PxeNet, Syslog, admin_tree, pxe_network, start_tftpd
from vm_tests.qemu import Disk, Vm

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, taps")

CMDLINE = f"root=LABEL={cluster.ROOT_LABEL} console=ttyS0 panic=-1 quiet"
SERVER_B = "10.77.0.2"
N1_IP, N3_IP = "10.77.0.11", "10.77.0.13"  # ssitab's nodes 1 and 3
BOOT_TIMEOUT = 360  # two TCG machines on two shared cores
RRQ_RE = re.compile(r"RRQ from (?:::ffff:)?(\S+) filename (\S+)")


def set_dir(tftpboot: Path) -> str:
    """ssi/sets/<hash> of the one published set."""
    sets = [p.name for p in (tftpboot / SETS_DIR).iterdir() if not p.name.startswith(".")]
    assert len(sets) == 1, sets
    return f"{SETS_DIR}/{sets[0]}"


def tftp_reads(syslog: Syslog) -> dict[str, set[str]]:
    """Client IP -> the files it asked tftpd-hpa for (its RRQ log lines)."""
    got: dict[str, set[str]] = {}
    for _t, line in syslog.lines:
        if (m := RRQ_RE.search(line)) is not None:
            got.setdefault(m.group(1), set()).add(m.group(2).lstrip("/"))
    return got


def boot_two(net: PxeNet, root_images: dict[str, Path], tmp_path: Path
             ) -> dict[str, tuple[dict[str, str], str]]:
    """Nodes 1 and 3 power on at once; node IP -> (its node.env, its /proc/cmdline)."""
    def disk() -> list[Disk]:
        return [Disk(root_images["plain"], extra=",snapshot=on")]

    start = time.monotonic()
    with net.node(cluster.MAC_N1, tmp_path / "n1.log", disk()) as n1, \
            net.node(cluster.MAC_N3, tmp_path / "n3.log", disk()) as n3:
        vms: dict[str, Vm] = {N1_IP: n1, N3_IP: n3}
        out = {ip: (vm.node_env(BOOT_TIMEOUT), vm.proc_cmdline()) for ip, vm in vms.items()}
    print(f"\nnodes 1 and 3, powered on at once, both joined after "
          f"{time.monotonic() - start:.1f} s")
    return out


def test_http_url_two_nodes_fetch_kernel_and_ramdisk_from_nginx(
        kernel: Kernel, ramdisk: Path, root_images: dict[str, Path], tmp_path: Path) -> None:
    root = admin_tree(tmp_path / "root", kernel.vmlinuz, ramdisk, CMDLINE,
                      lilo_args=["--http-url", f"http://{SERVER_IP}/"])
    tftpboot = root / "tftpboot"
    pair = set_dir(tftpboot)
    assert f"kernel http://{SERVER_IP}/{pair}/vmlinuz " in (tftpboot / IPXE_SCRIPT).read_text()
    work = tmp_path / "net"
    work.mkdir()
    with Syslog(work / "syslog.sock") as syslog, \
            pxe_network(work, root / "etc/dhcpd.conf", tftpboot, syslog=syslog) as net, \
            start_nginx(net.netns, tftpboot, work):
        booted = boot_two(net, root_images, tmp_path)
    assert {ip: env["SSI_NODE"] for ip, (env, _) in booted.items()} == {N1_IP: "1", N3_IP: "3"}
    assert all(env["SSI_IP"] == ip for ip, (env, _) in booted.items())
    pair_files = {f"{pair}/vmlinuz", f"{pair}/initrd.img"}
    http = http_fetches(work / "nginx-access.log", tftpboot)
    tftp = tftp_reads(syslog)
    for ip in (N1_IP, N3_IP):
        # Both files, every byte, over HTTP; over TFTP the script (so tftpd's log is
        # live and this node is in it) and nothing of the set.
        assert pair_files <= http.get(ip, set()), (ip, http)
        assert IPXE_SCRIPT in tftp.get(ip, set()), (ip, tftp)
        assert not any(f.startswith(SETS_DIR) for f in tftp[ip]), (ip, tftp)
    assert not any(f.endswith("initrd.img") for files in tftp.values() for f in files), tftp


def split_table() -> str:
    """The example table, nodes 1 and 2 on this server, 3 and 4 on SERVER_B."""
    lines = []
    for line in cluster.SSITAB.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            line += f" server={SERVER_IP if line.split()[0] in ('1', '2') else SERVER_B}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_two_boot_servers_each_node_boots_from_its_own(
        kernel: Kernel, ramdisk: Path, root_images: dict[str, Path], tmp_path: Path) -> None:
    # One table, one dhcpd.conf, one URL for every node: {server} is its DHCP next-server.
    root = admin_tree(tmp_path / "root", kernel.vmlinuz, ramdisk, f"{CMDLINE} ssi.note=srv-a",
                      table=split_table(), lilo_args=["--http-url", "http://{server}/"])
    dhcpd_conf = (root / "etc/dhcpd.conf").read_text()
    assert f"next-server {SERVER_B};" in dhcpd_conf and f"next-server {SERVER_IP};" in dhcpd_conf
    tftpboot_a, tftpboot_b = root / "tftpboot", tmp_path / "tftpboot-b"
    # Server B's tree: the same set (same kernel and ramdisk), its script marked srv-b.
    assert lilo(["--root", str(root), "--tftpboot", str(tftpboot_b), "--no-push",
                 "--cmdline", f"{CMDLINE} ssi.note=srv-b"]) == 0
    pair = set_dir(tftpboot_a)
    assert set_dir(tftpboot_b) == pair
    assert "kernel http://${next-server}/" in (tftpboot_b / IPXE_SCRIPT).read_text()
    work_a, work_b = tmp_path / "server-a", tmp_path / "server-b"
    work_a.mkdir()
    work_b.mkdir()
    tftpboot_b.chmod(0o755)
    with Syslog(work_a / "syslog.sock") as log_a, Syslog(work_b / "syslog.sock") as log_b, \
            pxe_network(work_a, root / "etc/dhcpd.conf", tftpboot_a, syslog=log_a) as net, \
            Netns(workdir=work_b) as server_b:
        # Server B: its own namespace, on the nodes' boot network by a veth into the bridge.
        net.netns.add_port(net.bridge, server_b, address=f"{SERVER_B}/24")
        start_tftpd(server_b, SERVER_B, tftpboot_b, work_b / "tftpd.log", log_b)
        with start_nginx(net.netns, tftpboot_a, work_a), \
                start_nginx(server_b, tftpboot_b, work_b, ip=SERVER_B):
            booted = boot_two(net, root_images, tmp_path)
    assert {ip: env["SSI_NODE"] for ip, (env, _) in booted.items()} == {N1_IP: "1", N3_IP: "3"}
    # Whose script each kernel ran: its own server's.
    assert "ssi.note=srv-a" in booted[N1_IP][1] and "srv-b" not in booted[N1_IP][1]
    assert "ssi.note=srv-b" in booted[N3_IP][1] and "srv-a" not in booted[N3_IP][1]
    # Whom each server served: its own node only, the script over TFTP, the pair over HTTP.
    pair_files = {f"{pair}/vmlinuz", f"{pair}/initrd.img"}
    for work, tftpboot, syslog, mine in ((work_a, tftpboot_a, log_a, N1_IP),
                                         (work_b, tftpboot_b, log_b, N3_IP)):
        http = http_fetches(work / "nginx-access.log", tftpboot)
        tftp = tftp_reads(syslog)
        assert set(http) == {mine} and pair_files <= http[mine], (work.name, http)
        assert set(tftp) == {mine} and IPXE_SCRIPT in tftp[mine], (work.name, tftp)
        assert not any(f.startswith(SETS_DIR) for f in tftp[mine]), (work.name, tftp)
