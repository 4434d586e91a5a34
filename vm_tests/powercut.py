"""Power cuts during a local boot partition's sync, and what the host and the bootloader find.

Shared by vm_tests/test_power_cut.py (the suite's cuts) and bench/bench_powercut.py
(`make powercut`, 200 cuts). One cut is one trial:

 1. copy node 2's stale disk (an extlinux partition LABEL=ssiboot holding an old
    pair) and boot node 2 with `ssi.debug` against a shared root whose default pair
    is the real kernel and a large (64 MiB) ramdisk, with its manifest;
 2. once the console shows that the ROOT stage is over (`stage root:`: SYNC has
    begun), wait a random delay, then SIGKILL QEMU: no clean shutdown, no flush;
 3. from the host, on a copy of the image, two readers: the bootloader's (no
    journal replay: debugfs -c on the unrecovered partition, the config read as
    syslinux reads it, the two files it names hashed: vm_tests/bootviews.py)
    and Linux's (e2fsck -fn clean, or clean after the journal alone is replayed;
    extlinux.conf names a complete pair whose files match what it records). Each
    must find the old pair or the new one, never a mix or nothing;
 4. boot the cut image again: the node syncs (or finds it unchanged) and joins;
    then the partition holds exactly the new pair and fscks clean. A share of
    these boots go through the real bootloader (SeaBIOS, the MBR, extlinux: no
    -kernel), which then loads the pair the cut left, old or new, and both boot.

A trial is "torn" when any check of 3 or 4 fails. Each cut is also placed by the
agent's own account (ssi.debug prints the sync's phases): during the copy, during
the commit, or after it. The random delays are the one place where the tests sleep
on purpose; every instant and the seed are logged.
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from linuxrc_agent.bootpair.extlinux import EXTLINUX
from linuxrc_agent.bootpair.fileops import hash_file
from linuxrc_agent.bootpair.kargs import local_append
from linuxrc_agent.bootpair.pair import SSI_DIR
from mkinitrd_ssi.initrd.cpio import Entry, write_newc
from mkinitrd_ssi.local.partition import attach, local_only, mounted, provision, publish_manifest
from mkinitrd_ssi.run import run
from vm_tests import bootviews, cluster, images
from vm_tests.kernel import Kernel
from vm_tests.qemu import BootTimeout, Disk, Nic, Vm, VmConfig, console_args

SYNC_START = r"linuxrc: .*stage root: "  # ssi.debug: the ROOT stage is done, SYNC runs
SYNC_END = r"linuxrc: .*sync: "
DISK_MIB = 128
INITRD_MIB = 64
STRETCH = 1.25  # delays reach a little past the estimated sync, see run_cuts
LOADER_SHARE = 0.5  # of the boots after a cut, how many go through extlinux
# The agent's debug lines (linuxrc_agent.main._sync_step) that open each phase.
PHASES = (("copy", "bootpair: copy"), ("commit", "bootpair: commit"),
          ("after", "bootpair: committed"))


def root_args(*extra: str) -> str:
    return " ".join([f"root=LABEL={cluster.ROOT_LABEL}", *extra])


# The kernel arguments both pairs boot with: the trials' -kernel boots' (ssi.debug
# tells the sync's phases), persisted with the stale pair too, so that a boot through
# extlinux has them as well and whichever pair it loads persists the same.
BOOT_ARGS = console_args([root_args("ssi.debug")])
OLD_APPEND = NEW_APPEND = local_append(BOOT_ARGS)


@dataclass(frozen=True)
class Pair:
    kernel: str  # xxh3_128 of the kernel
    initrd: str  # and of the ramdisk

    @classmethod
    def of(cls, kernel: Path, initrd: Path) -> Pair:
        return cls(hash_file(kernel).xxh3_128, hash_file(initrd).xxh3_128)


@dataclass(frozen=True)
class Setup:
    """What every trial boots: the VM's kernel and real ramdisk, the shared root, the disk."""

    kernel: Path
    ramdisk: Path
    shared_root: Path  # ext4 image; VMs open it with snapshot=on
    stale_disk: Path  # node 2's disk with the old pair; trials copy it
    old: Pair
    new: Pair


