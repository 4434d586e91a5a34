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
SHELL_ENV = {"PATH": "/bin:/sbin:/usr/bin:/usr/sbin", "PS1": "(linuxrc rescue) \\w # "}


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


def run_shell(why: str, shell: str = SHELL) -> bool:
    """Run the rescue shell as a child and wait for it; False when there is none."""
    if not shell_available(shell):
        return False
    console.say(f"rescue shell: {why}")
    console.say("rescue shell: type 'exit' to continue booting, 'reboot -f' to reboot")
    tty = console_tty()
    env = proc.clean_env(SHELL_ENV)
    import fcntl  # here, not at import: only the rescue path needs it

    try:
        pid = os.fork()
    except OSError as e:
        console.warn(f"cannot start the rescue shell: {e.strerror}")
        return False
    if pid == 0:  # the child: never return into the agent's code
        try:
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
        finally:
            os._exit(127)
    # Wait for our own child only: a waitpid(-1) here would steal the exit
    # status of children the rest of the agent waits for.
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    console.say(f"rescue shell exited ({code})")
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
