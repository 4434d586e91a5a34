"""The boot sequence: stage order, ssi.break, failure -> rescue shell -> retry, or reboot."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from linuxrc_agent import main, rescue
from linuxrc_agent.cmdline import parse
from linuxrc_agent.main import STAGES, Boot, BootError, Stage, run


class Rebooted(Exception):
    pass


class Fakes:
    """Stages that log their runs and fail on demand; a shell and a reboot that log too."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[str] = []
        self.failures: dict[str, int] = {}  # stage -> how many times it fails first
        self.shell_present = True
        monkeypatch.setattr(main, "STAGES", tuple((s, self.stage(s)) for s, _ in STAGES))
        monkeypatch.setattr(rescue, "run_shell", self.shell)
        monkeypatch.setattr(rescue, "reboot_after", self.reboot)

    def stage(self, s: Stage) -> Callable[[Boot], None]:
        def step(boot: Boot) -> None:
            self.log.append(s.value)
            if self.failures.get(s.value, 0):
                self.failures[s.value] -= 1
                if s is Stage.NETWORK:
                    raise RuntimeError("a bug")
                raise BootError(f"{s.value} broke", ["look here"], ["saw this"])
        return step

    def shell(self, why: str) -> bool:
        self.log.append(f"shell: {why}")
        return self.shell_present

    def reboot(self, delay: float = 0) -> None:
        self.log.append("reboot")
        raise Rebooted


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    return Fakes(monkeypatch)


def boot_with(text: str = "") -> Boot:
    b = Boot()
    b.cmdline = parse(text)
    return b


ALL = [s.value for s in Stage]


def test_stages_in_the_documented_order() -> None:
    assert [s for s, _ in STAGES] == list(Stage)
    assert ALL == ["mount_api", "cmdline", "modules", "devices", "identity", "network", "root",
                   "sync", "node_env", "switch_root"]
    for stage in Stage:
        assert stage.value in (main.__doc__ or "").lower().replace(" ", "_") or \
            stage.name in (main.__doc__ or "")


def test_a_clean_boot_runs_every_stage_once(fakes: Fakes) -> None:
    run(boot_with())
    assert fakes.log == ALL


def test_break_opens_the_shell_before_the_stage(fakes: Fakes) -> None:
    run(boot_with("ssi.break=root,modules"))
    calls = fakes.log
    i = calls.index("root")
    assert calls[i - 1] == "shell: before stage root (ssi.break)"
    assert calls[calls.index("modules") - 1] == "shell: before stage modules (ssi.break)"
    assert [c for c in calls if not c.startswith("shell")] == ALL


def test_failure_opens_the_shell_and_retries(fakes: Fakes,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    fakes.failures["devices"] = 2
    run(boot_with())
    calls = fakes.log
    assert calls[calls.index("devices"):calls.index("identity")] == [
        "devices", "shell: stage devices failed; fix it, then exit to retry",
        "devices", "shell: stage devices failed; fix it, then exit to retry", "devices"]
    out = capfd.readouterr().out
    assert "linuxrc: FATAL: devices: devices broke\n" in out
    assert "linuxrc:   saw this\nlinuxrc:   check: look here\n" in out
    assert "linuxrc: retrying stage devices\n" in out


def test_failure_without_a_shell_reboots(fakes: Fakes) -> None:
    fakes.shell_present = False
    fakes.failures["root"] = 1
    with pytest.raises(Rebooted):
        run(boot_with())
    assert fakes.log[-3:] == ["root", "shell: stage root failed; fix it, then exit to retry",
                          "reboot"]


def test_unexpected_exceptions_are_failures_too(fakes: Fakes,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    fakes.failures["network"] = 1
    run(boot_with())
    out = capfd.readouterr().out
    assert "linuxrc: FATAL: network: RuntimeError: a bug" in out
    assert "Traceback" in out
    assert fakes.log.count("network") == 2


def test_main_refuses_to_run_unless_pid_1(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main.main()
    assert e.value.code == 1
    assert "not PID 1" in capfd.readouterr().out


def test_mount_errors_name_their_remedy() -> None:
    assert "--add-modules xfs" in main._mount_checks(errno.ENODEV, "/dev/vda", "xfs", "")[0]
    einval = main._mount_checks(errno.EINVAL, "/dev/vda", "ext4", "bogus=1")
    assert any("rootflags=bogus=1" in c for c in einval)


def test_breaks_before_early_stages_move_to_the_first_possible(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(main.cmdline_mod, "read",
                        lambda: parse("ssi.break=cmdline,root,nosuch,mount_api"))
    boot = Boot()
    main.parse_cmdline(boot)
    assert boot.cmdline.breaks == ("modules", "root")
    out = capfd.readouterr().out
    assert "ssi.break=nosuch: no such stage" in out
    assert "stopping before modules instead" in out


def test_an_nfs_root_waits_for_no_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from linuxrc_agent import partitions

    def no_wait(*args: object) -> None:
        raise AssertionError("waited for a device")

    monkeypatch.setattr(partitions, "wait_for", no_wait)
    monkeypatch.setattr(main.Scanner, "devices", lambda self: [])
    boot = boot_with("root=nfs4:10.77.0.1:/srv/ssiroot:timeo=14")
    main.wait_devices(boot)
    assert boot.nfs is not None and boot.nfs.source == "10.77.0.1:/srv/ssiroot"
    assert boot.root is None
    with pytest.raises(BootError, match="SERVER 'server' is not an IPv4 address"):
        main.wait_devices(boot_with("root=nfs:server:/srv/ssiroot"))


def test_an_nfs_failure_names_server_export_and_cause(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from dataclasses import replace

    from linuxrc_agent import nfsroot

    boot = boot_with("root=nfs4:10.77.0.1:/srv/nope ssi.overlay=tmpfs")
    boot.nfs = nfsroot.parse_spec("nfs4:10.77.0.1:/srv/nope")
    boot.node = replace(boot.node, ip="10.77.0.11", prefix=24)
    seen: list[tuple[str, int]] = []

    def refuse(p: nfsroot.Plan, target: str, timeout: float, **kw: object) -> nfsroot.Attempt:
        seen.append((target, p.flags))
        raise nfsroot.NfsMountError(errno.ENOENT, True, p.attempts[0], 0.1)

    monkeypatch.setattr(nfsroot, "mount_nfs", refuse)
    monkeypatch.setattr(main.os, "makedirs", lambda *a, **kw: None)
    monkeypatch.setattr(main.mounts, "is_mountpoint", lambda path: False)
    with pytest.raises(BootError) as e:
        main.mount_root(boot)
    assert e.value.what == ("NFS root 10.77.0.1:/srv/nope: the server has no export /srv/nope "
                            "(ENOENT, NFS 4.2)")
    # Under the overlay the export is the read-only lower layer, mounted aside.
    assert seen == [("/run/ssi/lower", main.MS_RDONLY)]
