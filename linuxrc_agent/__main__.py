"""/init of the ramdisk (PyInstaller's entry script): absolute import, so it runs frozen too."""

from linuxrc_agent.main import main

main()
