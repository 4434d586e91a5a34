"""Filesystem images for the boot tests, made without root (mkfs -d).

The shared root is a tiny tree whose /sbin/init prints a marker and the
agent's /run/ssi/node.env, then powers the VM off: a test knows the boot
reached the shared root, and what the agent decided, from the console alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from linuxrc_agent.bootpair.esp import LOADERS as ESP_LOADERS
from mkinitrd_ssi.run import run
from vm_tests.qemu import CMDLINE_MARKER, ENV_BEGIN, ENV_END, INIT_MARKER

BUSYBOX = Path("/bin/busybox")

TEST_INIT = f"""#!/bin/busybox sh
# Test init of the shared root: report what the agent left behind, then power off.
/bin/busybox mount -t proc proc /proc 2>/dev/null
echo "{INIT_MARKER} pid=$$"
echo "{CMDLINE_MARKER} $(/bin/busybox cat /proc/cmdline)"
echo "{ENV_BEGIN}"
/bin/busybox cat /run/ssi/node.env
echo "{ENV_END}"
/bin/busybox sync
/bin/busybox poweroff -f
"""


def shared_root_tree(
    tree: Path,
    *,
    kernel: Path | None = None,
    initrd: Path | None = None,
    init: str | None = TEST_INIT,
) -> Path:
    """A minimal shared root: busybox, a test init, and optionally /boot's default pair."""
    for name in ("bin", "sbin", "proc", "sys", "dev", "run", "tmp", "boot", "etc"):
        (tree / name).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    # shim and signed GRUB at Debian's paths, as a shared root with shim-signed and
    # grub-efi-amd64-signed holds them: the agent installs them into an empty ESP.
    for _target, path, _required in ESP_LOADERS:
        if Path(path).is_file():
            (tree / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tree / path.lstrip("/"))
    (tree / "bin" / "sh").unlink(missing_ok=True)
    (tree / "bin" / "sh").symlink_to("busybox")
    if init is not None:
        (tree / "sbin" / "init").write_text(init)
        (tree / "sbin" / "init").chmod(0o755)
    if kernel is not None:
        shutil.copyfile(kernel, tree / "boot" / "vmlinuz")
    if initrd is not None:
        shutil.copyfile(initrd, tree / "boot" / "initrd.img")
    return tree


def ext4_image(
    image: Path,
    tree: Path,
    *,
    size_mb: int = 64,
    label: str | None = None,
    uuid: str | None = None,
) -> Path:
    """An ext4 filesystem image holding `tree` (mkfs.ext4 -d, no root needed)."""
    image.unlink(missing_ok=True)
    argv = ["mkfs.ext4", "-q", "-F", "-d", str(tree)]
    if label:
        argv += ["-L", label]
    if uuid:
        argv += ["-U", uuid]
    run([*argv, str(image), f"{size_mb}M"])
    return image


def blank_image(image: Path, size_mb: int) -> Path:
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    return image