def big_initrd(ramdisk: Path, out: Path, mib: int, seed: int = 7) -> Path:
    """The real ramdisk followed by an uncompressed cpio of pseudo-random padding.

    The kernel reads concatenated archives, so this still is a valid ramdisk of
    `mib` MiB. Random bytes rather than zeros: a block that was allocated but never
    written reads back as zeros, and zeros would hide such a torn file from the hash.
    """
    base = ramdisk.read_bytes()
    base += b"\0" * (-len(base) % 4)
    pad = max(0, (mib << 20) - len(base) - 512)
    data = random.Random(seed).randbytes(pad)
    with open(out, "wb") as f:
        f.write(base)
        write_newc([Entry("ssi-padding.bin", 0o100644, data=data)], f)
    return out


def make_setup(work: Path, kernel: Path, ramdisk: Path, *,
               initrd_mib: int = INITRD_MIB) -> Setup:
    """Build the shared root (kernel + big ramdisk + manifest) and node 2's stale disk."""
    work.mkdir(parents=True, exist_ok=True)
    tree = images.shared_root_tree(work / "tree", kernel=kernel)
    big_initrd(ramdisk, tree / "boot" / "initrd.img", initrd_mib)
    publish_manifest(tree / "boot" / "vmlinuz", tree / "boot" / "initrd.img")
    shared = images.ext4_image(work / "root.img", tree, size_mb=initrd_mib + 64,
                               label=cluster.ROOT_LABEL, uuid=cluster.ROOT_UUID)
    old = old_pair(work, kernel, ramdisk)
    disk = stale_disk(work / "stale.img", *old)
    return Setup(kernel, ramdisk, shared, disk, Pair.of(*old),
                 Pair.of(tree / "boot" / "vmlinuz", tree / "boot" / "initrd.img"))


def old_pair(work: Path, kernel: Path, ramdisk: Path | None = None) -> tuple[Path, Path]:
    """An older pair: another kernel (the real one with a tail) and another ramdisk, so
    that both members differ from the shared root's and a mixed pair would show.

    With ramdisk, the older ramdisk is the real one with other padding (8 MiB): the
    pair boots, so a cut disk that still holds it can be booted through extlinux.
    """
    old_kernel, old_initrd = work / "old-vmlinuz", work / "old-initrd.img"
    old_kernel.write_bytes(kernel.read_bytes() + b"\0an older kernel\n" * 256)
    if ramdisk is None:
        old_initrd.write_bytes(b"an older ramdisk\n" * 4096)
    else:
        big_initrd(ramdisk, old_initrd, 8, seed=11)
    return old_kernel, old_initrd


def stale_disk(disk: Path, kernel: Path, initrd: Path) -> Path:
    """Node 2's disk: an extlinux partition LABEL=ssiboot that boots kernel + initrd."""
    disk.unlink(missing_ok=True)
    provision(disk, size_mib=DISK_MIB, label=cluster.BOOT_LABEL)
    with attach(disk) as (part, _), mounted(part) as mnt:
        result = local_only(mnt, kernel, initrd, BOOT_ARGS)
        assert result.status.value == "updated", result
    return disk


def build_ramdisk(kernel: Kernel, work: Path) -> tuple[Path, Path]:
    """The VM's kernel and the real ramdisk for the test table, as conftest's fixture builds it."""
    from mkinitrd_ssi.mkinitrd import main

    root = work / "adminroot"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "ssitab").write_text(cluster.SSITAB)
    out = root / "boot" / "initrd-ssi.img"
    rc = main(["--root", str(root), "--moddir", str(kernel.moddir), "--no-dhcpd", "-o", str(out)])
    assert rc == 0, "mkinitrd.ssi failed"
    return kernel.vmlinuz, out


def copy_image(src: Path, dst: Path) -> Path:
    run(["cp", "--sparse=always", str(src), str(dst)])
    return dst


# Every VM of the trials, so that an interrupted run (Ctrl-C in the main thread while
# the workers boot) still kills them: QEMU runs in its own session and would outlive us.
_LIVE: set[Vm] = set()
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set by kill_all: no VM starts after it


