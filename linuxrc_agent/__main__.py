"""/init of the ramdisk (PyInstaller's entry script): absolute import, so it runs frozen too."""

import os
import time

# Before any of the agent's imports: ssi.debug shows what importing them costs.
IMPORT_START = time.clock_gettime(time.CLOCK_BOOTTIME)

try:
    from linuxrc_agent.main import main
except BaseException as e:  # a broken build (a module left out of the freeze, say)
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

main(IMPORT_START)
