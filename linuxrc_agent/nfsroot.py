"""The shared root over NFS: `root=nfs:SERVER:/PATH[:OPTIONS]` and `root=nfs4:...`.

dracut's spelling, mount.nfs's meaning. The kernel's NFS client mounts it
through mount(2) with a text option string, the form mount.nfs hands the
kernel too: no mount helper, no rpcbind, statd or DHCP client in the ramdisk.
The network stage has already given the node its ssitab address.

- `nfs4:` is NFSv4: minor versions 4.2, 4.1, 4.0 tried in that order (the
  negotiation mount.nfs does in user space: the kernel takes one version per
  mount call).
- `nfs:` is what `mount -t nfs` means today: NFSv4 as above, then NFSv3 when
  the server speaks no v4 (EPROTONOSUPPORT). Not dracut's v3-only `nfs:`:
  v4 needs nothing but TCP port 2049, which suits a ramdisk.
- A version in OPTIONS (`vers=3`, `nfsvers=4.1`, `v4`, `minorversion=1`) pins it.
- OPTIONS, then `rootflags=`, go to the kernel unchanged, except the mount(2)
  flags among them (`ro`, `rw`, `noatime`, ...), which become flags as with
  mount(8). The agent adds `vers=`, `addr=SERVER`, for v4 `clientaddr=` (the
  node's own address, unless given) and for v3 `nolock` (unless a lock option
  is given: the kernel's lockd would need rpc.statd, which the ramdisk lacks;
  a read-only root needs no locks shared with other nodes).
- SERVER is an IPv4 address: the ramdisk resolves no names.

NFSv3 without `port=`/`mountport=` asks the server's rpcbind (port 111) for
the NFS and MOUNT ports, as the kernel's own client does; a server without
rpcbind needs `port=2049,mountport=N,mountproto=tcp`.

Errors come in two kinds. No answer (connection refused, timed out, no
route, or a connection that never gets a reply: each mount(2) is cut off) is
retried until the `ssi.timeout=` bound: the server may be booting too. An
answer that says no (no such export, access denied, no common version,
options the kernel refuses) fails at once, since waiting cannot change it;
the rescue shell's `exit` tries again.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from linuxrc_agent.mounts import parse_options
from linuxrc_agent.syscalls import MS_RDONLY, mount

SCHEMES = ("nfs", "nfs4")
NFS_PORT = 2049
V4_MINORS = ("4.2", "4.1", "4.0")
PROBE_TIMEOUT = 2.0  # seconds for one TCP connect to the server
RETRY_INTERVAL = 1.0  # seconds between attempts while the server does not answer
MOUNT_TIMEOUT = 5.0  # seconds one mount(2) gets at least, even past the ssi.timeout bound

_IPV4_RE = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")
_OPTION_RE = re.compile(r"^[a-z][a-z0-9_.]*(=[^,\s]*)?$")
# Options naming the version: nfsvers=/vers= take a value; v3, v4, v4.1 are words.
_VERSION_WORD_RE = re.compile(r"^v(\d(?:\.\d)?)$")
_LOCK_OPTIONS = ("lock", "nolock", "local_lock")
# errno values that mean "the server answered, and the answer is no": waiting cannot help.
_REFUSALS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EINVAL,
                       errno.ENODEV, errno.EPROTONOSUPPORT, errno.ESTALE, errno.ENAMETOOLONG})


class NfsSpecError(ValueError):
    """root=nfs... that cannot be mounted as written; the message says what is wrong."""


@dataclass(frozen=True)
class NfsSpec:
    scheme: str  # "nfs" or "nfs4", as written
    server: str  # IPv4 address
    path: str  # the export, absolute
    options: tuple[str, ...] = ()  # OPTIONS split at commas, empty ones dropped

    @property
    def source(self) -> str:
        """SERVER:/PATH, the mount(2) source (the kernel splits it at the first colon)."""
        return f"{self.server}:{self.path}"


class Attempt(NamedTuple):
    fstype: str  # "nfs4" or "nfs"
    version: str  # "4.2", "4.1", "4.0" or "3"
    data: str  # the option string for mount(2)


@dataclass(frozen=True)
class Plan:
    """The mount(2) calls to try in order, until one works or the server refuses."""

    spec: NfsSpec
    attempts: tuple[Attempt, ...]
    flags: int
    port: int  # the TCP port whose answer says the server is up

    @property
    def versions(self) -> str:
        return ", ".join(a.version for a in self.attempts)

    def modules(self) -> set[str]:
        """Kernel modules the attempts need: nfs requests them by name, and the
        ramdisk has no modprobe to answer the request."""
        return {"nfsv3" if a.version == "3" else "nfsv4" for a in self.attempts}


def is_nfs(root: str | None) -> bool:
    return root is not None and root.partition(":")[0] in SCHEMES and ":" in root


def parse_spec(root: str) -> NfsSpec:
    """root=nfs:SERVER:/PATH[:OPTIONS] or nfs4:... as an NfsSpec; NfsSpecError if malformed."""
    scheme, _, rest = root.partition(":")
    if scheme not in SCHEMES:
        raise NfsSpecError(f"root={root}: not an NFS root (nfs: or nfs4:)")
    server, sep, rest = rest.partition(":")
    if not sep or not rest:
        raise NfsSpecError(f"root={root}: expected {scheme}:SERVER:/PATH[:OPTIONS]")
    path, _, options = rest.partition(":")
    if not server:
        raise NfsSpecError(f"root={root}: no SERVER; this agent has no DHCP to learn it from, "
                           f"so write {scheme}:SERVER:/PATH")
    if not valid_ipv4(server):
        raise NfsSpecError(f"root={root}: SERVER {server!r} is not an IPv4 address; the "
                           "ramdisk resolves no host names")
    if not path.startswith("/"):
        raise NfsSpecError(f"root={root}: the export {path!r} is not an absolute path")
    words = tuple(o for o in options.split(",") if o)
    for word in words:
        if not _OPTION_RE.match(word):
            raise NfsSpecError(f"root={root}: {word!r} is not a mount option (name or "
                               "name=value, separated by commas)")
    return NfsSpec(scheme, server, path, words)


def valid_ipv4(text: str) -> bool:
    m = _IPV4_RE.match(text)
    return m is not None and all(int(g) <= 255 and (g == "0" or not g.startswith("0"))
                                 for g in m.groups())


def _pinned_version(words: list[str]) -> tuple[list[str], str | None]:
    """The options less those naming the version, and the version they name (last wins)."""
    rest: list[str] = []
    major: str | None = None
    minor: str | None = None
    for word in words:
        key, sep, value = word.partition("=")
        m = _VERSION_WORD_RE.match(word)
        if key in ("vers", "nfsvers") and sep:
            major, _, minor_part = value.partition(".")
            minor = minor_part or None
        elif m is not None:
            major, _, minor_part = m.group(1).partition(".")
            minor = minor_part or None
        elif key == "minorversion" and sep:
            minor = value
        else:
            rest.append(word)
            continue
        if not (major or "4").isdigit() or not (minor or "0").isdigit():
            raise NfsSpecError(f"{word}: expected a version such as 3, 4, 4.1 or 4.2")
    if major is None and minor is None:
        return rest, None
    major = major or "4"  # minorversion= alone implies v4, as for the kernel
    return rest, major if minor is None else f"{major}.{minor}"


def plan(spec: NfsSpec, client_ip: str, rootflags: str = "", readonly: bool = True) -> Plan:
    """The mount(2) calls for spec from a node with address client_ip; NfsSpecError if the
    options contradict the spec."""
    flags, data = parse_options(",".join((*spec.options, *rootflags.split(","))),
                                MS_RDONLY if readonly else 0)
    words = [w for w in data.split(",") if w]
    keys = {w.partition("=")[0] for w in words}
    if "addr" in keys:
        raise NfsSpecError("addr= in the options: the server's address is the SERVER part of "
                           "root=")
    words, pinned = _pinned_version(words)
    if pinned is None:
        versions = [*V4_MINORS, *(("3",) if spec.scheme == "nfs" else ())]
    elif pinned == "4":
        versions = list(V4_MINORS)
    elif pinned == "3" or pinned in V4_MINORS:
        versions = [pinned]
    else:
        raise NfsSpecError(f"NFS version {pinned}: this agent mounts 3, 4.0, 4.1 or 4.2")
    if spec.scheme == "nfs4" and versions == ["3"]:
        raise NfsSpecError("root=nfs4: with vers=3: write root=nfs: for NFSv3")
    port = NFS_PORT
    for w in words:
        key, _, value = w.partition("=")
        if key == "port" and value.isdigit() and 0 < int(value) < 65536:
            port = int(value)
    user = ",".join(words)
    attempts = []
    for version in versions:
        ours = [f"vers={version}", f"addr={spec.server}"]
        if version == "3":
            if not keys.intersection(_LOCK_OPTIONS):
                ours.append("nolock")
        elif "clientaddr" not in keys:
            ours.append(f"clientaddr={client_ip}")
        data_text = ",".join(ours) + (f",{user}" if user else "")
        attempts.append(Attempt("nfs" if version == "3" else "nfs4", version, data_text))
    return Plan(spec, tuple(attempts), flags, port)


# ---------------------------------------------------------------- mounting


class NfsMountError(Exception):
    """The mount failed for good: errno, whether the server ever answered, the last attempt."""

    def __init__(self, err: int, answered: bool, attempt: Attempt | None,
                 waited: float) -> None:
        super().__init__(os.strerror(err))
        self.errno = err
        self.answered = answered
        self.attempt = attempt
        self.waited = waited


def is_refusal(err: int) -> bool:
    return err in _REFUSALS


def probe(server: str, port: int, timeout: float) -> int | None:
    """Connect to server:port over TCP: None when it answers, else the errno why not."""
    import socket  # only NFS roots need it

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((server, port))
    except TimeoutError:
        return errno.ETIMEDOUT
    except OSError as e:
        return e.errno or errno.EIO
    finally:
        s.close()
    return None


MountFn = Callable[[str, str, str, int, str, float], None]


def bounded_mount(source: str, target: str, fstype: str, flags: int, data: str,
                  timeout: float) -> None:
    """mount(2) that gives up after timeout seconds with ETIMEDOUT.

    A server that accepts the TCP connection but never replies (hung, or
    stopped) holds an NFS mount(2) for minutes: timeo=600 tenths of a second,
    times the retransmissions (measured here: 3 minutes, then EIO). The call
    runs in a forked child, which shares our mount namespace, so its mount is
    ours; its RPC waits are killable, so SIGKILL ends a call that overstays.
    """
    pid = os.fork()
    if pid == 0:  # the child: one system call, then out, whatever happens
        code = 0
        try:
            mount(source, target, fstype, flags, data)
        except OSError as e:
            code = e.errno or errno.EIO
        except BaseException:
            code = errno.EIO
        os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise OSError(errno.ETIMEDOUT, f"no reply to the mount within {timeout:.0f} s")
        time.sleep(0.02)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        err = code if code > 0 else errno.EIO  # killed by a signal: no errno to give
        raise OSError(err, os.strerror(err), target)


class VersionsFailed(Exception):
    """No version of the plan mounted: the errno that ended the pass, and its attempt."""

    def __init__(self, err: int, attempt: Attempt) -> None:
        super().__init__(f"{attempt.version}: {os.strerror(err)}")
        self.errno = err
        self.attempt = attempt


def try_versions(p: Plan, target: str, mount_fn: MountFn = bounded_mount,
                 timeout: float = MOUNT_TIMEOUT) -> Attempt:
    """One pass over the plan's versions: the attempt that mounted.

    Steps down a version when the server or the kernel refuses it
    (EPROTONOSUPPORT, or EINVAL for a minor version the kernel lacks), as
    mount.nfs does; raises VersionsFailed with the errno that ended the pass.
    """
    refused: VersionsFailed | None = None
    for attempt in p.attempts:
        try:
            mount_fn(p.spec.source, target, attempt.fstype, p.flags, attempt.data, timeout)
        except OSError as e:
            err = e.errno or errno.EIO
            if err not in (errno.EPROTONOSUPPORT, errno.EINVAL):
                raise VersionsFailed(err, attempt) from None
            # EINVAL from every version is the options, not the version: report that.
            if refused is None or refused.errno != errno.EINVAL:
                refused = VersionsFailed(err, attempt)
            continue
        return attempt
    assert refused is not None, "a plan has at least one attempt"
    raise refused


def mount_nfs(p: Plan, target: str, timeout: float, *,
              mount_fn: MountFn = bounded_mount,
              probe_fn: Callable[[str, int, float], int | None] = probe,
              waiting: Callable[[int, float], None] | None = None,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> Attempt:
    """Mount p on target, retrying while the server does not answer, for up to timeout s.

    A TCP connect to the server's port comes first: it tells "no answer" from
    every other failure at once, and bounds the wait for a silent host. Each
    mount(2) gets the time left (at least MOUNT_TIMEOUT): a server that takes
    the connection but never replies times out too (ETIMEDOUT, retried like
    no answer). `waiting(errno, seconds left)` is called before each pause.
    Raises NfsMountError.
    """
    started = clock()
    deadline = started + timeout
    answered = False
    last: Attempt | None = None
    while True:
        left = deadline - clock()
        err = probe_fn(p.spec.server, p.port, max(0.2, min(PROBE_TIMEOUT, left)))
        if err is None:
            answered = True
            try:
                # The time left, but enough for one mount of a slow server that answers.
                return try_versions(p, target, mount_fn,
                                    max(MOUNT_TIMEOUT, deadline - clock()))
            except VersionsFailed as e:
                err, last = e.errno, e.attempt
                if is_refusal(err):
                    raise NfsMountError(err, True, last, clock() - started) from None
        left = deadline - clock()
        if left <= 0:
            raise NfsMountError(err, answered, last, clock() - started)
        if waiting is not None:
            waiting(err, left)
        sleep(min(RETRY_INTERVAL, left))


# The uid the kernel's NFSv4 client gives an owner name it cannot map (-2: fs/nfs/
# nfs4xdr.c decode_attr_owner), and nobody, which an idmapper maps unknown names to.
UNMAPPED = (0xFFFFFFFE, 65534)


def owners_unmapped(attempt: Attempt, uid: int) -> str | None:
    """A warning when an NFSv4 root reads as owned by no one. An NFSv4 server may send
    owners as user@domain names; the ramdisk runs no idmapper to map them back, so every
    file of the shared root then reads as owned by 4294967294 (sshd refuses keys, setuid
    programs and ownership checks go wrong) although the mount itself worked."""
    if attempt.fstype != "nfs4" or uid not in UNMAPPED:
        return None
    return (f"root: the shared root's / reads as owned by uid {uid} over NFS "
            f"{attempt.version}, an owner this node could not map: the server sends owners "
            "by name and nodes map none; have it send numbers (kernel nfsd does for AUTH_SYS "
            "unless nfs4_disable_idmapping=N; nfs-ganesha: NFSv4 { Only_Numeric_Owners = "
            "true; }), or mount it with nfs: (v3)")


def explain(p: Plan, failure: NfsMountError, client: str) -> tuple[str, list[str]]:
    """What failed, naming the server, the export and the cause; and what to check."""
    spec = p.spec
    where = f"NFS root {spec.source}"
    err = failure.errno
    name = errno.errorcode.get(err, str(err))
    if not failure.answered:
        what = (f"{where}: no answer from {spec.server} on port {p.port} within "
                f"{failure.waited:.0f} s ({os.strerror(err)})")
        checks = [f"the NFS server runs on {spec.server} and listens on TCP port {p.port} "
                  f"(on the server: ss -ltn 'sport = :{p.port}')",
                  f"no firewall between {client} and {spec.server} drops TCP port {p.port}",
                  "a slow server: a longer ssi.timeout="]
        if err in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            checks.insert(0, f"{spec.server} is on the node's subnet ({client}): the agent "
                          "sets no gateway")
        return what, checks
    tried = f"NFS {failure.attempt.version}" if failure.attempt else "NFS"
    if failure.attempt is not None and failure.attempt.version == "3" \
            and not is_refusal(err):
        # Port 2049 answered, so the server is up: the v3 side channel is what failed.
        return (f"{where}: {spec.server} answers on port {p.port} but the NFSv3 mount "
                f"did not get through within {failure.waited:.0f} s ({os.strerror(err)})",
                [f"rpcbind runs on {spec.server} (rpcinfo -p {spec.server} lists mountd)",
                 "or give the ports: port=2049,mountport=N,mountproto=tcp after the path"])
    if err == errno.ETIMEDOUT:
        return (f"{where}: {spec.server} accepts connections on port {p.port} but its NFS "
                f"service did not reply within {failure.waited:.0f} s ({tried})",
                [f"the NFS server on {spec.server} is running, not hung or stopped (its log)",
                 f"port {p.port} on {spec.server} is the NFS server's",
                 "a slow server: a longer ssi.timeout="])
    if err in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE):
        what = f"{where}: the server has no export {spec.path} ({name}, {tried})"
        checks = [f"the export's path on {spec.server} (exportfs -v; for NFSv4 the "
                  "pseudo path, e.g. nfs-ganesha's Pseudo =)",
                  # Measured with nfs-ganesha: a v4 client not on the export's list finds no
                  # such path, where v3's MOUNT says access denied.
                  f"the export lets {client} in: an NFSv4 server hides the exports a client "
                  "may not mount"]
        if spec.scheme == "nfs" and len(p.attempts) > 1:
            checks.append(f"an export served over NFSv3 only: root=nfs:{spec.source}:vers=3")
        return what, checks
    if err in (errno.EACCES, errno.EPERM):
        return (f"{where}: access denied by {spec.server} ({name}, {tried})",
                [f"the export lets {client} in (its client list, e.g. 10.77.0.0/24(ro,"
                 "no_root_squash,no_subtree_check))",
                 "sec=sys is allowed on the export (the agent has no Kerberos)"])
    if err == errno.EPROTONOSUPPORT:
        return (f"{where}: {spec.server} speaks none of the NFS versions tried "
                f"({p.versions})",
                ["the server has NFSv4 (or v3) enabled",
                 f"a version it does serve in the options, e.g. root={spec.scheme}:"
                 f"{spec.source}:vers=3"])
    if err == errno.ENODEV:
        mods = ",".join(sorted(p.modules()))
        return (f"{where}: the kernel has no NFS client ({name})",
                [f"rebuild the ramdisk with mkinitrd.ssi --add-modules {mods}"])
    if err == errno.EINVAL:
        return (f"{where}: the kernel refused the mount options ({name}): "
                f"{failure.attempt.data if failure.attempt else ''}",
                ["the options after the path in root= and rootflags= are NFS mount "
                 "options (man 5 nfs)", "dmesg (in the rescue shell) for the kernel's reason"])
    return (f"{where}: {os.strerror(err)} ({name}, {tried})",
            ["dmesg (in the rescue shell) for the kernel's reason",
             f"the server's log on {spec.server}"])
