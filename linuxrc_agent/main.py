"""The boot, as PID 1 of the ramdisk: a fixed sequence of stages, each one function.

    MOUNT_API    /proc /sys /dev /run, console on stdio
    CMDLINE      /proc/cmdline -> Cmdline (debug, breaks, timeout, root=)
    MODULES      the carried kernel modules the present devices need
    DEVICES      /dev nodes from /proc/partitions; wait for the root= device (not for NFS)
    IDENTITY     which ssitab node this is: local MACs <-> /etc/ssitab
    NETWORK      its NIC up with its address, the hostname set
    ROOT         mount the shared root on /newroot (a device, or NFS: nfsroot.py; under
                 a tmpfs overlay with ssi.overlay=tmpfs: overlay.py), check init is there
    SYNC         local boot flag: boot partition := shared root's default pair
    NODE_ENV     /run/ssi/node.env
    SWITCH_ROOT  exec init in the shared root

`ssi.break=STAGE` opens the rescue shell before STAGE and goes on when it
exits. A stage that fails prints what failed and what to check, then opens
the rescue shell and retries the stage when the shell exits (the admin may
have fixed it); without a shell the node reboots after a delay. PID 1 never
returns and never exits: that would be a kernel panic.
"""

from __future__ import annotations

import enum
import errno
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NoReturn

from linuxrc_agent import cmdline as cmdline_mod
from linuxrc_agent import (
    console,
    firmware,
    mac_match,
    modules,
    mounts,
    netlink,
    nodeenv,
    partitions,
    proc,
    rescue,
    ssitab,
)
from linuxrc_agent.cmdline import Cmdline
from linuxrc_agent.nodeenv import NodeEnv
from linuxrc_agent.partitions import Probed, Scanner
from linuxrc_agent.ssitab import parse_bootdev
from linuxrc_agent.switch_root import check_init, switch_root
from linuxrc_agent.syscalls import MS_RDONLY, MS_REMOUNT, mount, sethostname

# nfsroot and overlay are imported where an NFS root or an overlay is asked for, as
# bootpair is where a node has the local boot flag: a node booting a block device
# without overlay imports neither (README, Benchmarks: the agent's start-up).
if TYPE_CHECKING:
    from linuxrc_agent import nfsroot

NEWROOT = "/newroot"
SSITAB = "/etc/ssitab"
BOOT_MNT = "/run/ssi/boot"  # the local boot partition while it is synced
BOOTDEV_WAIT = 5.0  # seconds for the boot partition once the root device is there
CARRIER_WAIT = 5.0
RESCAN_INTERVAL = 1.0  # seconds between modalias rescans while waiting for the root device


class Stage(enum.Enum):
    MOUNT_API = "mount_api"
    CMDLINE = "cmdline"
    MODULES = "modules"
    DEVICES = "devices"
    IDENTITY = "identity"
    NETWORK = "network"
    ROOT = "root"
    SYNC = "sync"
    NODE_ENV = "node_env"
    SWITCH_ROOT = "switch_root"


class BootError(Exception):
    """An expected failure: what failed, what the agent saw, what the admin should check."""

    def __init__(self, what: str, checks: Sequence[str] = (),
                 details: Sequence[str] = ()) -> None:
        super().__init__(what)
        self.what = what
        self.checks = tuple(checks)
        self.details = tuple(details)


class Boot:
    """What the stages learn, handed from one to the next."""

    def __init__(self) -> None:
        self.cmdline = Cmdline()
        self.loader: modules.Loader | None = None
        self.scanner = Scanner()
        self.root: Probed | None = None
        self.nfs: nfsroot.NfsSpec | None = None  # root=nfs:/nfs4:, once parsed
        self.overlay = ""  # "tmpfs" once the overlay is on /newroot
        self.node = NodeEnv()
        self.bootdev: ssitab.BootDev | None = None  # the local boot partition, if any
        self.kver = ""
        self.notes: list[str] = []  # for the debug log, once debug is known
        self.stage_ms: dict[str, int] = {}  # each stage's run time, retries included


# --- the stages -----------------------------------------------------------------------


