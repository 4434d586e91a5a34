"""Console output: every line starts with `linuxrc:` so admins and tests can grep for it.

Writes go straight to fd 1 with os.write, one call per message: no buffering
that a crash or an exec could lose, and no interleaving of half lines with the
kernel's own messages. With `ssi.debug` each line carries the seconds since
the agent started (its exec as /init, not Python's later start), so the cost
of every step shows.
"""

from __future__ import annotations

import os
import sys
import time

PREFIX = "linuxrc:"
CONSOLE = "/dev/console"

_clock_start = time.clock_gettime(time.CLOCK_BOOTTIME)
_debug = False


def set_debug(on: bool) -> None:
    global _debug
    _debug = on


def debugging() -> bool:
    return _debug


def refine_start(kmsg: str = "/dev/kmsg") -> float:
    """Move the start back to the kernel's exec of /init; return the interpreter's start-up time.

    Python's clock starts after the PyInstaller bootloader and the
    interpreter have run, seconds later under emulation. /proc/1/stat cannot
    say when /init was exec'd (PID 1's start time is the fork of the kernel's
    init thread), but the kernel logs "Run /init as init process" with its
    timestamp (local_clock, since boot, as CLOCK_BOOTTIME).
    """
    global _clock_start
    started = _exec_time(kmsg)
    if started is None or not 0 < started <= _clock_start:
        return 0.0
    startup = _clock_start - started
    _clock_start = started
    return startup


def _exec_time(kmsg: str) -> float | None:
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    found = None
    try:
        while True:
            try:
                record = os.read(fd, 8192)  # one record per read: "prio,seq,usec,flags;text"
            except BlockingIOError:
                break
            except OSError:
                continue  # EPIPE: records overwritten while reading; go on with the next
            if not record:
                break
            # One record per read from /dev/kmsg; a plain file (tests) gives many at once.
            for line in record.split(b"\n"):
                head, _, text = line.partition(b";")
                if text.startswith(b"Run ") and text.endswith(b" as init process"):
                    found = int(head.split(b",")[2]) / 1e6
    except (ValueError, IndexError):
        return None
    finally:
        os.close(fd)
    return found


def elapsed() -> float:
    """Seconds since the agent started."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) - _clock_start


def uptime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _fd_ok(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def ensure_stdio(console: str = CONSOLE) -> bool:
    """Put the console on fds 0-2 if the kernel could not (no /dev/console in the archive).

    Returns whether stdio is usable. Called again after /dev is mounted.
    """
    if all(_fd_ok(fd) for fd in (0, 1, 2)):
        _fix_sys_streams()
        return True
    try:
        fd = os.open(console, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    for target in (0, 1, 2):
        if not _fd_ok(target):
            os.dup2(fd, target)
    if fd > 2:
        os.close(fd)
    _fix_sys_streams()
    return True


def _fix_sys_streams() -> None:
    # Python sets sys.stdout/err to None when it started with those fds closed;
    # tracebacks and the rescue shell need real streams.
    if sys.stdout is None:
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115


def _emit(text: str, marker: str = "") -> None:
    stamp = f"[{elapsed():7.3f}] " if _debug else ""
    lines = text.splitlines() or [""]
    # The marker (FATAL:, warning:) starts the first line only; the rest are its details.
    pad = " " * len(marker)
    data = "".join(f"{PREFIX} {stamp}{marker if i == 0 else pad}{line}\n"
                   for i, line in enumerate(lines))
    raw = data.encode("utf-8", "replace")
    try:
        while raw:
            raw = raw[os.write(1, raw):]
    except OSError:
        pass  # nowhere to print: never let output kill PID 1


def say(text: str) -> None:
    _emit(text)


def debug(text: str) -> None:
    if _debug:
        _emit(text)


def warn(text: str) -> None:
    _emit(text, "warning: ")


def fatal(text: str) -> None:
    _emit(text, "FATAL: ")
