"""ssi.overlay=tmpfs: the shared root read-only below, a tmpfs above, overlayfs on top.

Every node writes (lost at reboot) and the shared root is never touched, NFS
export or disk alike. The layers live under /run/ssi, which switch_root moves
into the new root with the rest of /run, so they stay reachable, and visible
to the node, after the switch:

    /run/ssi/lower             the shared root as mounted, read-only
    /run/ssi/overlay           tmpfs: upper/ (what the node wrote), work/ (overlayfs's)
    /newroot                   overlay: lowerdir=/run/ssi/lower, upperdir=.../upper

The local boot partition's sync, which runs after this, reads the shared
root's pair from the lower layer, not through the overlay: the node's writes
(an admin's in the rescue shell, say) must never reach its boot partition.
"""

from __future__ import annotations

import os

from linuxrc_agent.mounts import is_mountpoint
from linuxrc_agent.syscalls import MS_NODEV, MS_NOSUID, mount

LOWER = "/run/ssi/lower"
LAYER = "/run/ssi/overlay"
KINDS = ("tmpfs",)


def options(lower: str, layer: str) -> str:
    """overlayfs's mount data for lower under a writable layer directory."""
    for path in (lower, layer):
        # overlayfs splits its options at commas and lowerdir at colons.
        if any(c in path for c in ",:\\"):
            raise ValueError(f"{path}: overlayfs cannot take a path with , : or \\")
    return f"lowerdir={lower},upperdir={layer}/upper,workdir={layer}/work"


def mount_overlay(lower: str, target: str, layer: str = LAYER) -> None:
    """A tmpfs at layer, and the overlay of lower under it on target.

    Idempotent up to the overlay itself: a stage retried after the rescue
    shell reuses a tmpfs mounted by the first try.
    """
    os.makedirs(layer, mode=0o755, exist_ok=True)
    if not is_mountpoint(layer):
        mount("tmpfs", layer, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    upper = os.path.join(layer, "upper")
    os.makedirs(upper, mode=0o755, exist_ok=True)
    os.makedirs(os.path.join(layer, "work"), mode=0o755, exist_ok=True)
    # The merged root directory takes the upper directory's owner and mode: make
    # them the shared root's own, or / of every node would be what mkdir made.
    st = os.stat(lower)
    os.chown(upper, st.st_uid, st.st_gid)
    os.chmod(upper, st.st_mode & 0o7777)
    os.makedirs(target, mode=0o755, exist_ok=True)
    mount("overlay", target, "overlay", 0, options(lower, layer))