def mount_api(boot: Boot) -> None:
    console.ensure_stdio()
    notes = mounts.mount_api()
    console.ensure_stdio()  # /dev/console exists now, if it did not in the archive
    startup = console.refine_start()
    boot.kver = _read_first_line(modules.KVER_FILE) or os.uname().release
    console.say(f"ssi-boot agent on kernel {os.uname().release}, "
                f"{console.uptime():.2f} s after kernel start")
    boot.notes.extend([*notes, f"from exec of /init to Python's main: {startup:.2f} s"])


def parse_cmdline(boot: Boot) -> None:
    boot.cmdline = cmdline_mod.read()
    console.set_debug(boot.cmdline.debug)
    for note in boot.notes:
        console.debug(note)
    for warning in boot.cmdline.warnings:
        console.warn(warning)
    known = {s.value for s in Stage}
    breaks = []
    for name in boot.cmdline.breaks:
        if name not in known:
            console.warn(f"ssi.break={name}: no such stage; stages: "
                         + ", ".join(s.value for s in Stage))
        elif name in (Stage.MOUNT_API.value, Stage.CMDLINE.value):
            # They ran before the command line was read: stop at the earliest point left.
            console.warn(f"ssi.break={name}: that stage has run already; stopping before "
                         f"{Stage.MODULES.value} instead")
            breaks.append(Stage.MODULES.value)
        else:
            breaks.append(name)
    boot.cmdline = replace(boot.cmdline, breaks=tuple(dict.fromkeys(breaks)))
    console.debug(f"cmdline: {boot.cmdline}")


def load_modules(boot: Boot) -> None:
    c = boot.cmdline
    order = modules.read_order()
    params = {m: c.params_for(m) for m, _ in c.modparams}
    loader = boot.loader = modules.Loader(order, params, c.blacklist, parallel=True)
    if not order:
        console.say("modules: the ramdisk carries none")
        return
    started = console.elapsed()
    mode = c.modules
    if mode == "auto":
        try:
            loader.load_matching()
        except (OSError, ValueError) as e:
            console.warn(f"modules: cannot match devices to modules ({e}); loading all")
            mode = "all"
    if mode == "all":
        loader.load_all()
    report = loader.report
    report.seconds = console.elapsed() - started
    console.say(f"modules: loaded {len(report.loaded)} of {len(order)} carried ({mode}) in "
                f"{report.seconds:.2f} s: {' '.join(report.loaded) or '-'}")


def wait_devices(boot: Boot) -> None:
    c = boot.cmdline
    boot.scanner = Scanner()
    if c.root is None:
        boot.scanner.devices()  # the nodes, for the rescue shell at least
        raise BootError("no root= on the kernel command line",
                        ["add root=/dev/NAME, root=LABEL=..., root=UUID=..., root=PARTUUID=... "
                         "or root=nfs4:SERVER:/PATH to the kernel arguments (lilo.ssi "
                         "--cmdline)"], _seen(boot))
    # Only an NFS root has a colon (root=nfs:SERVER:/PATH): nfsroot is not imported for
    # a device.
    if ":" in c.root and _is_nfs(c.root):
        from linuxrc_agent import nfsroot

        # Nothing to wait for: the root comes once the network is up. The nodes are
        # made all the same, for the rescue shell and the local boot partition.
        boot.scanner.devices()
        try:
            boot.nfs = nfsroot.parse_spec(c.root)
        except nfsroot.NfsSpecError as e:
            raise BootError(str(e), ["root=nfs:SERVER:/PATH[:OPTIONS] or "
                                     "root=nfs4:SERVER:/PATH[:OPTIONS], SERVER an IPv4 "
                                     "address"]) from None
        console.debug(f"devices: the root is NFS, {boot.nfs.source}: no device to wait for")
        return
    spec = parse_bootdev(c.root)
    if spec is None:
        shown = c.root if len(c.root) <= 80 else c.root[:77] + "..."
        raise BootError(f"root={shown}: not a form this agent resolves",
                        ["expected root=/dev/NAME, LABEL=NAME (1-64 characters, no spaces, "
                         "quotes or backslashes), UUID=UUID or PARTUUID=UUID"])
    console.debug(f"devices: waiting up to {c.timeout:g} s for {spec}")
    found = partitions.wait_for(spec, c.timeout, boot.scanner, _rescanner(boot))
    if found is None:
        raise BootError(f"root device {spec} not found within {c.timeout:g} s",
                        [f"root={c.root} names the shared root"
                         + (" (labels are case-sensitive)" if c.root.startswith("LABEL=") else ""),
                         "the disk is attached and its controller's driver is in the ramdisk",
                         f"a slow disk: a longer ssi.timeout= (now {c.timeout:g})"],
                        [*_seen(boot), *_missing(boot)])
    others = [p for p in boot.scanner.find(spec) if p is not found]
    if others:
        console.warn(f"{spec} matches {len(others) + 1} devices; using {found.dev.path}, not "
                     + ", ".join(p.dev.path for p in others))
    boot.root = found
    console.debug(f"devices: root is {found.describe()}")


