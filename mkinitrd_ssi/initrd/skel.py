"""The static part of every ramdisk: the packaged ramdisk_skel/, then the admin's layers
(ROOT/etc/ssi/ramdisk.d/ or --skel DIR) on top, and the manifest that records where
each member of the image came from (docs/architecture.md, "The ramdisk").
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mkinitrd_ssi import cli
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.initrd.cpio import Archive, Member, walk
from mkinitrd_ssi.run import log

RAMDISK_D = "/etc/ssi/ramdisk.d"  # an admin's files, on top of the packaged skeleton
MANIFEST = "etc/ssi/image.manifest"  # path<TAB>origin of every member: --list -v reads it


def packaged_skel() -> Path:
    """ramdisk_skel/: package data of an installed wheel (setup.py puts it there), else the
    top-level directory of the checkout this module runs from (an editable install)."""
    # The package's directory, as importlib.resources.files would give it for a package
    # on a filesystem, without its import (zipfile and more: 5 ms of every command).
    inside = Path(__file__).resolve().parent.parent / "ramdisk_skel"
    if inside.is_dir():
        return inside
    return Path(__file__).resolve().parent.parent.parent / "ramdisk_skel"


SKEL = packaged_skel()


@dataclass(frozen=True)
class Layer:
    """A tree copied into the image: the packaged skeleton, then the admin's layers."""

    path: Path
    origin: str  # the manifest's word for it
    shown: str = ""  # how the manifest names the layer's directory

    @property
    def packaged(self) -> bool:
        return self.origin == "skel"

    def source_of(self, rel: str) -> str:
        """For messages: the file on this machine."""
        return f"ramdisk_skel/{rel}" if self.packaged else str(self.path / rel)

    def origin_of(self, rel: str) -> str:
        # The skeleton's path in the image is its path in ramdisk_skel/: no need to repeat it.
        return self.origin if self.packaged else f"{self.origin} {self.shown}/{rel}"


def skel_layers(extra: Sequence[Path], root: cli.Root, skel: Path | None = None) -> list[Layer]:
    """The packaged skeleton, then --skel DIRs (extra) or else ROOT/etc/ssi/ramdisk.d."""
    skel = skel or SKEL
    if not skel.is_dir():
        raise SsiError(f"{skel}: no ramdisk skeleton; this ssi-boot is installed incompletely",
                       hint="reinstall ssi-boot (its wheel carries ramdisk_skel/)")
    layers = [Layer(skel, "skel")]
    for given in extra:
        if not given.is_dir():
            raise SsiError(f"{given}: no such directory (from --skel)")
        layers.append(Layer(given, "--skel", str(given.resolve())))
    ramdisk_d = root(RAMDISK_D)
    if not extra and ramdisk_d.is_dir():
        # Named from ROOT, not from where the tree is: the image depends on its contents only.
        layers.append(Layer(ramdisk_d, "ramdisk.d", "ROOT" + RAMDISK_D))
    return layers


def add_skel(arc: Archive, layers: Sequence[Layer]) -> None:
    """Copy the layers in order, a later one replacing an earlier one's file, none
    replacing what the builder wrote: the agent relies on those (the table, its modules)."""
    from_layers: set[str] = set()
    for layer in layers:
        for rel, src in walk(layer.path):
            if src.name == ".gitkeep":  # only there to keep an empty directory in git
                continue
            directory = src.is_dir() and not src.is_symlink()
            if directory and rel in arc:
                continue  # the builder's or an earlier layer's: its mode stays
            if rel in arc:
                if rel not in from_layers:
                    log.warning("%s ignored: the builder writes /%s itself (origin: %s)",
                                layer.source_of(rel), rel, arc.origins[rel])
                    continue
                if stat.S_ISDIR(arc.entries[rel].mode):
                    raise SsiError(f"{layer.source_of(rel)}: a file where an earlier layer "
                                   f"has the directory /{rel}")
                arc.remove(rel)
            # The packaged files' modes are git's and pip's (0644 or 0755) anyway: made
            # exact here, so an editable and a wheel install build the same image.
            mode = None if not layer.packaged else \
                0o755 if src.stat().st_mode & 0o111 else 0o644
            with arc.origin(layer.origin_of(rel)):
                if directory:
                    arc.dir(rel, mode or stat.S_IMODE(src.stat().st_mode))
                else:
                    arc.put(rel, src, mode)
            from_layers.add(rel)
        log.info("%s: copied from %s", layer.origin, layer.path)


def add_manifest(arc: Archive) -> None:
    """etc/ssi/image.manifest: each member's path and origin, so that --list -v can tell
    from the image alone what came from where."""
    origins = {**arc.origins, MANIFEST: "generated"}
    lines = ["# mkinitrd.ssi: every member of this image, a tab, where it came from\n"]
    for path in sorted(origins, key=os.fsencode):
        if any(c in path + origins[path] for c in "\t\n"):
            raise SsiError(f"{path!r}: a tab or newline in a ramdisk path is not supported",
                           hint="rename it")
        lines.append(f"{path}\t{origins[path]}\n")
    arc.data(MANIFEST, "".join(lines).encode())


def read_manifest(members: Sequence[Member]) -> dict[str, str]:
    """path -> origin, from an image's manifest; empty when it has none (another builder)."""
    for m in members:
        if m.path == MANIFEST:
            text = m.data.decode(errors="replace")
            return dict(line.split("\t", 1) for line in text.splitlines()
                        if "\t" in line and not line.startswith("#"))
    return {}
