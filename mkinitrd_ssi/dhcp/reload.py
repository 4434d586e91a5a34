"""mkdhcpd.ssi --reload: a changed, checked config applied the way each server supports,
without dropping leases (and never for an unchanged or rejected one: the caller only
gets here after the checker passed and the file was renamed into place).

- ISC dhcpd has no reload: it is restarted with the very argv it runs with, so it
  reads the same config path and the same lease file (-lf), which holds every lease
  it granted (hosts with fixed-address have no lease state to lose). Found by its
  pid file (-pf, default ROOT/run/dhcpd.pid), else the systemd unit
  isc-dhcp-server (`systemctl restart`, which keeps the lease file too).
- Kea: `config-reload` over the control socket named in the config's
  "control-socket" (unix); Kea re-reads its config file in place and keeps its
  lease database and process (the answer is Kea's own).
- dnsmasq: SIGHUP re-reads /etc/hosts, /etc/ethers, --dhcp-hostsfile,
  --dhcp-optsfile and --addn-hosts, but not the main config file, which is what
  mkdhcpd.ssi writes (its dhcp-host lines would stay as they were): so dnsmasq is
  restarted like dhcpd, with its argv; its --dhcp-leasefile keeps the leases.
  Found by its pid file (default ROOT/run/dnsmasq/dnsmasq.pid), else the systemd
  unit dnsmasq.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from mkinitrd_ssi.dhcp import Format
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.run import run, spawn

PID_FILES = {Format.ISC: "/run/dhcpd.pid", Format.DNSMASQ: "/run/dnsmasq/dnsmasq.pid"}
UNITS = {Format.ISC: "isc-dhcp-server", Format.DNSMASQ: "dnsmasq"}
BINARIES = {Format.ISC: "dhcpd", Format.DNSMASQ: "dnsmasq"}
# Leases where each restarted server keeps them when its argv does not say.
DEFAULT_LEASES = {Format.ISC: ("-lf", "/var/lib/dhcp/dhcpd.leases"),
                  Format.DNSMASQ: ("--dhcp-leasefile=", "/var/lib/misc/dnsmasq.leases")}
STOP_SECONDS = 10.0
KEA_SECONDS = 30.0


@dataclass(frozen=True)
class Running:
    pid: int
    argv: list[str]
    cwd: str
    env: dict[str, str]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has stopped serving


def _running(pid_file: Path, binary: str) -> Running | None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        argv = [a.decode(errors="surrogateescape") for a in
                Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
        cwd = os.readlink(f"/proc/{pid}/cwd")
        env = dict(item.decode(errors="surrogateescape").partition("=")[::2] for item in
                   Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
    except OSError:
        return None  # a stale pid file
    if not argv or Path(argv[0]).name != binary or not _alive(pid):
        return None  # the pid was reused by something else
    return Running(pid, argv, cwd, env)


def _leases(fmt: Format, argv: list[str]) -> str:
    flag, default = DEFAULT_LEASES[fmt]
    for index, arg in enumerate(argv):
        if flag.endswith("=") and arg.startswith(flag):
            return arg[len(flag):]
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
    return default


def _restart(fmt: Format, proc: Running, pid_file: Path) -> str:
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while _alive(proc.pid):
        if time.monotonic() > deadline:
            raise SsiError(f"{BINARIES[fmt]} (pid {proc.pid}) still runs {STOP_SECONDS:.0f} s "
                           "after SIGTERM; the new config is written but not applied",
                           hint=f"stop it yourself and start it again: {' '.join(proc.argv)}")
        time.sleep(0.05)
    # dhcpd refuses to start while its pid file names a process that exists, and a
    # stopped server its parent has not reaped yet still exists (a zombie).
    with contextlib.suppress(OSError):
        if int(pid_file.read_text().split()[0]) == proc.pid:
            pid_file.unlink()
    spawn(proc.argv, cwd=proc.cwd, env=proc.env)
    deadline = time.monotonic() + STOP_SECONDS
    while (new := _running(pid_file, BINARIES[fmt])) is None or new.pid == proc.pid:
        if time.monotonic() > deadline:
            raise SsiError(f"{BINARIES[fmt]} did not come back within {STOP_SECONDS:.0f} s "
                           f"of its restart ({pid_file} names no new process)",
                           hint=f"see its log; it was started as: {' '.join(proc.argv)}")
        time.sleep(0.05)
    return (f"restarted {BINARIES[fmt]} (pid {proc.pid} -> {new.pid}) with its own command "
            f"line; leases kept in {_leases(fmt, proc.argv)}")


def _systemd(unit: str) -> bool:
    result = run(["systemctl", "is-active", "--quiet", unit], check=False, capture=True) \
        if Path("/run/systemd/system").is_dir() else None
    return result is not None and result.returncode == 0


def restart_server(fmt: Format, pid_file: Path) -> str:
    """ISC dhcpd or dnsmasq: restarted with its own argv (pid file), else its unit."""
    proc = _running(pid_file, BINARIES[fmt])
    if proc is not None:
        return _restart(fmt, proc, pid_file)
    unit = UNITS[fmt]
    if _systemd(unit):
        run(["systemctl", "restart", unit])
        return f"restarted the systemd unit {unit} (it keeps its lease file)"
    raise SsiError(f"no running {BINARIES[fmt]} found: {pid_file} names no live "
                   f"{BINARIES[fmt]} and the systemd unit {unit} is not active; the new "
                   "config is written, start the server to use it",
                   hint="--pid-file FILE names the pid file the server writes")


def kea_socket(config: bytes) -> str:
    try:
        sock = json.loads(config)["Dhcp4"]["control-socket"]
    except (ValueError, KeyError, TypeError):
        sock = None
    if not isinstance(sock, dict) or sock.get("socket-type") != "unix" or not isinstance(
            sock.get("socket-name"), str):
        raise SsiError("the Kea config has no unix \"control-socket\": mkdhcpd.ssi cannot "
                       "ask Kea to reload; the new config is written",
                       hint='add to the proto\'s Dhcp4: "control-socket": {"socket-type": '
                       '"unix", "socket-name": "/run/kea/kea4-ctrl-socket"}')
    name: str = sock["socket-name"]
    return name


def kea_command(path: str, command: str) -> dict[str, object]:
    """One command over Kea's unix control socket (what kea-shell sends through the
    control agent), and Kea's answer."""
    request = json.dumps({"command": command}).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(KEA_SECONDS)
            s.connect(path)
            s.sendall(request)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
                try:  # Kea answers one JSON document and may keep the socket open
                    answer = json.loads(b"".join(chunks))
                    break
                except ValueError:
                    continue
            else:
                answer = json.loads(b"".join(chunks))
    except OSError as e:
        raise SsiError(f"Kea control socket {path}: {e.strerror or e}; the new config is "
                       "written but not applied", hint="is kea-dhcp4 running with this "
                       "config's control-socket?") from None
    except ValueError:
        raise SsiError(f"Kea control socket {path}: not a JSON answer") from None
    if isinstance(answer, list) and answer:
        answer = answer[0]
    if not isinstance(answer, dict):
        raise SsiError(f"Kea control socket {path}: unexpected answer {answer!r}")
    return answer


def kea_reload(config: bytes) -> str:
    path = kea_socket(config)
    answer = kea_command(path, "config-reload")
    if answer.get("result") != 0:
        raise SsiError(f"Kea refused config-reload: {answer.get('text')}; it keeps "
                       "serving its previous config", hint="see Kea's log")
    return f"Kea reloaded its config over {path} ({answer.get('text')}); leases kept"


def apply(fmt: Format, output: Path, pid_file: Path) -> str:
    """Make the running server use output; what was done, in one line."""
    if fmt is Format.KEA:
        return kea_reload(output.read_bytes())
    return restart_server(fmt, pid_file)
