"""The ways out when booting cannot go on: a rescue shell, or a reboot after a delay.

PID 1 must never exit (the kernel would panic), so neither function lets an
exception out, and `reboot_after` never returns.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import NoReturn

from linuxrc_agent import console, devnodes, proc
from linuxrc_agent.syscalls import RB_AUTOBOOT, reboot

SHELL = "/bin/sh"
REBOOT_DELAY = 10.0
TIOCSCTTY = 0x540E  # x86_64 ioctl number
# An interactive ash reads $ENV: the prompt and the hints live in the image's /etc/profile
# (ramdisk_skel/), where an admin can replace them (ROOT/etc/ssi/ramdisk.d/etc/profile).
SHELL_ENV = {"PATH": "/bin:/sbin:/usr/bin:/usr/sbin", "ENV": "/etc/profile"}


def shell_available(shell: str = SHELL) -> bool:
    return os.access(shell, os.X_OK)


def console_tty(active: str = "/sys/class/tty/console/active") -> str:
    """The real terminal behind /dev/console (the last `console=`), which can be a controlling tty.

    /dev/console cannot: a shell on it has no job control and Ctrl-C does
    not reach its commands. busybox's cttyhack does the same lookup.
    """
    try:
        with open(active) as f:
            names = f.read().split()
    except OSError:
        names = []
    if names:
        path = devnodes.ensure_from_sysfs(names[-1])
        if path is not None:
            return path
    return console.CONSOLE


def run_shell(why: str, shell: str = SHELL, tty: str | None = None) -> bool:
    """Run the rescue shell on the console as a child and wait for it; False when there is
    none or it cannot start."""
    if not shell_available(shell):
        return False
    console.say(f"rescue shell: {why}")
    console.say("rescue shell: type 'exit' to continue booting, 'reboot -f' to reboot")
    tty = tty or console_tty()
    env = proc.clean_env(SHELL_ENV)
    import fcntl  # here, not at import: only the rescue path needs it

    # The child reports a failed exec through this pipe; a successful exec closes it.
    # (An exit status cannot tell: `exit` after a mistyped command also gives 127.)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as e:
        os.close(report_r)
        os.close(report_w)
        console.warn(f"cannot start the rescue shell: {e.strerror}")
        return False
    if pid == 0:  # the child: never return into the agent's code
        try:
            os.close(report_r)
            proc.reset_signals()
            os.setsid()
            fd = os.open(tty, os.O_RDWR)
            with contextlib.suppress(OSError):  # no job control, but a shell all the same
                fcntl.ioctl(fd, TIOCSCTTY, 1)
            for target in (0, 1, 2):
                os.dup2(fd, target)
            if fd > 2:
                os.close(fd)
            os.execve(shell, ["sh"], env)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.write(report_w, f"{e.filename or shell}: {e.strerror}".encode())
        finally:
            os._exit(127)
    os.close(report_w)
    with os.fdopen(report_r, "rb") as report:
        failure = report.read().decode(errors="replace")
    # Wait for our own child only: a waitpid(-1) here would steal the exit
    # status of children the rest of the agent waits for.
    _, status = os.waitpid(pid, 0)
    if failure:
        console.warn(f"cannot start the rescue shell: {failure}")
        return False
    console.say(f"rescue shell exited ({os.waitstatus_to_exitcode(status)})")
    return True


def reboot_after(delay: float = REBOOT_DELAY) -> NoReturn:
    """Sync, wait `delay` seconds, reboot. Never returns, even if reboot(2) fails."""
    console.say(f"rebooting in {delay:.0f} s")
    try:
        os.sync()
        time.sleep(delay)
        reboot(RB_AUTOBOOT)
    except BaseException as e:
        console.fatal(f"reboot failed: {e}; halting here")
    while True:
        time.sleep(3600)