@contextlib.contextmanager
def node2_vm(setup: Setup, disk: Path, log: Path, *, loader: bool = False) -> Iterator[Vm]:
    """Node 2 against the shared root; loader: booted from its disk by SeaBIOS and
    extlinux (the pair and arguments the disk holds), not -kernel."""
    if loader:
        config = VmConfig(disks=[Disk(disk), Disk(setup.shared_root, extra=",snapshot=on")],
                          nics=[Nic(cluster.MAC_N2)], extra=["-boot", "c"])
    else:
        config = VmConfig(kernel=setup.kernel, initrd=setup.ramdisk, append=BOOT_ARGS,
                          disks=[Disk(setup.shared_root, extra=",snapshot=on"), Disk(disk)],
                          nics=[Nic(cluster.MAC_N2)])
    with _LIVE_LOCK:
        if _STOPPING.is_set():
            raise RuntimeError("the run is being stopped")
        vm = Vm(config, log)
        _LIVE.add(vm)
    try:
        yield vm
    finally:
        vm.kill()
        with _LIVE_LOCK:
            _LIVE.discard(vm)


def kill_all() -> None:
    with _LIVE_LOCK:
        _STOPPING.set()
        live = list(_LIVE)
    for vm in live:
        vm.kill()


# ---------------------------------------------------------------- the host's view


@dataclass
class View:
    """The partition as one reader sees it: which pair extlinux.conf names, what else is there."""

    pair: str = "-"  # old, new, or - when there is no complete pair
    files: list[str] = field(default_factory=list)  # ssi/ entries besides the pair
    problems: list[str] = field(default_factory=list)

    @property
    def phase(self) -> str:
        """Where the sync was when the power went, as far as the partition tells."""
        if self.problems:
            return "torn"
        tmp = any(name.rsplit("/", 1)[-1].startswith(".tmp-") for name in self.files)
        if self.pair == "old":
            return "copying" if tmp else "renamed" if self.files else "untouched"
        return "committed" if self.files else "done"


def read_view(mnt: Path, setup: Setup) -> View:
    view = View()
    config = EXTLINUX.config_path(mnt)
    try:
        data = config.read_bytes()
    except OSError as e:
        view.problems.append(f"{config.name}: {e.strerror}")
        return view
    pair = EXTLINUX.parse(data)
    if pair is None:
        view.problems.append(f"{config.name} is not a complete config of ours: {data[:200]!r}")
        return view
    named = set()
    for role in ("kernel", "initrd"):
        member = pair.member(role)
        named.add(member.name)
        path = mnt / member.name
        try:
            got = hash_file(path)
        except OSError as e:
            view.problems.append(f"{member.name}: {e.strerror}")
            continue
        if got != member.ident:
            view.problems.append(f"{member.name}: {got.size} bytes xxh3_128 {got.xxh3_128}, the "
                                 f"config records {member.ident.size} bytes "
                                 f"{member.ident.xxh3_128}")
    found = Pair(pair.kernel.ident.xxh3_128, pair.initrd.ident.xxh3_128)
    view.pair = "old" if found == setup.old else "new" if found == setup.new else "-"
    if view.pair == "-":
        view.problems.append(f"the config names neither the old nor the new pair: {found}")
    with contextlib.suppress(FileNotFoundError):
        view.files = sorted(str(p.relative_to(mnt / SSI_DIR)) for p in (mnt / SSI_DIR).rglob("*")
                            if p.is_file() and str(p.relative_to(mnt)) not in named)
    return view


@dataclass
class Inspection:
    fsck: str  # clean, journal (clean once the journal is replayed), or broken
    linux: View  # mounted normally: the journal replayed, as the agent sees it
    loader: View  # the blocks as they lie, read as extlinux reads them (no replay)
    raw_fsck: str  # e2fsck -fn before any journal replay (of what extlinux reads)
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = [f"fsck: {n}" for n in self.notes] if self.fsck == "broken" else []
        out += [f"replayed: {p}" for p in self.linux.problems]
        out += [f"bootloader: {p}" for p in self.loader.problems]
        return out


