"""/init of the ramdisk (PyInstaller's entry script): absolute import, so it runs frozen too.

SSI_STARTUP_PROBE (never honoured as PID 1, so a word on the kernel command line cannot
stop a boot): print when the start-up reached each step and exit before main, after
importing the comma-separated modules it names. The freeze checks the frozen tree with
it (every module of the agent and all they import, mkinitrd_ssi/initrd/freeze.py) and
bench/profile_start.py times the start-up with it, inside the guest.
"""

import os
import time

# Before any of the agent's imports: ssi.debug shows what importing them costs.
IMPORT_START = time.clock_gettime(time.CLOCK_BOOTTIME)
_PROBE = os.environ.get("SSI_STARTUP_PROBE") if os.getpid() != 1 else None


def _say(text: str) -> None:
    os.write(1, f"ssi-startup-probe {text}\n".encode())


try:
    from linuxrc_agent.main import main
except BaseException as e:  # a broken build (a module left out of the freeze, say)
    if _PROBE is not None:
        _say(f"missing linuxrc_agent.main: {type(e).__name__}: {e}")
        os._exit(3)
    # PID 1 must not exit: say why, then hand the console to a shell, or wait forever.
    os.write(1, f"linuxrc: FATAL: the agent cannot start: {type(e).__name__}: {e}\n"
                "linuxrc: rebuild the ramdisk with mkinitrd.ssi; rescue shell\n".encode())
    import contextlib
    import signal

    with contextlib.suppress(OSError):
        os.execve("/bin/sh", ["sh"], {"PATH": "/bin:/sbin", "HOME": "/"})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-Alt-Del must not end PID 1
    while True:
        time.sleep(3600)


def _startup_probe(names: str) -> None:
    imported = time.clock_gettime(time.CLOCK_BOOTTIME)
    import importlib
    import sys

    # CLOCK_BOOTTIME stamps; realtime - now converts them to the shell's $EPOCHREALTIME.
    first = getattr(sys, "_ssi_first_code", 0.0)  # set by the freeze's runtime hook
    now, realtime = time.clock_gettime(time.CLOCK_BOOTTIME), time.time()
    _say(f"times first_code={first:.6f} import_start={IMPORT_START:.6f} "
         f"imported={imported:.6f} now={now:.6f} realtime={realtime:.6f}")
    failed = False
    for name in filter(None, names.split(",")):
        try:
            importlib.import_module(name)
        except Exception as e:
            _say(f"missing {name}: {type(e).__name__}: {e}")
            failed = True
    os._exit(3 if failed else 0)  # no interpreter finalisation: it is not start-up


if _PROBE is not None:
    _startup_probe(_PROBE)
main(IMPORT_START)