def identify(boot: Boot) -> None:
    """Match the local MACs against /etc/ssitab (the NIC that netbooted first).

    No match yet may be a NIC whose driver is still loading: rescan until the
    timeout, then show the banner an admin copies into ssitab.
    """
    try:
        table = ssitab.load(SSITAB)
    except ssitab.SsitabError as e:
        raise BootError(f"the ramdisk's node table is invalid ({len(e.problems)} errors)",
                        [*(str(p) for p in e.problems[:10]),
                         "fix /etc/ssitab on the shared root, then mkinitrd.ssi && lilo.ssi"]) \
            from None
    except OSError as e:
        raise BootError(f"cannot read {SSITAB}: {e.strerror}",
                        ["the ramdisk was built by mkinitrd.ssi (it adds the table)"]) from None
    deadline = console.elapsed() + boot.cmdline.timeout
    rescan = _rescanner(boot)
    while True:
        nics = mac_match.local_nics()
        try:
            ident = mac_match.match(table, nics, boot.cmdline.bootif)
            break
        except mac_match.AmbiguousNode as e:
            raise BootError(str(e), ["/etc/ssitab: each node's MACs on its own line"]) from None
        except mac_match.UnknownNode:
            if console.elapsed() >= deadline:
                for line in mac_match.unknown_banner(table, nics):
                    console.say(line)
                # No NIC at all: name the devices whose driver the ramdisk lacks.
                raise BootError("this machine is not in the node table",
                                ["add it with the line above, or check the NIC driver is "
                                 "in the ramdisk"], [] if nics else _missing(boot)) from None
            rescan()
            time.sleep(0.2)
    node = ident.node
    boot.node = replace(boot.node, node=node.number, ip=node.ip, prefix=node.prefix,
                        mac=ident.nic.mac, iface=ident.nic.name, hostname=node.hostname,
                        local_boot=node.local)
    boot.bootdev = node.bootdev
    console.say(f"identity: node {node.number} ({node.hostname}), {ident.nic.name} "
                f"{ident.nic.mac}, ssitab line {node.line}")


def bring_up_network(boot: Boot) -> None:
    """The node's NIC up with its ssitab address; the hostname set."""
    n = boot.node
    if not n.iface or n.prefix is None:
        raise BootError("no identity: the network stage needs the identity stage")
    try:
        netlink.link_up("lo")
        netlink.link_up(n.iface)
        netlink.add_address(n.iface, n.ip, n.prefix)
        sethostname(n.hostname)
    except OSError as e:
        raise BootError(f"network: {n.iface} {n.ip}/{n.prefix}: {e.strerror}",
                        ["the NIC's driver loaded (ssi.debug lists the modules)"]) from None
    if not netlink.wait_carrier(n.iface, CARRIER_WAIT):
        console.warn(f"network: no carrier on {n.iface} after {CARRIER_WAIT:g} s; going on")
    console.say(f"network: {n.iface} up with {n.ip}/{n.prefix}, hostname {n.hostname}")


def mount_root(boot: Boot) -> None:
    c = boot.cmdline
    if mounts.is_mountpoint(NEWROOT):
        console.say(f"root: using what is already mounted on {NEWROOT}")
    else:
        # Under an overlay the shared root is the lower layer, at its own place.
        lower = _lower() if c.overlay else NEWROOT
        if c.overlay and mounts.is_mountpoint(lower):
            console.say(f"root: the shared root is still mounted on {lower} from the last try")
        elif boot.nfs is not None:
            _mount_nfs(boot, boot.nfs, lower)
        else:
            _mount_root_device(boot, lower)
        if c.overlay:
            _mount_overlay(boot, lower)
    problem = check_init(NEWROOT, c.init)
    if problem is not None:
        where = boot.root.describe() if boot.root else c.root
        raise BootError(problem, [f"root={c.root} is the shared root; it is {where}",
                                  "init= names the right program (default /sbin/init)"])


