"""Every state a power cut can leave a boot partition in during one sync, and how each reads.

A random SIGKILL (vm_tests/powercut.py) rarely lands in a window milliseconds
wide and never loses or reorders a write QEMU already passed on. Here instead:

 1. record: node 2 boots under QEMU and syncs its boot partition (ext4 or
    vfat for extlinux, or an EFI System Partition) to a new pair; QEMU's
    `blklogwrites` driver logs every write and flush the guest issues to that
    disk, in the order they complete (dm-log-writes format: `read_log`);
 2. enumerate (`states`): the disk as it was before the boot, plus
    - every prefix of the log (the power fails after write i);
    - every prefix with its last write torn: a random subset of that write's
      512-byte sectors (a disk writes a sector whole or not at all, nothing
      larger);
    - random subsets of the writes of each flush epoch on top of everything
      flushed before it (a volatile cache may lose or reorder any write not
      yet flushed; all subsets when an epoch has few writes);
 3. judge each state twice (`judge`):
    - as the bootloader reads it (vm_tests/bootviews.py): no journal
      replay (debugfs -c on the unrecovered image; mtools for FAT), the
      config interpreted as syslinux does (DEFAULT, LABEL, LINUX, INITRD,
      APPEND), the two files it names read and hashed; on an ESP
      (`esp_view`) as the firmware, shim and GRUB read it: shim
      (EFI/BOOT/BOOTX64.EFI) and GRUB beside it whole, else the firmware
      boots nothing from the disk; then EFI/BOOT/grub.cfg read as GRUB's
      script lexer reads it (quotes spanning lines, `#` comments, `set
      default`, menuentry blocks; `grub_entry`), and checked by
      grub-script-check when installed;
    - as Linux reads it: the journal replayed (e2fsck -E journal_only), then
      e2fsck -fn must be clean; FAT mounted by the kernel;
    a state is torn when a view boots neither the old pair nor the new one
    (with the expected kernel arguments), unless that view could not boot
    before the sync either (a partition synced for the first time) and boots
    nothing now (on an ESP: no shim, so the firmware goes on to the network;
    past shim nothing falls back, GRUB stops at its prompt).

`around_commit` finds the two states either side of the commit, which
vm_tests/test_crash_states.py boots under OVMF from an ESP recorded with real
pairs: GRUB must boot the entry the view named.

Flush entries are taken to make durable every write logged before them;
FUA is not in QEMU's log, so a FUA write is treated as volatile until the
next flush (more states than a real disk allows, never fewer).
"""

from __future__ import annotations

import os
import random
import shutil
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import xxhash

from linuxrc_agent.bootpair.esp import LOADERS as ESP_LOADERS
from linuxrc_agent.bootpair.kargs import local_append
from mkinitrd_ssi.local.partition import attach, mounted, provision, publish_manifest
from vm_tests import cluster, images
from vm_tests.bootviews import Expected, Reader, View, run_tool, view_of
from vm_tests.qemu import Disk, Nic, Vm, VmConfig, console_args

SECTOR = 512
WRITE_LOG_MAGIC = 0x6A736677736872
LOG_FLUSH = 1 << 0
LOG_FUA = 1 << 1
LOG_DISCARD = 1 << 2
LOG_MARK = 1 << 3


# ---------------------------------------------------------------- the log


@dataclass(frozen=True)
class Entry:
    seq: int  # 1-based position in the log
    sector: int  # in 512-byte sectors of the logged disk
    data: bytes
    flags: int

    @property
    def is_flush(self) -> bool:
        return bool(self.flags & LOG_FLUSH)

    @property
    def is_write(self) -> bool:
        return not self.flags & (LOG_FLUSH | LOG_DISCARD | LOG_MARK) and bool(self.data)


