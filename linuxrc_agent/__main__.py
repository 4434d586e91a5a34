"""/init of the ramdisk (PyInstaller's entry script): absolute import, so it runs frozen too."""

import time

# Before any of the agent's imports: ssi.debug shows what importing them costs.
IMPORT_START = time.clock_gettime(time.CLOCK_BOOTTIME)

from linuxrc_agent.main import main  # noqa: E402

main(IMPORT_START)
