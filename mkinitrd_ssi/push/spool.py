"""The pair a push carries: what it is (sizes, xxh3-128, kernel arguments) and the
spool directory it travels in.

The admin stages `lilo.ssi-<id>/{vmlinuz,initrd.img,ssi-manifest.json}` and
ClusterShell copies that one directory to every stale node. The path is the same
on every node, so one worker serves them all (and, in tree mode, the payload
crosses to each gateway once). The manifest is the shared root's format
(linuxrc_agent.bootpair.manifest) with the kernel arguments, so the sync
checks its copy against it as it would a shared root's. The node also checks
the files before it installs anything: a transfer cut short must fail loudly,
not become a short kernel on the disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from linuxrc_agent.bootpair.fileops import hash_file
from linuxrc_agent.bootpair.kargs import local_append
from linuxrc_agent.bootpair.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    file_id_from_json,
    file_id_json,
)
from linuxrc_agent.bootpair.pair import FileId
from mkinitrd_ssi.errors import SsiError

PREFIX = "lilo.ssi-"
KERNEL = "vmlinuz"
INITRD = "initrd.img"


@dataclass(frozen=True)
class Pair:
    kernel: FileId
    initrd: FileId
    append: str | None  # None: the node's boot config does not say

    def as_dict(self) -> dict[str, Any]:
        return {"kernel": file_id_json(self.kernel), "initrd": file_id_json(self.initrd),
                "append": self.append}

    @classmethod
    def from_dict(cls, data: Any) -> Pair:
        if not isinstance(data, dict):
            raise ValueError(f"not a pair: {data!r}")
        append = data.get("append")
        if append is not None and not isinstance(append, str):
            raise ValueError(f"bad append: {append!r}")
        return cls(file_id_from_json(data.get("kernel"), "kernel"),
                   file_id_from_json(data.get("initrd"), "initrd"), append)

    def ident(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True).encode()
        return xxhash.xxh3_128_hexdigest(canonical)[:16]

    def satisfies(self, wanted: Pair) -> bool:
        """True when a node holding self needs nothing of wanted."""
        return (self.kernel == wanted.kernel and self.initrd == wanted.initrd
                and (self.append is None or self.append == wanted.append))


def wanted_pair(kernel: Path, initrd: Path, cmdline: str) -> Pair:
    # The sync keeps the cluster arguments minus what a loader adds: compare
    # like with like, or every node would look stale forever.
    return Pair(hash_file(kernel), hash_file(initrd), local_append(cmdline))


@dataclass(frozen=True)
class Staged:
    path: Path  # the lilo.ssi-<id> directory, copied whole
    pair: Pair

    @property
    def payload_bytes(self) -> int:
        return self.pair.kernel.size + self.pair.initrd.size


def _link_or_copy(src: Path, dst: Path) -> None:
    # A hard link costs nothing and pins the published inode; across
    # filesystems a copy does the same job.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def manifest_json(pair: Pair) -> bytes:
    return Manifest(ManifestEntry(KERNEL, pair.kernel),
                    ManifestEntry(INITRD, pair.initrd)).to_json(pair.append)


@contextlib.contextmanager
def staged(kernel: Path, initrd: Path, cmdline: str) -> Iterator[Staged]:
    """A temporary spool directory holding the pair and its manifest."""
    with tempfile.TemporaryDirectory(prefix="lilo.ssi-push.") as tmp:
        work = Path(tmp) / "pair"
        work.mkdir()
        _link_or_copy(kernel, work / KERNEL)
        _link_or_copy(initrd, work / INITRD)
        # Hash the staged inodes, not the sources: they are what scp will read.
        pair = wanted_pair(work / KERNEL, work / INITRD, cmdline)
        (work / MANIFEST_NAME).write_bytes(manifest_json(pair))
        final = work.rename(Path(tmp) / f"{PREFIX}{pair.ident()}")
        yield Staged(final, pair)


def _check_spool(spool: Path) -> None:
    try:
        st = os.lstat(spool)
    except OSError as e:
        raise SsiError(f"{spool}: {e.strerror}") from None
    # A directory someone else planted there could feed us a kernel of their choosing.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SsiError(f"{spool}: not a directory of ours (owner {st.st_uid}, "
                       f"mode {stat.filemode(st.st_mode)}); refusing it")
    if not spool.name.startswith(PREFIX):
        raise SsiError(f"{spool}: not a lilo.ssi spool directory (expected {PREFIX}<id>)")
    # In a directory others may write (a /tmp), someone could have made the spool
    # first, or swap it between this check and the install.
    parent = spool.parent
    try:
        pst = os.stat(parent)
    except OSError as e:
        raise SsiError(f"{parent}: {e.strerror}") from None
    if pst.st_uid not in (0, os.geteuid()) or pst.st_mode & 0o022:
        raise SsiError(f"{parent}: the spool's directory is writable by others (owner "
                       f"{pst.st_uid}, mode {stat.filemode(pst.st_mode)}); refusing {spool}",
                       hint="push into a directory only root may write, e.g. "
                       "--remote-spool /run (the default)")


def receive(spool: Path) -> tuple[Path, Path, Pair]:
    """Kernel, ramdisk and description of a pushed spool, after checking every byte."""
    _check_spool(spool)
    path = spool / MANIFEST_NAME
    try:
        manifest, append = Manifest.parse_with_append(path.read_bytes())
    except (OSError, ValueError) as e:
        raise SsiError(f"{path}: unreadable manifest: {e}") from None
    if append is None:
        raise SsiError(f"{path}: no kernel arguments (append)")
    kernel, initrd = spool / KERNEL, spool / INITRD
    for file, want in ((kernel, manifest.kernel.ident), (initrd, manifest.initrd.ident)):
        try:
            got = hash_file(file)
        except OSError as e:
            raise SsiError(f"{file}: {e.strerror}") from None
        if got != want:
            raise SsiError(f"{file}: received {got.size} bytes xxh3 {got.xxh3_128}, "
                           f"expected {want.size} bytes xxh3 {want.xxh3_128}",
                           hint="the transfer was cut short or corrupted; push again")
    return kernel, initrd, Pair(manifest.kernel.ident, manifest.initrd.ident, append)


def discard(spool: Path) -> None:
    if spool.name.startswith(PREFIX) and not spool.is_symlink():
        shutil.rmtree(spool, ignore_errors=True)