def read_log(path: Path) -> list[Entry]:
    """The entries of a dm-log-writes log as QEMU's blklogwrites writes it.

    The superblock's entry count is only brought up to date at flushes, so
    the entries are read up to the first empty header instead.
    """
    buf = path.read_bytes()
    magic, version, _count, sectorsize = struct.unpack_from("<QQQI", buf, 0)
    if magic != WRITE_LOG_MAGIC or version != 1:
        raise ValueError(f"{path}: not a dm-log-writes log (magic {magic:#x}, version {version})")
    scale = sectorsize // SECTOR
    entries: list[Entry] = []
    pos = sectorsize
    while pos + 32 <= len(buf):
        sector, nr_sectors, flags, _data_len = struct.unpack_from("<QQQQ", buf, pos)
        if sector == nr_sectors == flags == 0:
            break
        pos += sectorsize
        size = 0 if flags & (LOG_FLUSH | LOG_DISCARD | LOG_MARK) else nr_sectors * sectorsize
        if pos + size > len(buf):
            break  # the last entry was cut short: the log ends before it
        entries.append(Entry(len(entries) + 1, sector * scale, buf[pos:pos + size], flags))
        pos += size
    return entries


def epochs(entries: Sequence[Entry]) -> list[list[Entry]]:
    """The writes between flushes, in order (the last epoch may end unflushed)."""
    out: list[list[Entry]] = [[]]
    for e in entries:
        if e.is_flush:
            out.append([])
        elif e.is_write:
            out[-1].append(e)
    return out


# ---------------------------------------------------------------- the states


@dataclass(frozen=True)
class State:
    """A disk a power cut can leave: the base image plus these writes, the last maybe torn."""

    name: str  # e.g. "prefix 12", "torn 12", "epoch 3 subset 5"
    writes: tuple[Entry, ...]
    torn: tuple[int, ...] | None = None  # sectors of the last write that reached the disk
    last_seq: int = 0  # the log position the state stands for

    def steps(self) -> list[tuple[Entry, tuple[int, ...] | None]]:
        out: list[tuple[Entry, tuple[int, ...] | None]] = [(w, None) for w in self.writes]
        if self.torn is not None and out:
            out[-1] = (out[-1][0], self.torn)
        return out


def states(entries: Sequence[Entry], *, seed: int, subsets_per_epoch: int = 16,
           exhaustive: int = 4, torn: int = 1) -> list[State]:
    """The states of one log, ordered so that neighbours share most of their writes.

    Every prefix; every prefix with its last write torn (`torn` random, proper,
    non-empty subsets of its sectors); and per flush epoch, its writes'
    subsets (all of them for an epoch of at most `exhaustive` writes, else
    `subsets_per_epoch` random ones) on top of all writes before the epoch.
    """
    rng = random.Random(seed)
    out = [State("prefix 0", (), last_seq=0)]
    done: list[Entry] = []
    n = 0
    for k, epoch in enumerate(epochs(entries)):
        before = tuple(done)
        for w in epoch:
            n += 1
            done.append(w)
            sectors = len(w.data) // SECTOR
            for t in range(torn if sectors > 1 else 0):
                keep = tuple(sorted(rng.sample(range(sectors), rng.randrange(1, sectors))))
                name = f"torn {n}" if torn == 1 else f"torn {n}.{t}"
                out.append(State(name, tuple(done), keep, last_seq=w.seq))
            out.append(State(f"prefix {n}", tuple(done), last_seq=w.seq))
        if len(epoch) < 2:
            continue
        if len(epoch) <= exhaustive:
            picks = [c for r in range(1, len(epoch)) for c in combinations(epoch, r)]
        else:
            picks = []
            for _ in range(subsets_per_epoch):
                picks.append(tuple(e for e in epoch if rng.random() < 0.5))
        for j, pick in enumerate(picks):
            out.append(State(f"epoch {k} subset {j}", (*before, *pick),
                             last_seq=max((e.seq for e in pick), default=before[-1].seq
                                          if before else 0)))
    return out


