"""Process state of PID 1: its signals, and what it hands to the programs it execs.

Python changes signal dispositions at start (SIGPIPE and SIGXFSZ ignored,
SIGINT raising KeyboardInterrupt) and the PyInstaller bootloader adds
LD_LIBRARY_PATH and _PYI_* variables. Ignored signals and the environment
survive exec, so both are put back to what a fresh init or shell expects.
"""

from __future__ import annotations

import contextlib
import os
import signal

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_RESET = ("SIGINT", "SIGPIPE", "SIGXFSZ", "SIGQUIT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")


def as_pid1() -> None:
    """Ignore SIGINT: the kernel sends it to PID 1 on Ctrl-Alt-Del, and a
    KeyboardInterrupt in the middle of a mount would end the boot."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def reset_signals() -> None:
    """Default dispositions and an empty mask, for a child before exec."""
    for name in _RESET:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A fresh environment: HOME, TERM (the kernel's), PATH; nothing of PyInstaller's."""
    env = {"HOME": "/", "TERM": os.environ.get("TERM", "linux"), "PATH": DEFAULT_PATH}
    env.update(extra or {})
    return env
