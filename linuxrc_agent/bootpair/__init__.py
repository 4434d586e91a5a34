"""The local boot partition: a kernel + ramdisk pair and the bootloader config naming it.

    engine.py    sync_boot_dir: the bootloader-agnostic commit engine
    extlinux.py  the extlinux config writer/parser (one module per bootloader)
    esp.py       UEFI: an ESP's grub.cfg (extlinux's layout), shim and GRUB installed,
                 sync_boot_partition (the one entry point: extlinux or ESP)
    manifest.py  the pair's manifest (JSON): the one reader and writer
    fileops.py   FsOps (the fault-injection seam), O_NOATIME reads, hashing
    kargs.py     the kernel arguments a local entry persists
    pair.py      the records (FileId, PairMember, LocalPair) and the Bootloader protocol

The agent imports this package only for nodes with the local boot flag
(xxhash and pathlib cost a thin node boot time); nothing is imported here.
The commit protocol and why it is crash-safe: docs/architecture.md, "The
local boot partition: commit protocol".
"""