class Image:
    """A working copy of the disk, moved from state to state by undoing and applying writes."""

    def __init__(self, base: Path, work: Path) -> None:
        self.path = work
        shutil.copyfile(base, work)
        self.fd = os.open(work, os.O_RDWR)
        self.applied: list[tuple[Entry, tuple[int, ...] | None]] = []
        self.undo: list[list[tuple[int, bytes]]] = []  # per applied step: what it overwrote

    def close(self) -> None:
        os.close(self.fd)

    def move_to(self, state: State) -> Path:
        steps = state.steps()
        common = 0
        for a, b in zip(self.applied, steps, strict=False):
            if a[0] is not b[0] or a[1] != b[1]:
                break
            common += 1
        while len(self.applied) > common:
            self.applied.pop()
            for sector, data in reversed(self.undo.pop()):
                os.pwrite(self.fd, data, sector * SECTOR)
        for entry, keep in steps[common:]:
            pieces = [(entry.sector, entry.data)] if keep is None else \
                [(entry.sector + s, entry.data[s * SECTOR:(s + 1) * SECTOR]) for s in keep]
            saved = []
            for sector, data in pieces:
                saved.append((sector, os.pread(self.fd, len(data), sector * SECTOR)))
                os.pwrite(self.fd, data, sector * SECTOR)
            self.applied.append((entry, keep))
            self.undo.append(saved)
        return self.path


@dataclass
class Verdict:
    state: State
    loader: View
    linux: View
    fsck: str = ""  # clean, journal (clean once replayed), or what e2fsck/fsck.fat said

    @property
    def torn(self) -> bool:
        return bool(self.loader.problems or self.linux.problems)

    def line(self) -> str:
        text = (f"{self.state.name:22s} log #{self.state.last_seq:<4d} bootloader: "
                f"{self.loader.pair:4s} linux: {self.linux.pair:4s} fsck: {self.fsck}")
        if self.loader.problems:
            text += "; BOOTLOADER TORN: " + "; ".join(self.loader.problems)
        if self.linux.problems:
            text += "; LINUX TORN: " + "; ".join(self.linux.problems)
        notes = dict.fromkeys([*self.loader.notes, *self.linux.notes])
        if notes:
            text += "; noted: " + "; ".join(notes)
        return text


def judge(fs: str, image: Path, offset: int, size: int, want: Expected,
          scratch: Path) -> tuple[View, View, str]:
    """(the bootloader's view, Linux's view, fsck) of the partition at offset in image.

    fs: ext4 or vfat (extlinux), or esp (FAT read by the firmware, shim, GRUB).
    """
    kind = "grub" if fs == "esp" else "extlinux"
    loader = view_of(Reader(fs, image, offset, scratch), want, kind)
    if fs == "ext4":
        linux, fsck = _linux_ext4(image, offset, size, want, scratch)
    else:
        linux, fsck = _linux_vfat(image, offset, size, want, scratch, kind)
    return loader, linux, fsck


def _linux_ext4(image: Path, offset: int, size: int, want: Expected,
                scratch: Path) -> tuple[View, str]:
    """Replay the journal and repair what e2fsck repairs (on a copy), then read the pair.

    fsck says what it took: clean, journal (a replay), repaired (e2fsck -fy
    fixed more than the journal: say a superblock torn at the sector boundary,
    which ext4 writes outside its journal at every mount), or broken.
    """
    copy = scratch / "linux.img"
    with open(image, "rb") as src, open(copy, "wb") as dst:
        src.seek(offset)
        dst.write(src.read(size))
    head = run_tool(["dumpe2fs", "-h", str(copy)])
    replay = b"needs_recovery" in head.stdout
    if replay:
        run_tool(["e2fsck", "-E", "journal_only", "-y", str(copy)])
    fsck = "journal" if replay else "clean"
    problems = []
    result = run_tool(["e2fsck", "-fn", str(copy)])
    if result.returncode:
        result = run_tool(["e2fsck", "-fy", str(copy)])
    if result.returncode & ~3:
        fsck = "broken"
        tail = result.stdout.decode(errors="replace").strip().splitlines()[-4:]
        problems.append(f"e2fsck -fy exit {result.returncode}: " + " | ".join(tail))
    elif result.returncode:
        fsck = "repaired"
    view = view_of(Reader("ext4", copy, 0, scratch), want)
    view.problems[:0] = problems
    return view, fsck