def loader_view(part: Path, setup: Setup, scratch: Path) -> View:
    """The partition as extlinux reads it: its blocks as they lie, no journal replayed."""
    want = bootviews.Expected((setup.old.kernel, setup.old.initrd),
                                (setup.new.kernel, setup.new.initrd), OLD_APPEND, NEW_APPEND)
    scratch.mkdir(parents=True, exist_ok=True)
    seen = bootviews.view_of(bootviews.Reader("ext4", part, 0, scratch), want)
    return View(pair=seen.pair, problems=seen.problems)


def _e2fsck(part: Path, *args: str) -> tuple[int, str]:
    result = run(["e2fsck", *args, str(part)], check=False, capture=True)
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


def inspect(image: Path, setup: Setup, scratch: Path) -> Inspection:
    """Check a cut disk image from the host, on a copy (the image itself stays as cut)."""
    copy = copy_image(image, scratch)
    try:
        with attach(copy) as (part, _):
            features = run(["dumpe2fs", "-h", str(part)], capture=True).stdout.decode()
            needs_replay = "needs_recovery" in features
            rc, out = _e2fsck(part, "-fn")  # with a journal to replay: of the blocks as they are
            raw = "clean" if rc == 0 else f"errors (e2fsck -fn exit {rc})"
            loader = loader_view(part, setup, scratch.with_suffix(".d"))
            notes: list[str] = []
            if needs_replay:
                _e2fsck(part, "-E", "journal_only", "-y")
                rc, out = _e2fsck(part, "-fn")
            fsck = "broken" if rc else "journal" if needs_replay else "clean"
            if rc:
                notes.append(_tail(out))
            with mounted(part, "ro") as mnt:
                linux = read_view(mnt, setup)
        return Inspection(fsck, linux, loader, raw, notes)
    finally:
        copy.unlink(missing_ok=True)
        shutil.rmtree(scratch.with_suffix(".d"), ignore_errors=True)


def _tail(text: str, lines: int = 8) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------- one trial


@dataclass
class Cut:
    index: int
    delay: float  # seconds from seeing SYNC begin to the SIGKILL
    fraction: float = 0.0  # the seeded draw: delay = fraction * window
    window: float = 0.0  # the sync duration estimated when the trial began
    after_sync: bool = False  # the agent had already printed its sync line
    at: str = ""  # the sync's phase at the cut, by the agent's own account: copy, commit, after
    fsck: str = ""
    pair: str = ""  # what extlinux.conf names, journal replayed
    loader_pair: str = ""  # what it names without the journal (extlinux's own view)
    loader_fsck: str = ""  # e2fsck -fn before the journal is replayed
    phase: str = ""
    recovery: str = ""  # SSI_SYNC of the boot after the cut
    loader_boot: str = ""  # that boot through extlinux: the pair it loaded (old, new); "": -kernel
    problems: list[str] = field(default_factory=list)
    loader_problems: list[str] = field(default_factory=list)
    sync_seconds: float | None = None  # the recovery boot's sync, SYNC begin to its line
    error: str = ""  # the trial itself could not run (a harness or QEMU failure), not a tear

    @property
    def torn(self) -> bool:
        return bool(self.problems)

    def line(self) -> str:
        where = "after sync line" if self.after_sync else "during sync"
        text = (f"cut {self.index:3d}: +{self.delay:6.3f} s = {self.fraction:.2f} x "
                f"{self.window:.2f} s ({where}, {self.at or '?'}); fsck {self.fsck}; "
                f"pair {self.pair}, phase {self.phase}; bootloader view (no replay): pair "
                f"{self.loader_pair}, fsck {self.loader_fsck}; next boot {self.recovery}"
                + (f" through extlinux, which loaded the {self.loader_boot} pair"
                   if self.loader_boot else ""))
        if self.loader_problems:
            text += "; bootloader view: " + "; ".join(self.loader_problems)
        if self.problems:
            text += "; TORN: " + "; ".join(self.problems)
        if self.error:
            text += f"; TRIAL FAILED: {self.error}"
        return text


