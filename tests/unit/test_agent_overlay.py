"""ssi.overlay=tmpfs: a real overlayfs over a directory (root), and its option string."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from linuxrc_agent import overlay
from linuxrc_agent.mounts import is_mountpoint
from linuxrc_agent.syscalls import MNT_DETACH, umount2


def test_options() -> None:
    assert overlay.options("/run/ssi/lower", "/run/ssi/overlay") == (
        "lowerdir=/run/ssi/lower,upperdir=/run/ssi/overlay/upper,"
        "workdir=/run/ssi/overlay/work")
    for bad in ("/a,b", "/a:b", "/a\\b"):
        with pytest.raises(ValueError, match="cannot take a path"):
            overlay.options(bad, "/run/ssi/overlay")


def test_writes_land_in_the_tmpfs_and_the_lower_stays_as_it_was(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    lower, layer, merged = tmp_path / "lower", tmp_path / "layer", tmp_path / "merged"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "motd").write_text("shared\n")
    (lower / "gone").write_text("x")
    lower.chmod(0o711)
    try:
        overlay.mount_overlay(str(lower), str(merged), str(layer))
        # A retried stage finds the tmpfs mounted and does not stack a second one.
        assert is_mountpoint(str(layer)) and is_mountpoint(str(merged))
        assert (merged.stat().st_mode & 0o7777) == 0o711  # the shared root's own mode
        (merged / "etc" / "motd").write_text("this node\n")  # copy-up
        (merged / "new").write_text("new\n")
        (merged / "gone").unlink()  # a whiteout in the upper layer
        assert (merged / "etc" / "motd").read_text() == "this node\n"
        assert sorted(os.listdir(lower)) == ["etc", "gone"]
        assert (lower / "etc" / "motd").read_text() == "shared\n"
        assert (layer / "upper" / "new").read_text() == "new\n"
    finally:
        for path in (merged, layer):
            if is_mountpoint(str(path)):
                umount2(str(path), MNT_DETACH)
