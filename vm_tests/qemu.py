"""QEMU nodes for the boot tests: TCG only (KVM guests hang on this machine).

A Vm's serial console goes to a log file, which the tests read to decide by
markers the guest prints, never by sleeping. Every Vm is killed on exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Printed by the shared root's test init (see images.py) and by the agent.
INIT_MARKER = "SSI-INIT-REACHED"
ENV_BEGIN = "SSI-NODE-ENV-BEGIN"
ENV_END = "SSI-NODE-ENV-END"
CMDLINE_MARKER = "SSI-PROC-CMDLINE:"  # then the shared root's /proc/cmdline, one line


class BootTimeout(AssertionError):
    pass


@dataclass
class Disk:
    path: Path
    interface: str = "virtio"
    fmt: str = "raw"
    extra: str = ""  # e.g. ",readonly=on" or a blkdebug spec
    bootindex: int | None = None  # UEFI: OVMF boots this disk first (it follows bootindex)

    def arg(self) -> str:
        return f"file={self.path},format={self.fmt},if={self.interface}{self.extra}"

    def argv(self, n: int) -> list[str]:
        """QEMU's options for this disk, the n-th of its machine."""
        if self.bootindex is None:
            return ["-drive", self.arg()]
        return ["-drive", f"file={self.path},format={self.fmt},if=none,id=disk{n}{self.extra}",
                "-device", f"virtio-blk-pci,drive=disk{n},bootindex={self.bootindex}"]


OVMF_DIR = Path("/usr/share/OVMF")  # Debian's ovmf


@dataclass(frozen=True)
class Uefi:
    """OVMF instead of SeaBIOS: its code read-only, and this machine's own copy of the
    variable store (boot entries are written there). With secure_boot: the Secure Boot
    build, Microsoft's keys enrolled (the .ms variables), SMM guarding the store."""

    vars: Path
    secure_boot: bool = False

    @classmethod
    def fresh(cls, vars_copy: Path, secure_boot: bool = False) -> Uefi:
        template = "OVMF_VARS_4M.ms.fd" if secure_boot else "OVMF_VARS_4M.fd"
        shutil.copyfile(OVMF_DIR / template, vars_copy)
        return cls(vars_copy, secure_boot)

    def argv(self) -> list[str]:
        code = OVMF_DIR / ("OVMF_CODE_4M.secboot.fd" if self.secure_boot else "OVMF_CODE_4M.fd")
        machine = ["-machine", "q35,smm=on", "-global",
                   "driver=cfi.pflash01,property=secure,value=on"] if self.secure_boot \
            else ["-machine", "q35"]
        return [*machine, "-drive", f"if=pflash,format=raw,unit=0,file={code},readonly=on",
                "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}"]


@dataclass
class Nic:
    mac: str
    netdev: str = "user"  # "user", or "tap,ifname=TAP,script=no,downscript=no"
    model: str = "virtio-net-pci"


@dataclass
class VmConfig:
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    disks: list[Disk] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    memory_mb: int = 1024
    netboot: bool = False  # -boot n: the NIC's iPXE ROM
    netns: str | None = None  # run QEMU inside this network namespace (tap devices)
    uefi: Uefi | None = None  # None: SeaBIOS
    extra: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", str(self.memory_mb),
                "-nodefaults", "-display", "none", "-no-reboot",
                "-serial", "stdio", "-monitor", "none"]
        if self.kernel is not None:
            argv += ["-kernel", str(self.kernel)]
            if self.initrd is not None:
                argv += ["-initrd", str(self.initrd)]
            argv += ["-append", self.append]
        if self.uefi is not None:
            argv += self.uefi.argv()
        for n, disk in enumerate(self.disks):
            argv += disk.argv(n)
        if not self.nics:
            argv += ["-nic", "none"]
        for i, nic in enumerate(self.nics):
            # The iPXE ROM on the NIC that netboots a BIOS machine; under UEFI no ROM:
            # OVMF's own PXE runs, as on real hardware (and shim fails under iPXE's).
            # OVMF follows bootindex, not -boot.
            boots = self.netboot and i == 0
            rom = "" if boots and self.uefi is None else ",romfile="
            rom += ",bootindex=1" if boots and self.uefi is not None else ""
            argv += ["-netdev", f"{nic.netdev},id=n{i}",
                     "-device", f"{nic.model},netdev=n{i},mac={nic.mac}{rom}"]
        if self.netboot and self.uefi is None:
            argv += ["-boot", "n"]
        argv += self.extra
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv


class Vm:
    """A running QEMU; use as a context manager so it is always killed."""

    def __init__(self, config: VmConfig, log: Path) -> None:
        self.config = config
        self.log = log
        self.started = time.monotonic()
        # The serial console is QEMU's stdio: output straight into the log file,
        # input from a pipe so a test can type into a rescue shell.
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(config.argv(), stdin=subprocess.PIPE, stdout=out,
                                         stderr=subprocess.PIPE, start_new_session=True)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def send(self, text: str) -> None:
        """Type into the serial console (e.g. a command for the rescue shell)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def output(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        """Wait until the console shows `pattern` (a regex); fail with the console tail."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()
            match = regex.search(text)
            if match:
                return match
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise BootTimeout(f"QEMU exited ({self.proc.returncode}) before {pattern!r}\n"
                                  f"{err}\n--- console ---\n{text[-4000:]}")
            if time.monotonic() > deadline:
                raise BootTimeout(f"no {pattern!r} within {timeout} s\n--- console ---\n"
                                  f"{text[-4000:]}")
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BootTimeout(f"QEMU still running after {timeout} s\n--- console ---\n"
                              f"{self.output()[-4000:]}") from None

    def proc_cmdline(self, timeout: float = 120.0) -> str:
        """The kernel command line as the booted node's /proc/cmdline holds it."""
        return self.wait_for(f"{CMDLINE_MARKER} ([^\r\n]*)", timeout).group(1)

    def node_env(self, timeout: float = 120.0) -> dict[str, str]:
        """The /run/ssi/node.env the shared root's test init printed."""
        match = self.wait_for(f"(?s){ENV_BEGIN}\\r?\\n(.*?){ENV_END}", timeout)
        return parse_env(match.group(1))


def parse_env(text: str) -> dict[str, str]:
    import shlex

    env: dict[str, str] = {}
    for line in text.replace("\r", "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            words = shlex.split(value) if value else [""]
            env[key] = words[0] if words else ""
    return env


@contextlib.contextmanager
def boot(config: VmConfig, log: Path) -> Iterator[Vm]:
    with Vm(config, log) as vm:
        yield vm


def console_args(extra: Sequence[str] = ()) -> str:
    return " ".join(["console=ttyS0", "panic=-1", "quiet", *extra])