def timed_sync(vm: Vm, timeout: float = 240.0) -> float:
    """Seconds, on the host's clock, from SYNC's start to the agent's sync line."""
    vm.wait_for(SYNC_START, timeout)
    start = time.monotonic()
    vm.wait_for(SYNC_END, timeout)
    return time.monotonic() - start


def calibrate(setup: Setup, work: Path) -> float:
    """One uncut boot of a stale copy: how long the full sync takes here, now."""
    _STOPPING.clear()
    disk = copy_image(setup.stale_disk, work / "calibrate.img")
    try:
        with node2_vm(setup, disk, work / "calibrate.log") as vm:
            seconds = timed_sync(vm)
            env = vm.node_env()
        assert env["SSI_SYNC"] == "updated", env
        return seconds
    finally:
        disk.unlink(missing_ok=True)


class Window:
    """The current duration of a full sync: the median of the last few measured.

    The machine's load changes during a long run (two trials at once, other users):
    a window calibrated once would put every cut at the start of slower syncs.
    The boots after cuts early in a sync copy (nearly) the whole pair again; their
    syncs, timed like the calibration, keep the estimate current.
    """

    def __init__(self, calibrated: float, keep: int = 5) -> None:
        self.samples = [calibrated]
        self.keep = keep
        self.lock = threading.Lock()

    def current(self) -> float:
        with self.lock:
            return statistics.median(self.samples)

    def add(self, seconds: float) -> None:
        with self.lock:
            self.samples = [*self.samples, seconds][-self.keep:]


def phase_at(console: str) -> str:
    """Where the sync was when the console stopped: copy (from its start: checking what
    the disk holds, copying), commit (the config written in place, checkpointed) or after."""
    seen = "copy"
    for phase, marker in PHASES:
        if marker in console:
            seen = phase
    return seen


def run_cut(setup: Setup, work: Path, index: int, fraction: float, window: Window,
            loader: bool = False) -> Cut:
    """One trial; loader: the boot after the cut goes through SeaBIOS and extlinux."""
    span = window.current()
    delay = fraction * span
    cut = Cut(index, delay, fraction, span)
    disk = copy_image(setup.stale_disk, work / f"cut{index}.img")
    try:
        with node2_vm(setup, disk, work / f"cut{index}.log") as vm:
            vm.wait_for(SYNC_START, 240)
            time.sleep(delay)  # the deliberate random instant
            vm.kill()  # SIGKILL to QEMU's process group: the power cut
            console = vm.output()
            cut.after_sync = re.search(SYNC_END, console) is not None
            cut.at = "after" if cut.after_sync else phase_at(console)
        found = inspect(disk, setup, work / f"cut{index}.check.img")
        cut.fsck, cut.pair, cut.phase = found.fsck, found.linux.pair, found.linux.phase
        cut.loader_pair, cut.loader_fsck = found.loader.pair, found.raw_fsck
        cut.loader_problems = found.loader.problems
        cut.problems += found.problems
        # The next boot: it finishes (or finds finished) the sync, and joins.
        with node2_vm(setup, disk, work / f"cut{index}.again.log", loader=loader) as vm:
            with contextlib.suppress(AssertionError):
                cut.sync_seconds = timed_sync(vm)
            try:
                env = vm.node_env(240)
            except BootTimeout as e:
                if not loader:
                    raise
                # extlinux could not load a pair: the very tear this boot is for.
                cut.problems.append("extlinux did not boot the disk: " + _tail(str(e), 6))
                return cut
            if loader:
                cut.loader_boot = _loaded(vm.output(), env)
                if cut.loader_boot not in ("old", "new"):
                    cut.problems.append(f"through extlinux: {cut.loader_boot}")
        cut.recovery = env.get("SSI_SYNC", "?")
        if cut.recovery == "updated" and cut.phase in ("untouched", "copying", "renamed") \
                and cut.sync_seconds is not None:
            window.add(cut.sync_seconds)
        if (env.get("SSI_NODE"), cut.recovery) not in (("2", "updated"), ("2", "unchanged")):
            cut.problems.append(f"next boot: node {env.get('SSI_NODE')}, SSI_SYNC "
                                f"{cut.recovery}")
        after = inspect(disk, setup, work / f"cut{index}.check.img")
        # An unchanged boot writes nothing: the old slot a cut left after the commit
        # stays until the next update empties it.
        debris = after.linux.files if cut.recovery == "updated" else []
        if after.fsck != "clean" or after.linux.pair != "new" or debris \
                or after.linux.problems or after.loader.problems:
            cut.problems.append(f"after the next boot: fsck {after.fsck}, pair "
                                f"{after.linux.pair}, leftovers {debris}, "
                                f"{after.linux.problems + after.loader.problems}")
    except Exception as e:  # a harness failure is reported as such, not as a pass
        cut.error = f"{type(e).__name__}: {str(e)[-2000:]}"
    finally:
        if not cut.torn and not cut.error:
            disk.unlink(missing_ok=True)  # a torn one stays beside its console logs
    return cut