def _linux_vfat(image: Path, offset: int, size: int, want: Expected, scratch: Path,
                kind: str = "extlinux") -> tuple[View, str]:
    """What boot-time fsck.fat -a makes of the partition (on a copy), then the pair read.

    FAT has no journal: Linux reads the bytes the firmware reads. What a boot
    would add is the repair of systemd-fsck (fsck.fat -a). The files are read
    with mtools again: this machine's kernel has no vfat (the random power
    cuts, vm_tests/powercut.py, mount every cut disk in the guest instead).
    """
    copy = scratch / "linux.img"
    with open(image, "rb") as src, open(copy, "wb") as dst:
        src.seek(offset)
        dst.write(src.read(size))
    result = run_tool(["fsck.fat", "-a", "-w", str(copy)])
    fsck = {0: "clean", 1: "repaired"}.get(result.returncode, "broken")
    view = view_of(Reader("vfat", copy, 0, scratch), want, kind)
    if fsck == "broken":
        tail = result.stdout.decode(errors="replace").strip().splitlines()[-4:]
        view.problems.insert(0, f"fsck.fat -a exit {result.returncode}: " + " | ".join(tail))
    return view, fsck


# ---------------------------------------------------------------- the whole


@dataclass
class Enumeration:
    fs: str
    verdicts: list[Verdict]
    writes: int
    flushes: int

    @property
    def torn(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.torn]

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for key, get in (("bootloader", lambda v: v.loader.pair), ("linux", lambda v: v.linux.pair),
                         ("fsck", lambda v: v.fsck.split(":")[0])):
            counts: dict[str, int] = {}
            for v in self.verdicts:
                counts[get(v)] = counts.get(get(v), 0) + 1
            out[key] = dict(sorted(counts.items()))
        return out

    def summary(self) -> str:
        loader = sum(bool(v.loader.problems) for v in self.verdicts)
        linux = sum(bool(v.linux.problems) for v in self.verdicts)
        noted = sum(bool(v.loader.notes or v.linux.notes) for v in self.verdicts)
        return (f"{self.fs}: {len(self.verdicts)} states ({self.writes} writes, {self.flushes} "
                f"flushes), {len(self.torn)} torn (bootloader view {loader}, Linux view {linux})"
                + (f", {noted} noted" if noted else ""))


def enumerate_states(fs: str, base: Path, log: Path, offset: int, size: int, want: Expected,
                     work: Path, *, seed: int, limit: int | None = None,
                     subsets_per_epoch: int = 16, exhaustive: int = 4, torn: int = 1,
                     report: Callable[[Verdict], None] | None = None) -> Enumeration:
    """Judge the states of one recorded sync; limit: a seeded sample of that many states."""
    entries = read_log(log)
    every = states(entries, seed=seed, subsets_per_epoch=subsets_per_epoch,
                   exhaustive=exhaustive, torn=torn)
    chosen = every
    if limit is not None and len(every) > limit:
        # Keep the prefixes' order (cheap to apply) but sample evenly across the log.
        rng = random.Random(seed)
        order = {id(st): i for i, st in enumerate(every)}
        chosen = sorted(rng.sample(every, limit), key=lambda st: order[id(st)])
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    image = Image(base, work / "state.img")
    verdicts = []
    try:
        for st in chosen:
            path = image.move_to(st)
            loader, linux, fsck = judge(fs, path, offset, size, want, scratch)
            v = Verdict(st, loader, linux, fsck)
            verdicts.append(v)
            if report is not None:
                report(v)
    finally:
        image.close()
    return Enumeration(fs, verdicts, sum(e.is_write for e in entries),
                       sum(e.is_flush for e in entries))


