"""A throwaway Debian chroot holding the anchors (dracut, initramfs-tools), cached.

`debootstrap --variant=minbase bookworm` into $SSI_CACHE/anchors/chroot, then
apt-get install inside it: nothing is installed on the host. Every command
that needs mounts (debootstrap itself, apt, the builds) runs in a private
mount namespace (`unshare --mount --propagation private`), so its bind mounts
(/dev, /proc, the kernel's modules, the output directory) exist only there and
vanish with it, even when the run is killed; the script also unmounts them on
exit. The chroot is reused while its stamp names the same package list; a
stamp naming a subset of it (same recipe and suite) gets the missing packages
installed with apt in place, then a stamp naming the whole list.

    .venv/bin/python bench/anchors.py            # build (once) and print the versions
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The chroot helpers (private mount namespace, binds, debootstrap) are shared with the
# VM tests' Debian shared root.
from vm_tests import debianroot  # noqa: E402

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("dracut-core", "initramfs-tools", "busybox", "kmod", "zstd", "cpio", "udev",
            # dracut's own NFS root (bench_nfsroot): the nfs and network modules, mount.nfs;
            # dracut-network brings iproute2, isc-dhcp-client and arping, and its
            # network-legacy module refuses to install without pgrep (procps).
            "dracut-network", "nfs-common", "procps")
RECIPE = "1"

def cache_root() -> Path:
    env = os.environ.get("SSI_CACHE")
    return Path(env) if env else REPO / ".cache"


def chroot_dir() -> Path:
    return cache_root() / "anchors" / "chroot"


def _stamp() -> Path:
    return cache_root() / "anchors" / "chroot.ok"


def _stamp_text() -> str:
    return f"recipe={RECIPE} suite={SUITE} packages={','.join(PACKAGES)}\n"


def _stamped_packages() -> tuple[str, ...] | None:
    """The package list a valid stamp of this recipe and suite names, else None."""
    try:
        text = _stamp().read_text()
    except FileNotFoundError:
        return None
    head, sep, names = text.rstrip("\n").partition(" packages=")
    if not sep or head != f"recipe={RECIPE} suite={SUITE}":
        return None
    return tuple(names.split(","))


# Debian's dracut-network adds its ifcfg module, and with it the network stack and every
# NIC driver, to every image dracut builds (/etc/dracut.conf.d/11-ifcfg.conf); the anchors
# name their modules (bench_initrd's dracut row has no network), so the file is diverted.
DIVERT_IFCFG = ("dpkg-divert --local --rename --divert /etc/dracut.conf.d/11-ifcfg.conf.off "
                "--add /etc/dracut.conf.d/11-ifcfg.conf")


def _apt_install(packages: Sequence[str], logf: Path) -> None:
    # Diverted before the install: dpkg then unpacks the file under the other name.
    install = (f"{DIVERT_IFCFG} && apt-get update -q && apt-get install -y -q "
               "--no-install-recommends " + " ".join(packages) + " && apt-get clean")
    res = run_in_chroot(install)
    with open(logf, "a") as f:
        f.write(res.stdout + res.stderr)
    if res.returncode != 0:
        raise SystemExit(f"anchors: apt-get install in the chroot failed, see {logf}")


def run_in_chroot(script: str, *, moddir: Path | None = None, kver: str = "",
                  out: Path | None = None, capture: bool = True,
                  timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run `script` (sh) in the chroot with /dev, /proc and optionally the kernel's
    modules (read-only, at /lib/modules/KVER) and `out` (at /bench) bound in."""
    return debianroot.run_in_chroot(chroot_dir(), script, moddir=moddir, kver=kver, out=out,
                                    out_at="/bench", capture=capture, timeout=timeout)


def ensure_chroot(log: Path | None = None) -> dict[str, str]:
    """The chroot (built if missing or stale); returns {package: version} inside it."""
    root = chroot_dir()
    root.parent.mkdir(parents=True, exist_ok=True)
    # Two benches started at once (bench_initrd, bench_nfsroot) must not both build it.
    with open(root.parent / "chroot.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _update_chroot(root, log)
    res = run_in_chroot("dpkg-query -W -f '${Package} ${Version}\\n' " + " ".join(PACKAGES))
    if res.returncode != 0:
        raise SystemExit(f"anchors: chroot unusable:\n{res.stderr}")
    return dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)


def _update_chroot(root: Path, log: Path | None) -> None:
    stamped = _stamped_packages()
    missing = [p for p in PACKAGES if stamped is not None and p not in stamped]
    if stamped is not None and missing and set(stamped) <= set(PACKAGES):
        # Packages added to the list: apt installs them into the chroot as it stands
        # (seconds) instead of a new debootstrap (minutes). The stamp goes first, so a
        # run killed half-way leaves no stamp and the next one starts from scratch.
        if os.geteuid() != 0:
            raise SystemExit("anchors: adding packages to the chroot needs root (chroot)")
        logf = log or root.parent / "chroot-build.log"
        print(f"anchors: apt-get install {' '.join(missing)} into {root} ...", file=sys.stderr)
        _stamp().unlink()
        _apt_install(missing, logf)
        _stamp().write_text(_stamp_text())
    if not (_stamp().is_file() and _stamp().read_text() == _stamp_text()):
        if os.geteuid() != 0:
            raise SystemExit("anchors: building the chroot needs root (debootstrap, chroot)")
        if shutil.which("debootstrap") is None:
            raise SystemExit("anchors: debootstrap missing: apt-get install debootstrap")
        _stamp().unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        logf = log or root.parent / "chroot-build.log"
        print(f"anchors: debootstrap {SUITE} into {root} (log {logf}) ...", file=sys.stderr)
        logf.write_text("")
        ok = debianroot.debootstrap(root, logf, suite=SUITE, mirror=MIRROR)
        if not ok:
            raise SystemExit(f"anchors: debootstrap failed, see {logf}")
        _apt_install(PACKAGES, logf)
        _stamp().write_text(_stamp_text())


def main() -> int:
    for name, version in ensure_chroot().items():
        print(f"{name} {version}")
    print(f"chroot: {chroot_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