def _mount_root_device(boot: Boot, target: str) -> None:
    c = boot.cmdline
    if boot.root is None:
        raise BootError("no root device (stage devices did not run?)")
    dev = boot.root.dev.path
    fstype = c.rootfstype or (boot.root.fs.fstype if boot.root.fs else None)
    if fstype is None:
        raise BootError(f"no filesystem recognised on {dev}",
                        [f"{dev} is the shared root (the devices seen are listed with "
                         "ssi.debug)", "rootfstype= names its type if the agent cannot tell"])
    _ensure_filesystem(boot, fstype)
    flags, data = mounts.parse_options(c.rootflags, MS_RDONLY if c.readonly else 0)
    if c.overlay:
        flags |= MS_RDONLY  # the lower layer: nothing may write to the shared root
    # ext2 and ext3 are often served by the ext4 driver (CONFIG_EXT4_USE_FOR_EXT2).
    types = [fstype, "ext4"] if fstype in ("ext2", "ext3") else [fstype]
    error: OSError | None = None
    for fs in types:
        try:
            mount(dev, target, fs, flags, data or None)
        except OSError as e:
            error = error or e
            continue
        mode = "ro" if flags & MS_RDONLY else "rw"
        console.debug(f"root: mounted {dev} ({fs}, {mode}{',' + data if data else ''}) "
                      f"on {target}")
        return
    assert error is not None
    raise BootError(f"mount {dev} on {target} as {fstype} failed: {error.strerror}",
                    _mount_checks(error.errno or 0, dev, fstype, c.rootflags))


def _is_nfs(root: str) -> bool:
    from linuxrc_agent import nfsroot

    return nfsroot.is_nfs(root)


def _lower() -> str:
    """Where the shared root is mounted under an overlay."""
    from linuxrc_agent.overlay import LOWER

    return LOWER


def _mount_nfs(boot: Boot, spec: nfsroot.NfsSpec, target: str) -> None:
    from linuxrc_agent import nfsroot

    c, n = boot.cmdline, boot.node
    try:
        plan = nfsroot.plan(spec, n.ip, c.rootflags, c.readonly)
    except nfsroot.NfsSpecError as e:
        raise BootError(f"root={c.root}: {e}", ["man 5 nfs for the options"]) from None
    if c.overlay:  # the lower layer, whatever rw the options say
        plan = replace(plan, flags=plan.flags | MS_RDONLY)
    _ensure_modules(boot, plan.modules())
    os.makedirs(target, mode=0o755, exist_ok=True)
    console.debug(f"root: NFS {spec.source}, versions {plan.versions}: "
                  + " | ".join(f"{a.fstype} {a.data}" for a in plan.attempts))
    next_note = 0.0

    def waiting(err: int, left: float) -> None:
        nonlocal next_note
        if console.elapsed() >= next_note:  # a line every few seconds, not every retry
            next_note = console.elapsed() + 5.0
            console.say(f"root: waiting for the NFS server {spec.server} "
                        f"({os.strerror(err)}); {left:.0f} s left")

    try:
        attempt = nfsroot.mount_nfs(plan, target, c.timeout, waiting=waiting)
    except nfsroot.NfsMountError as e:
        what, checks = nfsroot.explain(plan, e, f"{n.ip}/{n.prefix}")
        raise BootError(what, checks) from None
    mode = "ro" if plan.flags & MS_RDONLY else "rw"
    console.say(f"root: {spec.source} mounted over NFS {attempt.version} ({mode}) on {target}")
    try:
        unmapped = nfsroot.owners_unmapped(attempt, os.stat(target).st_uid)
    except OSError:
        unmapped = None  # the root stage's checks of /sbin/init say what is wrong
    if unmapped is not None:
        console.warn(unmapped)


