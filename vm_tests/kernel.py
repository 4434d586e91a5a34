"""The Debian cloud kernel the VM tests boot: fetched once with apt, unpacked into the cache.

`python -m vm_tests.kernel` fetches it (and prints where it is); `kernel()`
returns it, fetching on first use. A fetched kernel is reused without asking
apt again, so the tests run offline once the cache holds one.

Layout: $SSI_CACHE/kernel/<KVER>/{boot,lib/modules/<KVER>} as `dpkg -x` leaves
it, and $SSI_CACHE/kernel/current, a symlink to the <KVER> in use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.run import run

META_PACKAGE = "linux-image-cloud-amd64"
REPO = Path(__file__).resolve().parent.parent


class Kernel(NamedTuple):
    vmlinuz: Path
    moddir: Path  # .../lib/modules/KVER, as mkinitrd.ssi --moddir wants it
    kver: str


def cache_dir() -> Path:
    env = os.environ.get("SSI_CACHE")
    return (Path(env) if env else REPO / ".cache") / "kernel"


def _locate(tree: Path, kver: str) -> Kernel | None:
    vmlinuz = tree / "boot" / f"vmlinuz-{kver}"
    # Debian 12 packages ship /lib/modules; later ones the merged-/usr path.
    for moddir in (tree / "lib/modules" / kver, tree / "usr/lib/modules" / kver):
        if vmlinuz.is_file() and (moddir / "modules.dep").is_file():
            return Kernel(vmlinuz, moddir, kver)
    return None


def cached() -> Kernel | None:
    current = cache_dir() / "current"
    if not current.is_symlink():
        return None
    kver = os.readlink(current)
    return _locate(cache_dir() / kver, kver)


def _versioned_package() -> str:
    """The linux-image-KVER package the meta-package currently depends on."""
    out = run(["apt-cache", "depends", META_PACKAGE], capture=True, check=False)
    for line in out.stdout.decode(errors="replace").splitlines():
        key, _, value = line.strip().partition(":")
        name = value.strip()
        if key == "Depends" and name.startswith("linux-image-") and name[12:13].isdigit():
            return name
    raise SsiError(f"apt knows no versioned dependency of {META_PACKAGE}",
                   hint="run apt-get update (the package lists may be missing)")


def fetch(refresh: bool = False) -> Kernel:
    """Download and unpack the kernel unless the cache already holds one."""
    found = cached()
    if found is not None and not refresh:
        return found
    package = _versioned_package()
    kver = package.removeprefix("linux-image-")
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    found = _locate(base / kver, kver)
    if found is None:
        work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=base))
        try:
            # apt drops to user _apt for downloads; a 0700 temp dir would make it warn.
            work.chmod(0o755)
            run(["apt-get", "download", "-q", package], cwd=str(work), capture=True)
            debs = sorted(work.glob("*.deb"))
            if len(debs) != 1:
                raise SsiError(f"apt-get download {package} left {len(debs)} .deb files")
            tree = work / "tree"
            run(["dpkg", "-x", str(debs[0]), str(tree)])
            # The package ships no modules.dep/alias/softdep: its postinst runs depmod.
            run(["depmod", "-b", str(tree), kver])
            if _locate(tree, kver) is None:
                raise SsiError(f"{debs[0].name} holds no boot/vmlinuz-{kver} with modules")
            shutil.rmtree(base / kver, ignore_errors=True)
            # Rename last: a half-unpacked kernel is never mistaken for a complete one.
            tree.rename(base / kver)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        found = _locate(base / kver, kver)
        assert found is not None
    link = base / ".current.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(kver)
    link.replace(base / "current")
    return found


kernel = fetch


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vm_tests.kernel",
                                     description=f"Fetch {META_PACKAGE} (once) into "
                                     f"{cache_dir()} for the VM tests.")
    parser.add_argument("--refresh", action="store_true",
                        help="ask apt for the newest version even if one is cached")
    args = parser.parse_args(argv)
    try:
        k = fetch(refresh=args.refresh)
    except SsiError as e:
        print(f"vm_tests.kernel: {e}", file=sys.stderr)
        if e.hint:
            print(f"vm_tests.kernel: hint: {e.hint}", file=sys.stderr)
        return 1
    print(f"kver={k.kver}\nvmlinuz={k.vmlinuz}\nmoddir={k.moddir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
