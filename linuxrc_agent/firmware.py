"""Which firmware started this machine, and whether Secure Boot is on.

UEFI leaves /sys/firmware/efi; BIOS does not. Secure Boot is the one-byte
value of the EFI global variable SecureBoot, read through efivarfs (mounted
here if the kernel has it; the ramdisk carries its module). The same file
behind the 4 bytes of attributes is what `mokutil --sb-state` reads.
"""

from __future__ import annotations

import os

from linuxrc_agent.syscalls import MS_NODEV, MS_NOEXEC, MS_NOSUID, mount

EFI_DIR = "/sys/firmware/efi"
EFIVARS = EFI_DIR + "/efivars"
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


def kind(efi_dir: str = EFI_DIR) -> str:
    return "uefi" if os.path.isdir(efi_dir) else "bios"


def ensure_efivarfs(efivars: str = EFIVARS) -> bool:
    """efivarfs mounted on efivars (mounting it if needed); False where it cannot be."""
    if os.path.isfile(os.path.join(efivars, SECURE_BOOT_VAR)):
        return True
    try:
        mount("efivarfs", efivars, "efivarfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    except OSError:
        return False
    return True


def secure_boot(efivars: str = EFIVARS) -> bool:
    try:
        with open(os.path.join(efivars, SECURE_BOOT_VAR), "rb") as f:
            data = f.read(8)
    except OSError:
        return False
    return len(data) >= 5 and data[4] == 1