def _mount_overlay(boot: Boot, lower: str) -> None:
    from linuxrc_agent import overlay

    _ensure_filesystem(boot, "overlay")
    try:
        overlay.mount_overlay(lower, NEWROOT)
    except (OSError, ValueError) as e:
        err = getattr(e, "errno", None)
        checks = ["dmesg (in the rescue shell) for overlayfs's reason"]
        if err == errno.ENODEV:
            checks.insert(0, "the kernel has no overlayfs: rebuild with mkinitrd.ssi "
                          "--add-modules overlay")
        raise BootError(f"ssi.overlay={boot.cmdline.overlay}: overlay of {lower} on {NEWROOT} "
                        f"failed: {getattr(e, 'strerror', None) or e}", checks) from None
    boot.overlay = boot.cmdline.overlay
    console.say(f"root: writable {boot.overlay} overlay on {NEWROOT}, the shared root "
                f"read-only below it ({lower})")


def _mount_checks(err: int, dev: str, fstype: str, rootflags: str) -> list[str]:
    if err == errno.ENODEV:
        return [f"the kernel has no {fstype} driver: rebuild with mkinitrd.ssi --add-modules "
                f"{fstype}", f"rootfstype={fstype} is right"]
    checks = ["dmesg (in the rescue shell) for the kernel's reason"]
    if err == errno.EINVAL:
        checks.insert(0, f"{dev} holds a valid {fstype} filesystem (fsck from another host)")
        if rootflags:
            checks.insert(1, f"rootflags={rootflags} holds only options {fstype} knows")
    elif err in (errno.EROFS, errno.EACCES):
        checks.insert(0, f"{dev} is writable, or boot with ro")
    return checks


def sync_boot_partition(boot: Boot) -> None:
    """Local boot flag: make the local pair the shared root's default pair (bootpair).

    Never fatal: whatever happens to the local disk, the node joins the
    cluster, and SSI_SYNC says what happened.
    """
    if not boot.node.local_boot or boot.bootdev is None:
        boot.node = replace(boot.node, sync="skipped")
        return
    status, reason = _sync_local(boot, boot.bootdev)
    boot.node = replace(boot.node, sync=status)
    console.say(f"sync: {status}" + (f": {reason}" if reason else ""))


def _sync_local(boot: Boot, spec: ssitab.BootDev) -> tuple[str, str]:
    found = partitions.wait_for(spec, BOOTDEV_WAIT, boot.scanner, _rescanner(boot))
    if found is None or found.fs is None:
        what = f"{spec} not found" if found is None else f"{found.dev.path} has no filesystem"
        label = f" -L {spec.value}" if spec.kind.value == "LABEL" else ""
        if firmware.kind() == "uefi":  # an EFI System Partition: shim and GRUB come at the sync
            how = ("  to create one: fdisk a partition (type ef, EFI System), mkfs.vfat -n "
                   f"{spec.value.upper() if label else 'SSIBOOT'} on it;",
                   "  reboot: the agent installs shim and GRUB and fills it in.")
        else:
            how = ("  to create one: fdisk a partition (type 83, bootable), mkfs.ext4 -O "
                   f"^64bit{label} on it,",
                   "  extlinux --install on it mounted; reboot: the agent fills it in.")
        for line in (f"{what}: this node has the local boot flag but no boot partition.", *how):
            console.say(line)
        return "no-boot-partition", what
    fstype = found.fs.fstype
    _ensure_filesystem(boot, fstype)
    # Imported here: bootpair with xxhash and pathlib costs a thin node (most nodes)
    # a few hundred milliseconds of boot under emulation, for nothing.
    from pathlib import Path

    from linuxrc_agent.bootpair import esp, kargs

    c = boot.cmdline
    # The shared root itself, not a node's view of it: under the overlay that is the
    # lower layer (the same bytes while the upper is empty, but nothing may shadow them).
    shared = _lower() if boot.overlay else NEWROOT
    kernel = Path(shared + c.kernel)
    initrd = Path(shared + c.initrd)
    append = kargs.local_append(_read_first_line("/proc/cmdline"))
    dev = found.dev.path
    try:
        # Read-only until the first write: an unchanged check leaves the disk untouched.
        with mounts.mounted(dev, BOOT_MNT, fstype, MS_RDONLY):
            def writable() -> None:
                mount(dev, BOOT_MNT, fstype, MS_REMOUNT, None)

            # An ESP (UEFI) or an extlinux partition: the same commit, its own config.
            result = esp.sync_boot_partition(Path(BOOT_MNT), kernel, initrd, append,
                                             root=Path(shared), uefi=firmware.kind() == "uefi",
                                             before_write=writable, progress=_sync_step)
    except OSError as e:
        return "failed", f"{dev}: {e.strerror}"
    if result.status is nodeenv.SyncStatus.FAILED:
        return "failed", f"{dev}: {result.reason}"  # which disk failed, not just EIO
    return result.status.value, result.reason


