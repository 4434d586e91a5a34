"""PyInstaller runtime hook of the frozen agent (see freeze.py): the first Python code that
runs after PyInstaller's bootstrap, so it notes when that was (CLOCK_BOOTTIME). ssi.debug
and SSI_STARTUP_PROBE split the agent's start-up there: before it, the bootloader,
libpython's dynamic linking, the interpreter's initialisation and PyInstaller's bootstrap;
after it, the other runtime hooks and the entry script."""

import sys
import time

# Not a declared attribute of sys (mypy), hence setattr; read with getattr by the agent.
setattr(sys, "_ssi_first_code", time.clock_gettime(time.CLOCK_BOOTTIME))  # noqa: B010
