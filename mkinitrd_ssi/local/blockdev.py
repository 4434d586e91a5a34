"""Block devices on a running machine (the admin side): the one a bootdev names,
what a device holds, and who uses it.

Finding LABEL=, UUID= and PARTUUID=: where udev runs, its database already
holds what blkid read from every block device (ID_FS_LABEL, ID_FS_UUID,
ID_PART_ENTRY_UUID), kept current by udev's watch on each device; pyudev
reads it without opening a disk. Where udev does not run (a container, a
chroot, a rescue system) there is no database, or a stale one left in
/run/udev: the agent's own reader of /proc/partitions and superblocks
answers, exactly as at boot. Either way the agent's matching rules decide
(FAT labels in any case, UUIDs in any case), and of several matches the
first in /proc/partitions wins, as at boot.

The agent itself uses neither pyudev nor blkinfo: there is no udev daemon in
the ramdisk, so no database; blkinfo runs lsblk; and every import costs boot
time.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from linuxrc_agent.partitions import BlockDev, Probed, Scanner, matches
from linuxrc_agent.probe import HEAD_SIZE, Filesystem, partition_table, probe, read_at
from linuxrc_agent.ssitab import BootDev, BootDevKind
from linuxrc_agent.units import human_size
from mkinitrd_ssi.initrd.rootfs import unescape_mount_field
from mkinitrd_ssi.run import log

UDEV_RUN = Path("/run/udev")
_ENC_RE = re.compile(rb"\\x([0-9a-fA-F]{2})")


# ---------------------------------------------------------------- finding a bootdev


def udev_unavailable(run_dir: Path = UDEV_RUN) -> str | None:
    """None when udev's database can be trusted here; else why not, in words.

    udevd leaves its control socket and database behind when it stops, so the
    test is whether something listens on the socket, not whether it exists.
    """
    control = run_dir / "control"
    if not control.exists():
        return f"no {control}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(str(control))
    except ConnectionRefusedError:
        return f"nothing listens on {control} (udevd has stopped)"
    except PermissionError:
        pass  # root's socket, there to be refused to us: udevd runs
    except OSError as e:
        return f"{control}: {e.strerror}"
    finally:
        sock.close()
    try:
        empty = not any((run_dir / "data").iterdir())
    except OSError:
        empty = True
    return f"{run_dir / 'data'} is empty" if empty else None


def udev_decode(props: Mapping[str, str], key: str) -> str:
    """A property as blkid read it: ID_FS_LABEL has blanks and odd characters
    replaced ('my boot' -> 'my_boot'); its _ENC twin keeps them as \\xNN."""
    enc = props.get(key + "_ENC")
    if enc is None:
        return props.get(key, "")
    raw = _ENC_RE.sub(lambda m: bytes([int(m.group(1), 16)]), enc.encode("utf-8",
                                                                        "surrogateescape"))
    return raw.decode("utf-8", "replace")


def from_udev(dev: BlockDev, props: Mapping[str, str]) -> Probed:
    """What udev's database says of one device, in the agent's terms."""
    fstype = props.get("ID_FS_TYPE", "")
    fs = Filesystem(fstype, udev_decode(props, "ID_FS_UUID"),
                    udev_decode(props, "ID_FS_LABEL")) if fstype else None
    disk = props.get("DEVTYPE") == "disk"
    return Probed(dev, fs, "" if disk else props.get("ID_PART_ENTRY_UUID", ""),
                  props.get("ID_PART_TABLE_TYPE", "") if disk else "")


def _udev_devices() -> list[Probed]:
    import pyudev  # type: ignore[import-untyped]  # only here: udev runs on this machine

    found = []
    for device in pyudev.Context().list_devices(subsystem="block"):
        node, number = device.device_node, device.device_number
        if not node:
            continue
        try:
            size = int(device.attributes.asstring("size")) * 512
        except (KeyError, ValueError):
            size = 0
        dev = BlockDev(str(device.sys_name), os.major(number), os.minor(number), size, str(node))
        found.append(from_udev(dev, dict(device.properties)))
    return found


def _in_kernel_order(found: Iterable[Probed], scanner: Scanner) -> list[Probed]:
    order = {d.name: i for i, d in enumerate(scanner.devices())}
    return sorted(found, key=lambda p: order.get(p.dev.name, len(order)))


def find(spec: BootDev, *, run_dir: Path = UDEV_RUN,
         scanner: Scanner | None = None) -> Path | None:
    """The block device spec names on this machine, or None when there is none."""
    if spec.kind is BootDevKind.PATH:
        try:
            return Path(spec.value).resolve() if stat.S_ISBLK(os.stat(spec.value).st_mode) else None
        except OSError:
            return None
    scanner = scanner or Scanner(make_nodes=False)
    why_not = udev_unavailable(run_dir)
    found: list[Probed] = []
    if why_not is None:
        found = _in_kernel_order([p for p in _udev_devices() if matches(p, spec)], scanner)
        if found:
            return _first(spec, found, "udev's database (pyudev)")
        # A filesystem made a moment ago may not be in the database yet.
        why_not = f"udev's database has no block device with {spec}"
    log.info("%s: probing /proc/partitions and superblocks, as the agent does", why_not)
    return _first(spec, scanner.find(spec), "the agent's probe")


def _first(spec: BootDev, found: list[Probed], via: str) -> Path | None:
    if not found:
        log.info("%s: no such block device (asked %s)", spec, via)
        return None
    if len(found) > 1:
        log.warning("%s: %d devices match (%s); using the first in /proc/partitions, as the "
                    "agent does at boot", spec, len(found), ", ".join(p.dev.path for p in found))
    log.info("%s is %s (found through %s)", spec, found[0].dev.path, via)
    return Path(found[0].dev.path)


# ---------------------------------------------------------------- before writing to one


def describe_fs(fs: Filesystem | None) -> str:
    if fs is None:
        return "no filesystem"
    name = f" LABEL={fs.label}" if fs.label else f" UUID={fs.uuid}" if fs.uuid else ""
    return fs.fstype + name


def contents(path: Path) -> str | None:
    """What lies on a disk, image or partition that making a filesystem would
    destroy, in words (read with the agent's probe); None when it is blank."""
    where = str(path)
    table = partition_table(where)
    if table is not None:
        parts = "; ".join(f"partition {p.number}: {describe_fs(probe(where, p.start))}, "
                          f"{human_size(p.size)}" for p in table.partitions)
        return f"a {table.kind} partition table ({parts or 'no partitions'})"
    fs = probe(where)
    if fs is not None:
        return describe_fs(fs)
    if any(read_at(where, 0, HEAD_SIZE)):
        # LVM, LUKS, RAID members and filesystems the agent does not know all
        # start in these bytes: blank means zero.
        return f"data the agent's probe does not recognise in its first {HEAD_SIZE // 1024} KiB"
    return None


def _devnums(name: str) -> dict[int, str]:
    """The device numbers of a block device and of its partitions, with their names."""
    base = Path("/sys/class/block") / name
    if not base.is_dir():
        return {}
    found: dict[int, str] = {}
    for sysdir in (base, *(c for c in base.iterdir() if (c / "partition").exists())):
        try:
            major, minor = (sysdir / "dev").read_text().strip().split(":")
        except (OSError, ValueError):
            continue
        found[os.makedev(int(major), int(minor))] = f"/dev/{sysdir.name}"
    return found


def _loops_of(image: Path) -> list[str]:
    """The loop devices attached to a disk image file."""
    want = str(image.resolve())
    names = []
    for backing in sorted(Path("/sys/block").glob("loop*/loop/backing_file")):
        try:
            text = backing.read_text().strip()
        except OSError:
            continue
        if text == want:
            names.append(backing.parent.parent.name)
    return names


def _table_users(table: str, numbers: Mapping[int, str], what: str) -> list[str]:
    users = []
    try:
        lines = Path(table).read_text().splitlines()
    except OSError:
        return []
    for line in lines[1:] if table == "/proc/swaps" else lines:
        words = line.split()
        if not words or not words[0].startswith("/"):
            continue
        source = unescape_mount_field(words[0])
        try:
            st = os.stat(source)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) and st.st_rdev in numbers:
            where = f" on {unescape_mount_field(words[1])}" if what == "mounted" else ""
            users.append(f"{numbers[st.st_rdev]} is {what}{where}")
    return users