def _sync_step(step: str) -> None:
    # With ssi.debug, where a sync was when the power went (vm_tests/powercut.py).
    console.debug(f"bootpair: {step}")


def _ensure_filesystem(boot: Boot, fstype: str) -> None:
    """Load the filesystem's module unless the kernel has it (built in or loaded)."""
    if fstype not in mounts.supported_filesystems() and boot.loader is not None:
        try:
            loaded = boot.loader.load_filesystem(fstype)
            console.debug(f"loaded {' '.join(loaded) or 'no module'} for {fstype}")
        except (OSError, ValueError) as e:
            console.warn(f"cannot load the {fstype} module: {e}")


def _ensure_modules(boot: Boot, names: set[str]) -> None:
    """Load carried modules by name, with their dependencies (built-in ones need nothing)."""
    if boot.loader is None:
        return
    try:
        loaded = boot.loader.load(boot.loader.closure(names))
        console.debug(f"loaded {' '.join(loaded) or 'no module'} for {' '.join(sorted(names))}")
    except (OSError, ValueError) as e:
        console.warn(f"cannot load {' '.join(sorted(names))}: {e}")


def write_node_env(boot: Boot) -> None:
    fw = firmware.kind()
    if fw == "uefi" and boot.loader is not None:
        _ensure_filesystem(boot, "efivarfs")
    stages = " ".join(f"{name}:{ms}" for name, ms in boot.stage_ms.items())
    boot.node = replace(boot.node, boot_ms=int(console.elapsed() * 1000), stages_ms=stages,
                        root=boot.cmdline.root or "", overlay=boot.overlay, firmware=fw,
                        secure_boot=fw == "uefi" and firmware.ensure_efivarfs()
                        and firmware.secure_boot())
    nodeenv.write(boot.node)
    console.debug(f"node.env: {' '.join(f'{k}={v}' for k, v in boot.node.items())}")


def do_switch_root(boot: Boot) -> None:
    c = boot.cmdline
    where = boot.root.dev.path if boot.root else c.root
    console.say(f"switching to {c.init} on {where} after {console.elapsed():.2f} s")
    switch_root(NEWROOT, c.init, sys.argv[1:])


STAGES: tuple[tuple[Stage, Callable[[Boot], None]], ...] = (
    (Stage.MOUNT_API, mount_api),
    (Stage.CMDLINE, parse_cmdline),
    (Stage.MODULES, load_modules),
    (Stage.DEVICES, wait_devices),
    (Stage.IDENTITY, identify),
    (Stage.NETWORK, bring_up_network),
    (Stage.ROOT, mount_root),
    (Stage.SYNC, sync_boot_partition),
    (Stage.NODE_ENV, write_node_env),
    (Stage.SWITCH_ROOT, do_switch_root),
)


# --- running them ---------------------------------------------------------------------


def run(boot: Boot) -> None:
    for stage, step in STAGES:
        if stage.value in boot.cmdline.breaks:
            _break(stage)
        while not _attempt(stage, step, boot):
            if not rescue.run_shell(f"stage {stage.value} failed; fix it, then exit to retry"):
                rescue.reboot_after()
            console.say(f"retrying stage {stage.value}")