def around_commit(fs: str, base: Path, log: Path, offset: int, size: int, want: Expected,
                  work: Path) -> tuple[tuple[State, View, Path], tuple[State, View, Path]]:
    """The two prefixes of the log on either side of the commit, each with the bootloader's
    view and its disk image: the last the bootloader reads as the old pair (the new one
    complete beside it) and the first it reads as the new (the old one not yet removed).

    Found by bisection over the prefixes (the view of a prefix is old until the commit
    write, new from it on): a handful of states judged, not the whole log.
    """
    writes = [e for e in read_log(log) if e.is_write]
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    image = Image(base, work / "bisect.img")

    def prefix(n: int) -> State:
        return State(f"prefix {n}", tuple(writes[:n]), last_seq=writes[n - 1].seq if n else 0)

    def judged(n: int) -> View:
        path = image.move_to(prefix(n))
        return view_of(Reader(fs, path, offset, scratch), want,
                       "grub" if fs == "esp" else "extlinux")

    try:
        if judged(0).pair != "old" or judged(len(writes)).pair != "new":
            raise AssertionError(f"{log}: the log does not lead from the old pair to the new")
        lo, hi = 0, len(writes)  # lo reads old, hi reads new
        while hi - lo > 1:
            mid = (lo + hi) // 2
            pair = judged(mid).pair
            if pair not in ("old", "new"):
                raise AssertionError(f"prefix {mid} reads {pair!r}")
            lo, hi = (mid, hi) if pair == "old" else (lo, mid)
        out = []
        for n in (lo, hi):
            view = judged(n)
            copy = work / f"prefix-{n}.img"
            shutil.copyfile(image.path, copy)
            out.append((prefix(n), view, copy))
    finally:
        image.close()
    return out[0], out[1]


# ---------------------------------------------------------------- recording one sync


DISK_MIB = 64  # ext4 on a partition this small gets 1 KiB blocks, as mkfs makes it
APPEND_ROOT = "root=LABEL=ssiroot"


@dataclass(frozen=True)
class Recording:
    fs: str
    base: Path  # the disk before the boot
    log: Path  # every write and flush of the boot, dm-log-writes format
    offset: int  # the boot partition's first byte on the disk
    size: int
    want: Expected
    console: Path


def _random_file(path: Path, size: int, seed: int) -> Path:
    # Random bytes: a block allocated but never written reads as zeros, and zeros
    # would hide such a torn file from the hash.
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def _shared_root(work: Path, name: str, kernel: Path, initrd: Path,
                 older_loaders: bool = False) -> Path:
    """A shared root with this pair; older_loaders: shim, MokManager and GRUB as another
    version of their packages would be (here: the host's files, a sector appended)."""
    tree = images.shared_root_tree(work / f"{name}-tree")
    if older_loaders:
        for path in _loader_files(tree):
            path.write_bytes(_older(path.read_bytes()))
    shutil.copyfile(kernel, tree / "boot" / "vmlinuz")
    shutil.copyfile(initrd, tree / "boot" / "initrd.img")
    publish_manifest(tree / "boot" / "vmlinuz", tree / "boot" / "initrd.img")
    pair_mib = (kernel.stat().st_size + initrd.stat().st_size) >> 20
    return images.ext4_image(work / f"{name}-root.img", tree, size_mb=48 + pair_mib,
                             label=cluster.ROOT_LABEL, uuid=cluster.ROOT_UUID)


def _boot_node2(kernel: Path, ramdisk: Path, shared: Path, disk: Path, console: Path,
                log: Path | None, timeout: float) -> dict[str, str]:
    """One boot of node 2 against a shared root; log: record the boot disk's writes there."""

    config = VmConfig(kernel=kernel, initrd=ramdisk, append=console_args([APPEND_ROOT]),
                      disks=[Disk(shared, extra=",snapshot=on")], nics=[Nic(cluster.MAC_N2)])
    if log is None:
        config.disks.append(Disk(disk))
    else:
        log.write_bytes(b"")
        config.extra += [
            "-blockdev", f"driver=file,filename={disk},node-name=bootfile",
            "-blockdev", f"driver=file,filename={log},node-name=logfile",
            "-blockdev", "driver=blklogwrites,node-name=bootlog,file=bootfile,log=logfile,"
                         "log-sector-size=512,log-super-update-interval=1",
            # No write-zeroes or discards: QEMU 7.2 logs concurrent write-zeroes at the
            # wrong place, and a discard has no data to replay.
            "-device", "virtio-blk-pci,drive=bootlog,write-zeroes=off,discard=off"]
    with Vm(config, console) as vm:
        env = vm.node_env(timeout)
        vm.wait_exit(60)
    return env


