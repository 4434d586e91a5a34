"""NFS roots: root=nfs:/nfs4: specs, the option strings handed to mount(2), version
negotiation, waiting for the server, and the messages a failure prints. Pure logic: the
mount(2) calls, the TCP probe and the clock are fakes."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from linuxrc_agent import nfsroot
from linuxrc_agent.nfsroot import (
    Attempt,
    NfsMountError,
    NfsSpec,
    NfsSpecError,
    Plan,
    VersionsFailed,
    explain,
    is_nfs,
    mount_nfs,
    parse_spec,
    plan,
    try_versions,
)
from linuxrc_agent.syscalls import MS_NOATIME, MS_NOSUID, MS_RDONLY

SERVER = "10.77.0.1"
CLIENT = "10.77.0.11"


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(("root", "nfs"), [
    ("nfs:10.77.0.1:/srv/ssiroot", True),
    ("nfs4:10.77.0.1:/srv/ssiroot:vers=4.1", True),
    ("nfs:", True),  # malformed, but meant as NFS: parse_spec says what is wrong
    ("/dev/nfs", False),
    ("LABEL=nfs:x", False),
    ("nfsroot", False),
    ("nfs3:10.0.0.1:/x", False),
    (None, False),
])
def test_is_nfs(root: str | None, nfs: bool) -> None:
    assert is_nfs(root) is nfs


@pytest.mark.parametrize(("root", "spec"), [
    ("nfs4:10.77.0.1:/srv/ssiroot", NfsSpec("nfs4", SERVER, "/srv/ssiroot")),
    ("nfs:10.77.0.1:/", NfsSpec("nfs", SERVER, "/")),
    ("nfs:10.77.0.1:/srv/root:vers=3,timeo=14", NfsSpec("nfs", SERVER, "/srv/root",
                                                        ("vers=3", "timeo=14"))),
    ("nfs4:10.77.0.1:/srv/root:,,noatime,", NfsSpec("nfs4", SERVER, "/srv/root",
                                                    ("noatime",))),
    ("nfs4:10.77.0.1:/srv/root:", NfsSpec("nfs4", SERVER, "/srv/root")),
    ("nfs4:0.0.0.0:/x", NfsSpec("nfs4", "0.0.0.0", "/x")),
])
def test_parse_spec(root: str, spec: NfsSpec) -> None:
    assert parse_spec(root) == spec
    assert spec.source == f"{spec.server}:{spec.path}"


@pytest.mark.parametrize(("root", "why"), [
    ("nfs:", "expected nfs:SERVER:/PATH"),
    ("nfs:10.77.0.1", "expected nfs:SERVER:/PATH"),
    ("nfs:10.77.0.1:", "expected nfs:SERVER:/PATH"),
    ("nfs::/srv/root", "no SERVER"),
    ("nfs4:server.example:/srv/root", "not an IPv4 address"),
    ("nfs4:10.77.0.256:/srv/root", "not an IPv4 address"),
    ("nfs4:10.77.0.01:/srv/root", "not an IPv4 address"),  # octal to inet_aton
    ("nfs4:10.77.0:/srv/root", "not an IPv4 address"),
    ("nfs4:10.77.0.1:srv/root", "not an absolute path"),
    ("nfs4:10.77.0.1:/srv/root:a b", "not a mount option"),
    ("nfs4:10.77.0.1:/srv/root:=x", "not a mount option"),
    ("nfs4:10.77.0.1:/srv/root:Vers=4", "not a mount option"),
    ("ext4:10.77.0.1:/x", "not an NFS root"),
])
def test_bad_specs_say_why(root: str, why: str) -> None:
    with pytest.raises(NfsSpecError, match=why):
        parse_spec(root)


# ---------------------------------------------------------------- option strings


def versions(p: Plan) -> list[str]:
    return [a.version for a in p.attempts]


def test_nfs4_negotiates_the_minor_version_and_names_the_client() -> None:
    p = plan(parse_spec("nfs4:10.77.0.1:/srv/ssiroot"), CLIENT)
    assert p.attempts == (
        Attempt("nfs4", "4.2", "vers=4.2,addr=10.77.0.1,clientaddr=10.77.0.11"),
        Attempt("nfs4", "4.1", "vers=4.1,addr=10.77.0.1,clientaddr=10.77.0.11"),
        Attempt("nfs4", "4.0", "vers=4.0,addr=10.77.0.1,clientaddr=10.77.0.11"),
    )
    assert p.flags == MS_RDONLY and p.port == 2049
    assert p.modules() == {"nfsv4"}


def test_nfs_means_v4_then_v3_without_locks() -> None:
    p = plan(parse_spec("nfs:10.77.0.1:/srv/ssiroot"), CLIENT)
    assert versions(p) == ["4.2", "4.1", "4.0", "3"]
    assert p.attempts[-1] == Attempt("nfs", "3", "vers=3,addr=10.77.0.1,nolock")
    assert p.modules() == {"nfsv4", "nfsv3"}
    assert p.versions == "4.2, 4.1, 4.0, 3"


@pytest.mark.parametrize(("options", "expected"), [
    ("vers=3", ["3"]),
    ("nfsvers=3", ["3"]),
    ("v3", ["3"]),
    ("vers=4", ["4.2", "4.1", "4.0"]),
    ("v4", ["4.2", "4.1", "4.0"]),
    ("vers=4.1", ["4.1"]),
    ("v4.0", ["4.0"]),
    ("nfsvers=4.2", ["4.2"]),
    ("minorversion=1", ["4.1"]),
    ("vers=4,minorversion=0", ["4.0"]),
    ("vers=3,vers=4.2", ["4.2"]),  # the last one wins, as for the kernel
])
def test_a_version_in_the_options_pins_it(options: str, expected: list[str]) -> None:
    p = plan(parse_spec(f"nfs:10.77.0.1:/srv/root:{options}"), CLIENT)
    assert versions(p) == expected
    # The version words are the agent's to write, once per attempt.
    for a in p.attempts:
        assert a.data.startswith(f"vers={a.version},")
        assert "nfsvers" not in a.data and "minorversion" not in a.data
        assert not any(w in ("v3", "v4", "v4.0") for w in a.data.split(","))


@pytest.mark.parametrize(("root", "why"), [
    ("nfs4:10.77.0.1:/srv/root:vers=3", "write root=nfs: for NFSv3"),
    ("nfs:10.77.0.1:/srv/root:vers=2", "mounts 3, 4.0, 4.1 or 4.2"),
    ("nfs:10.77.0.1:/srv/root:vers=4.3", "mounts 3, 4.0, 4.1 or 4.2"),
    ("nfs:10.77.0.1:/srv/root:vers=x", "expected a version"),
    ("nfs:10.77.0.1:/srv/root:addr=10.0.0.9", "SERVER part of root="),
])
def test_contradictions_are_refused(root: str, why: str) -> None:
    with pytest.raises(NfsSpecError, match=why):
        plan(parse_spec(root), CLIENT)


def test_options_pass_through_after_the_agents_own() -> None:
    p = plan(parse_spec("nfs4:10.77.0.1:/srv/root:timeo=14,retrans=3,sec=sys,nconnect=2"),
             CLIENT)
    assert p.attempts[0].data == ("vers=4.2,addr=10.77.0.1,clientaddr=10.77.0.11,timeo=14,"
                                  "retrans=3,sec=sys,nconnect=2")


def test_mount_flags_become_flags_and_rootflags_follow_the_spec() -> None:
    p = plan(parse_spec("nfs4:10.77.0.1:/srv/root:noatime,rw,rsize=65536"), CLIENT,
             rootflags="nosuid,wsize=65536")
    assert p.flags == MS_NOATIME | MS_NOSUID  # rw cleared the read-only default
    assert p.attempts[0].data.endswith(",rsize=65536,wsize=65536")
    assert "noatime" not in p.attempts[0].data
    assert plan(parse_spec("nfs4:10.77.0.1:/x"), CLIENT, readonly=False).flags == 0
    assert plan(parse_spec("nfs4:10.77.0.1:/x:ro"), CLIENT, readonly=False).flags == MS_RDONLY


@pytest.mark.parametrize("lock", ["lock", "nolock", "local_lock=all"])
def test_a_lock_option_replaces_the_default_nolock(lock: str) -> None:
    p = plan(parse_spec(f"nfs:10.77.0.1:/srv/root:vers=3,{lock}"), CLIENT)
    assert p.attempts[0].data == f"vers=3,addr=10.77.0.1,{lock}"


def test_a_given_clientaddr_replaces_the_nodes_own() -> None:
    p = plan(parse_spec("nfs4:10.77.0.1:/srv/root:clientaddr=10.9.9.9"), CLIENT)
    assert p.attempts[0].data == "vers=4.2,addr=10.77.0.1,clientaddr=10.9.9.9"


def test_the_probed_port_follows_port() -> None:
    p = plan(parse_spec("nfs:10.77.0.1:/srv/root:vers=3,port=2050,mountport=20048,"
                        "mountproto=tcp"), CLIENT)
    assert p.port == 2050
    assert p.attempts[0].data == ("vers=3,addr=10.77.0.1,nolock,port=2050,mountport=20048,"
                                  "mountproto=tcp")
    assert plan(parse_spec("nfs:10.77.0.1:/srv/root:port=0"), CLIENT).port == 2049


# ---------------------------------------------------------------- mounting


class FakeKernel:
    """mount(2) answering per version from a script; records every call."""

    def __init__(self, answers: dict[str, int]) -> None:
        self.answers = answers  # version -> errno (0: mounted)
        self.calls: list[tuple[str, str, str, int, str]] = []
        self.timeouts: list[float] = []

    def __call__(self, source: str, target: str, fstype: str, flags: int, data: str,
                 timeout: float) -> None:
        self.calls.append((source, target, fstype, flags, data))
        self.timeouts.append(timeout)
        version = data.split(",")[0].removeprefix("vers=")
        err = self.answers.get(version, 0)
        if err:
            raise OSError(err, "fake")


def test_try_versions_steps_down_like_mount_nfs() -> None:
    p = plan(parse_spec("nfs:10.77.0.1:/srv/root"), CLIENT)
    kernel = FakeKernel({"4.2": errno.EPROTONOSUPPORT, "4.1": errno.EINVAL})
    assert try_versions(p, "/newroot", kernel).version == "4.0"
    assert [c[2] for c in kernel.calls] == ["nfs4", "nfs4", "nfs4"]
    assert kernel.calls[0][:2] == ("10.77.0.1:/srv/root", "/newroot")


def test_a_v3_only_server_gets_v3() -> None:
    p = plan(parse_spec("nfs:10.77.0.1:/srv/root"), CLIENT)
    no4 = dict.fromkeys(nfsroot.V4_MINORS, errno.EPROTONOSUPPORT)
    assert try_versions(p, "/newroot", FakeKernel(no4)) == p.attempts[-1]
    with pytest.raises(VersionsFailed) as e:
        try_versions(plan(parse_spec("nfs4:10.77.0.1:/srv/root"), CLIENT), "/newroot",
                     FakeKernel(no4))
    assert e.value.errno == errno.EPROTONOSUPPORT


def test_a_no_is_not_stepped_down_from() -> None:
    p = plan(parse_spec("nfs:10.77.0.1:/srv/root"), CLIENT)
    kernel = FakeKernel({"4.2": errno.ENOENT})
    with pytest.raises(VersionsFailed) as e:
        try_versions(p, "/newroot", kernel)
    assert (e.value.errno, e.value.attempt.version, len(kernel.calls)) == (errno.ENOENT, "4.2", 1)


def test_einval_from_every_version_is_reported_as_einval() -> None:
    p = plan(parse_spec("nfs:10.77.0.1:/srv/root:bogus=1"), CLIENT)
    answers = {"4.2": errno.EINVAL, "4.1": errno.EINVAL, "4.0": errno.EINVAL,
               "3": errno.EPROTONOSUPPORT}
    with pytest.raises(VersionsFailed) as e:
        try_versions(p, "/newroot", FakeKernel(answers))
    assert e.value.errno == errno.EINVAL


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_waits_while_the_server_does_not_answer_then_mounts() -> None:
    p = plan(parse_spec("nfs4:10.77.0.1:/srv/root"), CLIENT)
    clock = Clock()
    probes: list[tuple[str, int, float]] = []

    def probe(server: str, port: int, timeout: float) -> int | None:
        probes.append((server, port, timeout))
        return errno.ECONNREFUSED if len(probes) <= 3 else None

    waits: list[tuple[int, float]] = []
    kernel = FakeKernel({})
    attempt = mount_nfs(p, "/newroot", 30, mount_fn=kernel, probe_fn=probe,
                        waiting=lambda err, left: waits.append((err, left)),
                        clock=clock, sleep=clock.sleep)
    assert attempt.version == "4.2" and len(kernel.calls) == 1
    assert [w[0] for w in waits] == [errno.ECONNREFUSED] * 3
    assert probes[0] == ("10.77.0.1", 2049, nfsroot.PROBE_TIMEOUT)
    assert clock.now == 3 * nfsroot.RETRY_INTERVAL


def test_no_answer_within_the_timeout_fails_naming_the_cause() -> None:
    p = plan(parse_spec("nfs4:10.77.0.1:/srv/root"), CLIENT)
    clock = Clock()

    def silent(server: str, port: int, timeout: float) -> int | None:
        clock.now += timeout  # a connect that times out uses up its time
        return errno.ETIMEDOUT

    kernel = FakeKernel({})
    with pytest.raises(NfsMountError) as e:
        mount_nfs(p, "/newroot", 5, mount_fn=kernel, probe_fn=silent, clock=clock,
                  sleep=clock.sleep)
    assert (e.value.errno, e.value.answered, e.value.attempt) == (errno.ETIMEDOUT, False, None)
    assert 5 <= e.value.waited < 5 + nfsroot.PROBE_TIMEOUT
    assert kernel.calls == []
    what, checks = explain(p, e.value, f"{CLIENT}/24")
    assert what.startswith("NFS root 10.77.0.1:/srv/root: no answer from 10.77.0.1 on port "
                           "2049 within 5 s (Connection timed out)")
    assert any("TCP port 2049" in c for c in checks)


def failing(root: str, timeout: float, answers: dict[str, int]) -> tuple[Plan, NfsMountError,
                                                                         Clock]:
    """Mount root against a server that answers every probe and a kernel scripted by answers."""
    p = plan(parse_spec(root), CLIENT)
    clock = Clock()
    with pytest.raises(NfsMountError) as e:
        mount_nfs(p, "/newroot", timeout, mount_fn=FakeKernel(answers),
                  probe_fn=lambda *a: None, clock=clock, sleep=clock.sleep)
    return p, e.value, clock


def test_a_refusal_fails_at_once() -> None:
    p, error, clock = failing("nfs4:10.77.0.1:/srv/nope", 30, {"4.2": errno.ENOENT})
    assert (error.errno, error.answered, clock.sleeps) == (errno.ENOENT, True, [])
    what, checks = explain(p, error, f"{CLIENT}/24")
    assert what == "NFS root 10.77.0.1:/srv/nope: the server has no export /srv/nope " \
                   "(ENOENT, NFS 4.2)"
    assert not any("vers=3" in c for c in checks)  # nfs4: has no v3 to suggest
    what, checks = explain(plan(parse_spec("nfs:10.77.0.1:/srv/nope"), CLIENT), error, "")
    assert any("root=nfs:10.77.0.1:/srv/nope:vers=3" in c for c in checks)


def test_a_v3_side_channel_that_never_answers_is_retried_then_named() -> None:
    p, error, clock = failing("nfs:10.77.0.1:/srv/root:vers=3", 3, {"3": errno.ECONNREFUSED})
    assert error.answered and error.errno == errno.ECONNREFUSED
    assert clock.now == 3
    what, checks = explain(p, error, CLIENT)
    assert "answers on port 2049 but the NFSv3 mount did not get through" in what
    assert any("rpcbind" in c for c in checks)


@pytest.mark.parametrize(("err", "words"), [
    (errno.EACCES, "access denied by 10.77.0.1 (EACCES, NFS 4.2)"),
    (errno.EPERM, "access denied by 10.77.0.1 (EPERM, NFS 4.2)"),
    (errno.EPROTONOSUPPORT, "speaks none of the NFS versions tried (4.2, 4.1, 4.0)"),
    (errno.ENODEV, "the kernel has no NFS client"),
    (errno.EINVAL, "the kernel refused the mount options (EINVAL): vers=4.2,"),
    (errno.EIO, "Input/output error (EIO, NFS 4.2)"),
])
def test_every_failure_names_server_export_and_cause(err: int, words: str) -> None:
    p = plan(parse_spec("nfs4:10.77.0.1:/srv/root"), CLIENT)
    what, checks = explain(p, NfsMountError(err, True, p.attempts[0], 0.5), CLIENT)
    assert what.startswith("NFS root 10.77.0.1:/srv/root: ")
    assert words in what
    assert checks
    if err == errno.ENODEV:
        assert checks == ["rebuild the ramdisk with mkinitrd.ssi --add-modules nfsv4"]


def test_unreachable_network_points_at_the_missing_gateway() -> None:
    p = plan(parse_spec("nfs4:192.168.5.1:/srv/root"), CLIENT)
    what, checks = explain(p, NfsMountError(errno.ENETUNREACH, False, None, 30), "10.77.0.11/24")
    assert "no answer from 192.168.5.1" in what
    assert "the agent sets no gateway" in checks[0]


def test_refusals_and_retries() -> None:
    for err in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENODEV,
                errno.EPROTONOSUPPORT):
        assert nfsroot.is_refusal(err)
    for err in (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
                errno.EIO):
        assert not nfsroot.is_refusal(err)


def test_probe_tells_refused_from_answered() -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert nfsroot.probe("127.0.0.1", port, 1.0) is None
    assert nfsroot.probe("127.0.0.1", port, 1.0) == errno.ECONNREFUSED


def test_each_mount_gets_the_time_left_but_never_less_than_mount_timeout() -> None:
    p = plan(parse_spec("nfs4:10.77.0.1:/srv/root"), CLIENT)
    kernel = FakeKernel({"4.2": errno.ETIMEDOUT})
    clock = Clock()
    with pytest.raises(NfsMountError) as e:
        mount_nfs(p, "/newroot", 12, mount_fn=kernel, probe_fn=lambda *a: None, clock=clock,
                  sleep=clock.sleep)
    assert kernel.timeouts[0] == 12 and min(kernel.timeouts) == nfsroot.MOUNT_TIMEOUT
    # A silent NFS service behind an open port: retried, then named as such.
    assert (e.value.errno, e.value.answered) == (errno.ETIMEDOUT, True)
    what, _ = explain(p, e.value, CLIENT)
    assert what == ("NFS root 10.77.0.1:/srv/root: 10.77.0.1 accepts connections on port 2049 "
                    "but its NFS service did not reply within 12 s (NFS 4.2)")


def need_root() -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("mount needs root")


def test_bounded_mount_mounts_for_the_caller(tmp_path: Path) -> None:
    need_root()
    from linuxrc_agent.mounts import is_mountpoint
    from linuxrc_agent.syscalls import umount2

    nfsroot.bounded_mount("tmpfs", str(tmp_path), "tmpfs", 0, "mode=0700", 5.0)
    try:
        assert is_mountpoint(str(tmp_path))  # the child's mount is in our namespace
    finally:
        umount2(str(tmp_path))
    with pytest.raises(OSError) as e:
        nfsroot.bounded_mount("none", str(tmp_path / "absent"), "tmpfs", 0, "", 5.0)
    assert e.value.errno == errno.ENOENT


def test_bounded_mount_cuts_off_a_call_that_overstays(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    def hang(*args: object) -> None:
        time.sleep(30)  # what a server that never replies does to mount(2)

    monkeypatch.setattr(nfsroot, "mount", hang)  # the forked child runs this
    started = time.monotonic()
    with pytest.raises(OSError) as e:
        nfsroot.bounded_mount("10.77.0.1:/x", "/newroot", "nfs4", 0, "", 0.3)
    assert e.value.errno == errno.ETIMEDOUT
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("fstype", "version", "uid", "warned"), [
    ("nfs4", "4.2", 4294967294, True),  # what the kernel's client makes of a name (measured)
    ("nfs4", "4.1", 65534, True),  # an idmapper's nobody
    ("nfs4", "4.2", 0, False),
    ("nfs", "3", 4294967294, False),  # v3 carries numbers: a real owner there
])
def test_an_nfs4_root_owned_by_nobody_is_named(fstype: str, version: str, uid: int,
                                               warned: bool) -> None:
    note = nfsroot.owners_unmapped(nfsroot.Attempt(fstype, version, ""), uid)
    assert (note is not None) == warned
    if note is not None:
        assert f"uid {uid}" in note and "Only_Numeric_Owners" in note and "nfs:" in note