def users(path: Path) -> list[str]:
    """Who uses a block device (or any of its partitions) or a disk image now,
    in words: mounts, swap, loop devices, device-mapper or RAID holders, other
    exclusive openers. Empty when nobody does."""
    if path.is_file():
        loops = _loops_of(path)
        found = [f"{path} is attached to /dev/{name} (losetup --detach /dev/{name})"
                 for name in loops]
        for name in loops:
            found += users(Path("/dev") / name)
        return found
    if not path.is_block_device():
        return []
    name = path.resolve().name
    numbers = _devnums(name) or {os.stat(path).st_rdev: str(path)}
    found = (_table_users("/proc/self/mounts", numbers, "mounted")
             + _table_users("/proc/swaps", numbers, "in use as swap"))
    for dev in numbers.values():
        holders = Path("/sys/class/block") / Path(dev).name / "holders"
        held = sorted(h.name for h in holders.iterdir()) if holders.is_dir() else []
        found += [f"{dev} is held by /dev/{h}" for h in held]
    if not found:
        # The kernel's own answer: a mount in another namespace, swap, LVM and
        # RAID all claim the device exclusively.
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC))
        except OSError as e:
            if e.errno == errno.EBUSY:
                found.append(f"{path} is busy (the kernel holds it for a mount, swap, LVM "
                             f"or RAID)")
    return found