Pairs = tuple[tuple[Path, Path], tuple[Path, Path]]


def record(fs: str, work: Path, kernel: Path, ramdisk: Path, *, start: str = "synced",
           pairs: Pairs | None = None, timeout: float = 300.0) -> Recording:
    """Boot node 2 once against a new pair and record every write to its boot disk.

    fs: ext4 or vfat (extlinux), or esp: an EFI System Partition as lilo.ssi
    --provision --fs esp makes it, into which the agent installs shim and GRUB
    from the shared root (images.shared_root_tree carries the host's) beside
    the pair and EFI/BOOT/grub.cfg. Node 2 boots with -kernel under SeaBIOS all
    the same: the agent keeps a partition with an EFI directory as an ESP.
    pairs: (old, new) (kernel, ramdisk) files; by default random bytes (the
    sync never boots them): the old one a 1.4 MiB "kernel" and a 2.2 MiB
    "ramdisk", the new one 1.5 and 2.5 MiB. Real pairs make the cut disks
    bootable (test_crash_states boots ESP states under OVMF); the disk grows
    to hold both.
    start: what the partition holds before the recorded boot:
      synced  the old pair, put there by the agent itself (a priming boot);
      first   nothing (provisioned, never synced);
      legacy  the old pair in the layout of ssi-boot before slots
              (extlinux.conf naming ssi/vmlinuz-<hash>; written from the host;
              not for esp, which had no layout before the slots);
      update  esp only: as synced, but the priming boot's shared root held
              other versions of shim and GRUB (esp_loaders(older=True)): the
              recorded sync replaces them too, as after a package update.
    """

    if fs == "esp" and start == "legacy":
        raise ValueError("an ESP has no layout before the slots")
    if fs != "esp" and start == "update":
        raise ValueError("only an ESP holds loaders the sync updates")
    work.mkdir(parents=True, exist_ok=True)
    if pairs is None:
        pairs = ((_random_file(work / "old-vmlinuz", 1400 * 1024, 1),
                  _random_file(work / "old-initrd.img", 2200 * 1024, 2)),
                 (_random_file(work / "new-vmlinuz", 1500 * 1024, 3),
                  _random_file(work / "new-initrd.img", 2500 * 1024, 4)))
    old, new = pairs
    append = local_append(console_args([APPEND_ROOT]))
    base = work / f"{fs}-{start}-base.img"
    base.unlink(missing_ok=True)
    # Both pairs side by side at the commit, the loaders, FAT's own room.
    both_mib = sum(p.stat().st_size for p in (*old, *new)) >> 20
    done = provision(base, fs=fs, size_mib=max(DISK_MIB, both_mib + 24),
                     label=cluster.BOOT_LABEL)
    if start in ("synced", "update"):
        env = _boot_node2(kernel, ramdisk,
                          _shared_root(work, "old", *old, older_loaders=start == "update"),
                          base, work / f"{fs}-{start}-priming.log", None, timeout)
        if env.get("SSI_SYNC") != "updated":
            raise AssertionError(f"the priming boot did not sync: {env}")
    elif start == "legacy":
        write_legacy(base, fs, done.start, old, append)
    elif start != "first":
        raise ValueError(f"unknown start {start!r}")
    disk = work / f"{fs}-{start}-disk.img"
    shutil.copyfile(base, disk)
    log = work / f"{fs}-{start}-writes.log"
    console = work / f"{fs}-{start}-console.log"
    env = _boot_node2(kernel, ramdisk, _shared_root(work, "new", *new), disk, console, log,
                      timeout)
    if env.get("SSI_SYNC") != "updated":
        raise AssertionError(f"the recorded boot did not sync: SSI_SYNC={env.get('SSI_SYNC')!r} "
                             f"({console})")
    hashes = [xxhash.xxh3_128_hexdigest(p.read_bytes()) for p in (*old, *new)]
    want = Expected((hashes[0], hashes[1]), (hashes[2], hashes[3]), append, append,
                    old_bootable=start != "first",
                    loaders=esp_loaders() if fs == "esp" else (),
                    old_loaders=esp_loaders(older=True) if start == "update" else ())
    return Recording(fs, base, log, done.start, done.size, want, console)


