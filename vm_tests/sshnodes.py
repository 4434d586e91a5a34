"""A cluster of ssh "nodes" for the push tests and benchmark: no VM, real sshd.

Each node is a network namespace with its ssitab address on a veth into a hub
namespace's bridge, and its own sshd (key auth with a test key) started inside
a private mount namespace, where

    <workdir>/mnt/boot   is the node's own boot directory (a bind mount of
                         <workdir>/nodes/N/boot, which the test reads from outside)
    <workdir>/mnt/spool  is a private tmpfs that receives pushed pairs

so every node answers `lilo.ssi --boot-dir <workdir>/mnt/boot` about its own
partition, at the same path on every node, as on a real cluster. The admin
side (lilo.ssi) runs in the hub namespace; nothing touches the root
namespace's network. A node may be given a tiny tmpfs as its boot directory
(a full disk), run no sshd (down), or not exist at all (unreachable address).

Leaving the context stops every sshd, deletes every namespace (which takes
their mounts along) and unmounts the full-disk tmpfs, also after a failure.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from mkinitrd_ssi.run import run
from vm_tests.netns import Netns, Proc, wait_until

SUBNET = "10.77.0"
FIRST_HOST = 11  # node N is SUBNET.(10+N), as in README's example table
LILO = str(Path(sys.executable).with_name("lilo.ssi"))

SSHD_CONFIG = """\
ListenAddress {ip}
HostKey {workdir}/host_key
AuthorizedKeysFile {workdir}/client_key.pub
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PidFile none
MaxStartups 1000
Subsystem sftp internal-sftp
LogLevel INFO
"""

NODE_SHELL = """\
set -e
mount --bind {boot} {workdir}/mnt/boot
mount -t tmpfs -o size=256m,mode=0755 spool {workdir}/mnt/spool
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e -f {config}
"""


@dataclass
class SshNode:
    number: int
    ip: str
    boot: Path  # the node's boot directory, as seen from outside
    ns: Netns | None = None
    iface: str = ""
    sshd: Proc | None = None

    def rx_bytes(self) -> int:
        """Bytes the node's interface has received: what a push sent it, and more."""
        assert self.ns is not None
        out = self.ns.ip("-j", "-s", "link", "show", "dev", self.iface)
        return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


@dataclass
class SshCluster:
    """count nodes numbered 1..count; see the module docstring for the options."""

    workdir: Path
    count: int
    down: Iterable[int] = ()
    absent: Iterable[int] = ()
    full: dict[int, int] = field(default_factory=dict)  # node -> boot tmpfs size in KiB
    nodes: dict[int, SshNode] = field(default_factory=dict)
    hub: Netns | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __enter__(self) -> SshCluster:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()

    def _start(self) -> None:
        for sub in ("mnt/boot", "mnt/spool", "logs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        for key in ("host_key", "client_key"):
            if not (self.workdir / key).exists():
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                     str(self.workdir / key)], capture=True)
        self.hub = self._stack.enter_context(Netns(workdir=self.workdir / "logs"))
        bridge = self.hub.add_bridge(f"{SUBNET}.1/24", carrier=False)
        absent, down = set(self.absent), set(self.down)
        for n in range(1, self.count + 1):
            node = SshNode(n, f"{SUBNET}.{FIRST_HOST - 1 + n}",
                           self.workdir / "nodes" / str(n) / "boot")
            node.boot.mkdir(parents=True, exist_ok=True)
            if n in self.full:
                self._tmpfs(node.boot, self.full[n])
            self.nodes[n] = node
            if n in absent:
                continue
            node.ns = self._stack.enter_context(Netns(workdir=self.workdir / "logs"))
            node.iface = self.hub.add_port(bridge, node.ns, address=f"{node.ip}/24")
            if n not in down:
                node.sshd = self._sshd(node)
        for node in self.nodes.values():
            if node.sshd is not None:
                node.sshd.wait_for(f"Server listening on {node.ip}", timeout=20)

    def _tmpfs(self, path: Path, kib: int) -> None:
        run(["mount", "-t", "tmpfs", "-o", f"size={kib}k,mode=0755", "tmpfs", str(path)])
        self._stack.callback(run, ["umount", "-l", str(path)], check=False)

    def _sshd(self, node: SshNode) -> Proc:
        assert node.ns is not None
        config = self.workdir / "nodes" / str(node.number) / "sshd_config"
        config.write_text(SSHD_CONFIG.format(ip=node.ip, workdir=self.workdir))
        script = NODE_SHELL.format(boot=shlex.quote(str(node.boot)), config=config,
                                   workdir=self.workdir)
        return node.ns.popen(["unshare", "--mount", "--propagation", "private",
                              "sh", "-c", script],
                             log=self.workdir / "logs" / f"sshd-{node.number}.log")

    # -- what the admin side needs

    def ssitab(self, local: Iterable[int] | None = None) -> str:
        wanted = set(self.nodes if local is None else local)
        return "".join(
            f"{n}  {node.ip}/24  52:54:00:5c:00:{n:02x}  "
            f"{'1  /dev/vda1' if n in wanted else '0  -'}\n"
            for n, node in sorted(self.nodes.items()))

    def push_args(self, connect_timeout: int = 2) -> list[str]:
        """lilo.ssi options that reach these nodes and their private boot directories."""
        return [
            "--ssh-option", f"IdentityFile={self.workdir}/client_key",
            "--ssh-option", "IdentitiesOnly=yes",
            "--ssh-option", "StrictHostKeyChecking=no",
            "--ssh-option", "UserKnownHostsFile=/dev/null",
            "--connect-timeout", str(connect_timeout),
            "--remote-lilo", f"{LILO} --boot-dir {self.workdir}/mnt/boot",
            "--remote-spool", f"{self.workdir}/mnt/spool",
        ]

    def lilo(self, args: Sequence[str], timeout: float = 300,
             env: Sequence[str] = ()) -> tuple[int, str, str]:
        """lilo.ssi run on the admin side (the hub), with env's NAME=value words added to
        its environment; (exit code, stdout, stderr)."""
        assert self.hub is not None
        done = self.hub.run(["env", *env, LILO, *args], check=False, timeout=timeout)
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    def leftovers(self) -> list[str]:
        """Processes still running from this workdir (there should be none after exit)."""
        out = run(["ps", "-eo", "pid=,args="], capture=True).stdout.decode()
        return [line for line in out.splitlines() if str(self.workdir) in line
                and "ps -eo" not in line]


def wait_gone(cluster: SshCluster) -> list[str]:
    """The processes left behind once a cluster has been left (none, we expect)."""
    with contextlib.suppress(Exception):
        wait_until(lambda: not cluster.leftovers(), timeout=5, what="sshd to exit")
    return cluster.leftovers()