def _loaded(console: str, env: dict[str, str]) -> str:
    """Which pair extlinux loaded, from what the agent then did with the disk."""
    if "SYSLINUX" not in console and "EXTLINUX" not in console:
        return "no sign of extlinux on the console"
    # The old pair boots an agent that syncs the new one; the new pair finds it so.
    return {"updated": "old", "unchanged": "new"}.get(env.get("SSI_SYNC", ""),
                                                       f"SSI_SYNC={env.get('SSI_SYNC')}")


def run_cuts(setup: Setup, work: Path, count: int, seed: int, window: float, *,
             workers: int = 2, loader_share: float = LOADER_SHARE,
             report: Callable[[Cut], None] = print) -> list[Cut]:
    """count trials, `workers` at a time (each trial runs its two boots in turn).

    Each delay is a seeded fraction, uniform in [0, STRETCH), of the current sync
    duration (see Window; `window` is the calibrated one). The stretch past 1 makes
    sure the end of the sync (commit, removal of the old pair, unmount) is hit too.
    A seeded loader_share of the boots after a cut go through extlinux.
    """
    rng = random.Random(seed)
    fractions = [rng.uniform(0.0, STRETCH) for _ in range(count)]
    draws = random.Random(seed + 1)
    loaders = [draws.random() < loader_share for _ in range(count)]
    estimate = Window(window)
    results: list[Cut] = []
    lock = threading.Lock()
    todo = iter(zip(range(1, count + 1), fractions, loaders, strict=True))
    stop = threading.Event()
    _STOPPING.clear()

    def worker() -> None:
        while True:
            with lock:
                item = None if stop.is_set() else next(todo, None)
            if item is None:
                return
            index, fraction, loader = item
            cut = run_cut(setup, work, index, fraction, estimate, loader)
            with lock:
                results.append(cut)
                report(cut)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:
        stop.set()  # no new trials
        kill_all()
        for t in threads:  # their trials fail fast now; let them detach their loop devices
            t.join(timeout=60)
        raise
    return sorted(results, key=lambda c: c.index)


def summary(cuts: list[Cut]) -> dict[str, dict[str, int]]:
    """Counts of each outcome, for the report."""
    out: dict[str, dict[str, int]] = {}
    for key in ("at", "fsck", "pair", "phase", "loader_pair", "loader_fsck", "recovery",
                "loader_boot"):
        counts: dict[str, int] = {}
        for cut in cuts:
            value = getattr(cut, key) or ("-kernel" if key == "loader_boot" else "?")
            counts[value] = counts.get(value, 0) + 1
        out[key] = dict(sorted(counts.items()))
    out["window"] = {"during sync": sum(not c.after_sync for c in cuts),
                     "after sync line": sum(c.after_sync for c in cuts)}
    out["torn by phase"] = {phase: sum(c.torn for c in cuts if c.at == phase)
                            for phase, _marker in PHASES}
    out["torn"] = {"any view": sum(c.torn for c in cuts),
                   "bootloader view": sum(bool(c.loader_problems) for c in cuts),
                   "through extlinux": sum(c.torn for c in cuts if c.loader_boot)}
    return out