def _attempt(stage: Stage, step: Callable[[Boot], None], boot: Boot) -> bool:
    # Uptime, not elapsed(): mount_api moves elapsed()'s origin back to the exec of /init
    # (console.refine_start), which would count the interpreter's start-up as its time.
    started = console.uptime()
    try:
        step(boot)
    except BootError as e:
        console.fatal(f"{stage.value}: {e.what}")
        for line in e.details:
            console.say(f"  {line}")
        for check in e.checks:
            console.say(f"  check: {check}")
        return False
    except Exception as e:  # a bug, or an OSError no stage foresaw: show all of it
        console.fatal(f"{stage.value}: {type(e).__name__}: {e}")
        _traceback(e)
        return False
    finally:
        spent = int((console.uptime() - started) * 1000)
        boot.stage_ms[stage.value] = boot.stage_ms.get(stage.value, 0) + spent
    console.debug(f"stage {stage.value}: {console.uptime() - started:.3f} s")
    return True


def _break(stage: Stage) -> None:
    console.say(f"ssi.break: stopping before stage {stage.value}")
    if not rescue.run_shell(f"before stage {stage.value} (ssi.break)"):
        console.warn(f"no rescue shell ({rescue.SHELL}) in this ramdisk; going on")


def _rescanner(boot: Boot) -> Callable[[], None]:
    """While waiting for the root device: load modules for devices that appeared late."""
    last = console.elapsed()

    def rescan() -> None:
        nonlocal last
        if boot.loader is None or boot.cmdline.modules != "auto" \
                or console.elapsed() - last < RESCAN_INTERVAL:
            return
        last = console.elapsed()
        try:
            new = boot.loader.load_matching()
        except (OSError, ValueError):
            return
        if new:
            console.say(f"modules: loaded {' '.join(new)} for devices that appeared late")

    return rescan


def _seen(boot: Boot) -> list[str]:
    seen = [p.describe() for p in boot.scanner.probed()]
    if not seen:
        return ["no block device at all in /proc/partitions"]
    return ["block devices seen:", *(f"  {line}" for line in seen)]


def _missing(boot: Boot) -> list[str]:
    """Devices without a driver: storage and network ones named, the rest counted."""
    if boot.loader is None:
        return []
    alias_file = f"/lib/modules/{boot.kver}/modules.alias"
    lines = []
    others: set[str] = set()
    for m in modules.missing_drivers(boot.loader, alias_file):
        names = ",".join(m.modules)
        if not m.important:
            others.update(m.modules)
        elif m.carried:
            lines.append(f"  {m.name} ({m.device.modalias}) has no driver although the ramdisk "
                         f"carries {names}: see the module warnings above")
        else:
            one = "module" if len(m.modules) == 1 else "one of the modules"
            lines.append(f"  {m.name} ({m.device.modalias}) needs {one} {names}, not in this "
                         f"ramdisk; rebuild with mkinitrd.ssi --add-modules {names}")
    if others:
        lines.append(f"  other devices lack {', '.join(sorted(others))} "
                     "(not storage or network: not needed to boot)")
    return ["devices without a driver:", *lines] if lines else []


def _traceback(e: BaseException) -> None:
    try:
        import traceback  # only on the unexpected path: it is a costly import

        console.say("".join(traceback.format_exception(e)).rstrip())
    except BaseException:
        pass


def _read_first_line(path: str) -> str:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return ""


def main(import_start: float | None = None) -> NoReturn:
    """The entry point of /init (`import_start`: CLOCK_BOOTTIME before importing us). Never
    returns."""
    if os.getpid() != 1:
        console.fatal("not PID 1: this is the ramdisk's init and runs only as PID 1 "
                      "(to look into an image: mkinitrd.ssi --list IMAGE)")
        raise SystemExit(1)
    try:
        proc.as_pid1()
        boot = Boot()
        if import_start is not None:
            # Stamped by the freeze's runtime hook (mkinitrd_ssi/initrd/rthook_clock.py).
            first = getattr(sys, "_ssi_first_code", None)
            if first is not None:
                boot.notes.append(f"runtime hooks and start-up cache: "
                                  f"{import_start - first:.3f} s")
            boot.notes.append(f"importing the agent: {console.uptime() - import_start:.3f} s")
        run(boot)
        console.fatal("the boot sequence ended without starting init")
    except BaseException as e:
        console.fatal(f"unexpected {type(e).__name__}: {e}")
        _traceback(e)
    try:
        rescue.run_shell("the agent failed; see above")
    finally:
        rescue.reboot_after()
