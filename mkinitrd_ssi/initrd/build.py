"""One ramdisk build, from options and the node table already parsed, to the image file.

The table's bytes are those the caller parsed and validated: the image carries
exactly the table that was checked (docs/architecture.md, "The ramdisk").
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import linuxrc_agent
from linuxrc_agent.ssitab import Ssitab
from mkinitrd_ssi.atomic import replace_if_changed
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.initrd import freeze, image, skel
from mkinitrd_ssi.initrd.contents import (
    BUSYBOX,
    add_agent,
    add_base,
    add_busybox,
    add_libraries,
    add_modules,
)
from mkinitrd_ssi.initrd.cpio import Archive
from mkinitrd_ssi.initrd.image import Compression
from mkinitrd_ssi.initrd.skel import Layer
from mkinitrd_ssi.run import log

AGENT_PACKAGE = Path(linuxrc_agent.__file__).resolve().parent


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    moddir: Path
    firmware_dir: Path
    layers: tuple[Layer, ...]
    compress: Compression = Compression.ZSTD
    compress_level: int | None = None
    add_modules: tuple[str, ...] = ()
    # The shared root's filesystem types (rootfs.py): wanted like the defaults.
    root_filesystems: tuple[str, ...] = ()
    omit_modules: tuple[str, ...] = ()
    busybox: Path | None = BUSYBOX  # None: no rescue shell
    dry_run: bool = False
    debug: bool = False


def cache_root() -> Path:
    env = os.environ.get("SSI_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ssi-boot"


def source_date_epoch() -> int:
    text = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        value = int(text)
    except ValueError:
        raise SsiError(f"SOURCE_DATE_EPOCH={text!r} is not a number of seconds") from None
    if value < 0:
        raise SsiError(f"SOURCE_DATE_EPOCH={text!r} is negative")
    return value


def _validate(data: bytes) -> Callable[[Path], None]:
    """The staged file holds exactly the image built. That the image decodes to the
    archive is checked as it is made (image.build: every new segment decompressed, every
    run's headers read; cached segments were checked before they were cached), rather
    than by decompressing all of it again here: a fifth of each rebuild (0.15 s)."""
    def check(staged: Path) -> None:
        if staged.read_bytes() != data:
            raise SsiError(f"the image written to {staged} does not read back as built")
    return check


def build(opts: BuildOptions, table: Ssitab, table_bytes: bytes,
          agent_package: Path | None = None) -> None:
    """Write the image (unless dry_run) and print one line saying what was done."""
    start = time.monotonic()
    epoch = source_date_epoch()
    cache = cache_root()
    arc = Archive()
    add_base(arc)
    frozen = freeze.frozen_agent(agent_package or AGENT_PACKAGE, cache, verbose=opts.debug)
    with arc.origin("agent"):
        elves = add_agent(arc, frozen)
    with arc.origin("busybox"):
        extra = add_busybox(arc, opts.busybox) if opts.busybox is not None else []
    with arc.origin("library"):
        libs = add_libraries(arc, frozen, elves, extra, cache)
    log.info("libraries: %d paths for %d ELF files of the agent", libs, len(elves))
    with arc.origin("ssitab"):
        arc.data("etc/ssitab", table_bytes)
    with arc.origin("module"):
        n_modules = add_modules(arc, opts.moddir, cache, opts.firmware_dir,
                                opts.add_modules, opts.omit_modules,
                                tuple(f"fs-{t}" for t in opts.root_filesystems))
    skel.add_skel(arc, opts.layers)
    skel.add_manifest(arc)

    segments = image.SegmentCache(cache / "segments")
    data = image.build(list(arc.entries.values()), opts.compress, epoch, segments,
                       opts.compress_level)
    size = f"{len(data) / 1e6:.1f} MB ({opts.compress})"
    counts = f"{len(arc)} files, {n_modules} modules, {len(table)} nodes"
    if opts.dry_run:
        print(f"{opts.output}: would write {size}, {counts}, {time.monotonic() - start:.2f} s")
        return
    changed = replace_if_changed(opts.output, data, validate=_validate(data), backup=False)
    print(f"{opts.output}: {'written' if changed else 'unchanged'}, {size}, {counts}, "
          f"{time.monotonic() - start:.2f} s")
    segments.prune()
    image.prune(cache / "modules")


def list_image(path: Path, verbose: bool) -> int:
    """The member paths, as cpio -t prints them; verbose: mode, size, link, origin too."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SsiError(f"{path}: {e.strerror}") from None
    members = image.read_image(data)
    if not verbose:
        sys.stdout.write("".join(f"{m.path}\n" for m in members))
        return 0
    origins = skel.read_manifest(members)
    if not origins:
        log.warning("%s has no /%s: where its members came from is unknown", path,
                    skel.MANIFEST)
    # "ramdisk.d ROOT/etc/ssi/ramdisk.d/etc/motd": the word in a column, the source after
    words = {m.path: origins.get(m.path, "-").partition(" ") for m in members}
    width = max(len(w[0]) for w in words.values()) if words else 0
    out = []
    for m in members:
        word, _, source = words[m.path]
        size = f"{m.rdev[0]},{m.rdev[1]}" if stat.S_ISCHR(m.mode) or stat.S_ISBLK(m.mode) \
            else str(m.size)
        line = f"{stat.filemode(m.mode)} {size:>10} {word:<{width}} {m.path}"
        line += f" -> {m.target}" if m.target is not None else ""
        out.append(line + (f"  ({source})\n" if source else "\n"))
    sys.stdout.write("".join(out))
    return 0
