"""The few system calls the standard library lacks, as thin ctypes wrappers over libc.

Each wrapper raises OSError with the real errno (and the path, where there is
one), so callers handle failures the way they handle `os` functions. What
`os` already offers (mknod, makedev, chroot, sync, execve) is used from `os`
directly; it is not wrapped again here.

x86_64 only, like the kernels the ramdisk is built for: `finit_module` has no
glibc wrapper in Debian 12 and goes through syscall(2) with its x86_64 number.
"""

from __future__ import annotations

import ctypes
import os

# mount(2) flags, from <linux/mount.h>.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# umount2(2) flags.
MNT_FORCE = 0x1
MNT_DETACH = 0x2

# reboot(2) commands, from <sys/reboot.h> (glibc's one-argument wrapper).
RB_AUTOBOOT = 0x01234567
RB_POWER_OFF = 0x4321FEDC
RB_HALT_SYSTEM = 0xCDEF0123

# finit_module(2) flags: MODULE_INIT_COMPRESSED_FILE lets a 6.4+ kernel
# decompress a .ko.xz/.ko.zst itself.
MODULE_INIT_IGNORE_MODVERSIONS = 1
MODULE_INIT_IGNORE_VERMAGIC = 2
MODULE_INIT_COMPRESSED_FILE = 4

SYS_FINIT_MODULE = 313  # x86_64

# statfs(2) f_type values the agent tells apart.
RAMFS_MAGIC = 0x858458F6
TMPFS_MAGIC = 0x01021994
EXT4_SUPER_MAGIC = 0xEF53  # ext2, ext3 and ext4 alike
MSDOS_SUPER_MAGIC = 0x4D44  # FAT (vfat, msdos)

_libc = ctypes.CDLL(None, use_errno=True)

_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_libc.reboot.argtypes = (ctypes.c_int,)
_libc.statfs.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
_libc.syncfs.argtypes = (ctypes.c_int,)
_libc.syscall.restype = ctypes.c_long


def _fail(what: str | None = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err), what) if what else OSError(err, os.strerror(err))


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        raise _fail(target)


def umount2(target: str, flags: int = 0) -> None:
    if _libc.umount2(_b(target), flags) != 0:
        raise _fail(target)


def finit_module(fd: int, params: str = "", flags: int = 0) -> None:
    """Load the kernel module open on `fd`; EEXIST means it is already loaded."""
    rc = _libc.syscall(ctypes.c_long(SYS_FINIT_MODULE), ctypes.c_int(fd),
                       ctypes.c_char_p(params.encode()), ctypes.c_int(flags))
    if rc != 0:
        raise _fail()


def sethostname(name: str) -> None:
    raw = name.encode()
    if _libc.sethostname(raw, len(raw)) != 0:
        raise _fail()


def reboot(cmd: int = RB_AUTOBOOT) -> None:
    """Reboot (or power off) at once; the caller syncs first. Returns only on error."""
    if _libc.reboot(ctypes.c_int(cmd - (1 << 32) if cmd >= 1 << 31 else cmd)) != 0:
        raise _fail()


def syncfs(fd: int) -> None:
    """Write back everything of the filesystem holding fd and flush the disk's cache."""
    if _libc.syncfs(fd) != 0:
        raise _fail()


def fs_magic(path: str) -> int:
    """statfs(2) f_type of the filesystem holding `path` (os.statvfs lacks it)."""
    # struct statfs is 120 bytes on x86_64; f_type is its first field (a long).
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(_b(path), buf) != 0:
        raise _fail(path)
    return int.from_bytes(buf.raw[:8], "little") & 0xFFFFFFFF