def _older(data: bytes) -> bytes:
    return data + b"\xa5" * SECTOR


def _loader_files(tree: Path) -> list[Path]:
    """The loaders a shared root tree holds at Debian's paths."""
    return [p for _t, src, _r in ESP_LOADERS if (p := tree / src.lstrip("/")).is_file()]


def esp_loaders(older: bool = False) -> tuple[tuple[str, str], ...]:
    """(path on the ESP, xxh3_128) of shim, then GRUB: the host's files at Debian's paths,
    which images.shared_root_tree copies into every shared root; older: as
    _shared_root(older_loaders=True) changes them."""
    change = _older if older else bytes
    found = {target: xxhash.xxh3_128_hexdigest(change(Path(src).read_bytes()))
             for target, src, required in ESP_LOADERS if required}
    return tuple(sorted(found.items(), key=lambda item: not item[0].endswith("BOOTX64.EFI")))


def legacy_config(kernel: str, initrd: str, sizes: tuple[int, int], append: str) -> bytes:
    """extlinux.conf as ssi-boot wrote it before the slot layout (disk_sync.py)."""
    lines = ["# ssi-boot local boot partition, written by linuxrc (disk_sync) and lilo.ssi "
             "--local-only.\n",
             "# Replaced whole at every sync: change the cluster's kernel arguments, not "
             "this file.\n"]
    for role, digest, size in (("kernel", kernel, sizes[0]), ("initrd", initrd, sizes[1])):
        name = f"ssi/{'vmlinuz' if role == 'kernel' else 'initrd'}-{digest}"
        lines.append(f"# ssi-pair {role} {name} size={size} xxh3_128={digest}\n")
    lines.append("SERIAL 0 9600\n" if "console=ttyS0" in append else "")
    lines.append(f"DEFAULT ssi\nPROMPT 0\nTIMEOUT 0\nLABEL ssi\n  LINUX /ssi/vmlinuz-{kernel}\n"
                 f"  INITRD /ssi/initrd-{initrd}\n  APPEND {append}\n")
    return "".join(lines).encode()


def write_legacy(image: Path, fs: str, offset: int, pair: tuple[Path, Path],
                 append: str) -> None:
    """Put pair on the partition in the pre-slot layout, from the host (mtools for FAT)."""

    k, i = (xxhash.xxh3_128_hexdigest(p.read_bytes()) for p in pair)
    config = legacy_config(k, i, (pair[0].stat().st_size, pair[1].stat().st_size), append)
    files = {f"ssi/vmlinuz-{k}": pair[0].read_bytes(), f"ssi/initrd-{i}": pair[1].read_bytes(),
             "extlinux.conf": config}
    if fs == "vfat":
        target = f"{image}@@{offset}"
        run_tool(["mmd", "-i", target, "::/ssi"])
        for name, data in files.items():
            tmp = image.parent / "legacy.tmp"
            tmp.write_bytes(data)
            result = run_tool(["mcopy", "-o", "-i", target, str(tmp), f"::/{name}"])
            if result.returncode:
                raise RuntimeError(result.stderr.decode(errors="replace"))
            tmp.unlink()
        return
    with attach(image) as (part, _), mounted(part) as mnt:
        (mnt / "ssi").mkdir()
        for name, data in files.items():
            (mnt / name).write_bytes(data)
