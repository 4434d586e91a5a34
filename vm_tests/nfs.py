"""A real NFS server for the boot tests: nfs-ganesha in a network namespace.

The machines' kernels have no nfsd, so the server is nfs-ganesha (user space,
VFS backend), exporting a host directory read-only under one path for NFSv4
(its pseudo path) and NFSv3 alike (`mount_path_pseudo`), and once more as
PRIVATE for an address no test node has (access denied). `Graceless = true`
lets it serve at once instead of after a 90 s grace period.

Ganesha registers NFSv3 and MOUNT with rpcbind and blocks at start-up until
one answers, so an rpcbind runs beside it. Both run in a private mount
namespace with their own tmpfs on /run: rpcbind's socket and state, and
ganesha's, never meet the host's or another test's. They share one process
group and the Netns: stopping the server, leaving the context or deleting the
namespace kills both, even when a test fails; a test process killed outright
leaves a namespace the next Netns() removes with everything in it.

    with nfs_network(workdir, export) as net:          # bridge 10.77.0.1/24, ganesha up
        config = VmConfig(..., nics=[Nic(mac, netdev=net.netdev())], netns=net.ns)
        ... root=nfs4:10.77.0.1:/srv/ssiroot ...

`nfs_server(netns, ...)` puts the server into a namespace that exists already
(the PXE network's, say).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vm_tests.netns import HarnessError, Netns, Proc, wait_until

SERVER_IP = "10.77.0.1"
PREFIX = 24
PSEUDO = "/srv/ssiroot"
PRIVATE = "/srv/private"  # exported to PRIVATE_CLIENT only
PRIVATE_CLIENT = "10.77.0.99"
READY = "NFS SERVER INITIALIZED"
NFS_PORT = 2049
MNT_PORT = 20048

CONFIG = """\
NFS_CORE_PARAM {{
    Protocols = {protocols};
    NFS_Port = {nfs_port};
    MNT_Port = {mnt_port};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    mount_path_pseudo = true;
}}
NFSV4 {{
    Graceless = true;
    # Owners as numbers, as the kernel's nfsd sends them to AUTH_SYS clients: the ramdisk
    # has no idmapper, so an owner by name (root@domain) reads as nobody on the node.
    Only_Numeric_Owners = {numeric_owners};
    RecoveryBackend = fs;
    RecoveryRoot = "{workdir}/recovery";
}}
EXPORT {{
    Export_Id = 1;
    Path = "{export}";
    Pseudo = "{pseudo}";
    Access_Type = {access};
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3, 4;
    Transports = TCP;
    FSAL {{ Name = VFS; }}
}}
# The same tree for one client only, an address no test node has: access denied.
EXPORT {{
    Export_Id = 2;
    Path = "{export}";
    Pseudo = "{private}";
    Access_Type = None;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3, 4;
    Transports = TCP;
    CLIENT {{ Clients = {private_client}; Access_Type = RO; }}
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""

# Runs as the namespace's first process: a private /run, rpcbind, then ganesha in its place.
LAUNCH = """\
set -e
mount -t tmpfs -o mode=0755 ssit-run /run
mkdir -p /run/rpcbind
rpcbind -f &
i=0
while [ ! -S /run/rpcbind.sock ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
exec ganesha.nfsd -F -L "$1/ganesha.log" -f "$1/ganesha.conf" -p /run/ganesha.pid
"""


def available() -> str | None:
    """Why the NFS server cannot run here (a reason to skip), or None when it can."""
    import shutil

    for tool in ("ganesha.nfsd", "rpcbind", "unshare"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} not installed (make deps: nfs-ganesha, nfs-ganesha-vfs, rpcbind)"
    return None


@dataclass
class NfsServer:
    """nfs-ganesha exporting `export` as PSEUDO, started and stopped at will."""

    netns: Netns
    workdir: Path
    export: Path
    pseudo: str = PSEUDO
    read_only: bool = True
    protocols: str = "3, 4"  # what the server speaks at all ("3": an NFSv3-only server)
    numeric_owners: bool = True  # False: NFSv4 owners by name, as ganesha's default
    address: str = SERVER_IP
    proc: Proc | None = None

    def root(self, scheme: str = "nfs4", options: str = "", path: str | None = None) -> str:
        """The root= value that names this export (or another path on this server)."""
        spec = f"{scheme}:{self.address}:{path or self.pseudo}"
        return f"{spec}:{options}" if options else spec

    @property
    def log(self) -> Path:
        return self.workdir / "ganesha.log"

    def start(self, timeout: float = 60.0) -> None:
        if self.proc is not None and self.proc.running():
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "recovery").mkdir(exist_ok=True)
        (self.workdir / "ganesha.conf").write_text(CONFIG.format(
            nfs_port=NFS_PORT, mnt_port=MNT_PORT, workdir=self.workdir, export=self.export,
            pseudo=self.pseudo, access="RO" if self.read_only else "RW", private=PRIVATE,
            private_client=PRIVATE_CLIENT, protocols=self.protocols,
            numeric_owners=str(self.numeric_owners).lower()))
        self.log.unlink(missing_ok=True)
        self.proc = self.netns.popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", LAUNCH, "ganesha",
             str(self.workdir)], log=self.workdir / "launch.log")
        try:
            wait_until(self._ready, timeout, f"nfs-ganesha in {self.netns.name} to serve")
        except HarnessError as e:
            self.stop()
            raise HarnessError(f"{e}\n--- ganesha.log ---\n{self._log_text()[-3000:]}\n"
                               f"--- launch.log ---\n{self.proc.output()[-2000:]}") from None

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _ready(self) -> bool:
        if self.proc is None or not self.proc.running():
            raise HarnessError(f"nfs-ganesha exited:\n{self._log_text()[-3000:]}\n"
                               f"{self.proc.output()[-2000:] if self.proc else ''}")
        return READY in self._log_text()

    def pause(self) -> None:
        """SIGSTOP ganesha and rpcbind: connections are still accepted (by the kernel), no
        RPC is answered, as with a hung server."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            raise HarnessError("nfs-ganesha is not running")
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        """Kill ganesha and its rpcbind (their process group); idempotent."""
        if self.proc is not None:
            self.proc.stop(grace=1.0)
            with contextlib.suppress(ValueError):
                self.netns.procs.remove(self.proc)
            self.proc = None


@contextlib.contextmanager
def nfs_server(netns: Netns, workdir: Path, export: Path, *, start: bool = True,
               **kwargs: object) -> Iterator[NfsServer]:
    """An NfsServer in an existing namespace (whose address must be SERVER_IP), stopped on
    exit."""
    server = NfsServer(netns, workdir, export, **kwargs)  # type: ignore[arg-type]
    try:
        if start:
            server.start()
        yield server
    finally:
        server.stop()


@dataclass
class NfsNet:
    netns: Netns
    bridge: str
    server: NfsServer

    @property
    def ns(self) -> str:
        """The namespace's name, for VmConfig.netns."""
        return self.netns.name

    def netdev(self) -> str:
        """A fresh tap on the bridge, as a QEMU -netdev spec."""
        return f"tap,ifname={self.netns.add_tap(self.bridge)},script=no,downscript=no"


@contextlib.contextmanager
def nfs_network(workdir: Path, export: Path, *, start: bool = True,
                **server: object) -> Iterator[NfsNet]:
    """A namespace with a bridge at SERVER_IP/PREFIX and the server on it (server: NfsServer
    fields); all gone on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    with Netns(workdir=workdir) as ns:
        bridge = ns.add_bridge(f"{SERVER_IP}/{PREFIX}")
        with nfs_server(ns, workdir / "ganesha", export, start=start, **server) as srv:
            yield NfsNet(ns, bridge, srv)


def tree_digest(root: Path) -> str:
    """SHA-256 over every entry below root: path, type, mode, owner, size, link target, bytes.

    Times are left out: reading over NFS may update atimes, and nothing else
    should change.
    """
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath) / name
            st = path.lstat()
            h.update(f"{path.relative_to(root)}\0{st.st_mode:o}\0{st.st_uid}:{st.st_gid}\0"
                     f"{st.st_size}\0".encode())
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            elif path.is_file():
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()
