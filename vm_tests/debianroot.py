"""A real Debian 12 shared root for the VM tests: debootstrap, sshd, the ssi-boot wheel, cached.

`debootstrap --variant=minbase bookworm` with PACKAGES into $SSI_CACHE/debianroot/tree,
then the ssi-boot wheel (built from this checkout) in a venv at /opt/ssi-boot with
`lilo.ssi` on PATH through /usr/local/bin, and a small init (INIT) that starts sshd
instead of systemd (systemd under TCG costs minutes). Two stamps: the base (debootstrap,
minutes) is redone only when the package list or the recipe changes; the wheel (seconds)
when a file of the package's source changes. Built as root, in private mount namespaces
(the helpers below, shared with bench/anchors.py), so no mount outlives a killed build.

A test writes its own bits into the tree before exporting it (the node table, the
default pair, the admin's key): they are not part of the cache's identity.

    .venv/bin/python -m vm_tests.debianroot        # build (once) and print the tree's path
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# python3-venv: the wheel's own venv; kmod, iproute2: what an admin looks at on a node;
# udev: libudev for pyudev (no udev daemon runs: the tools fall back to the agent's probe).
PACKAGES = ("openssh-server", "python3", "python3-venv", "kmod", "iproute2", "udev")
RECIPE = "1"
VENV = "/opt/ssi-boot"
INIT_PATH = "/sbin/ssi-test-init"
SSHD_UP = "SSI-SSHD-UP"
# What makes the wheel: a change to any of these rebuilds the tree's venv.
SOURCE = ("linuxrc_agent", "mkinitrd_ssi", "ramdisk_skel", "pyproject.toml", "setup.py")

# Runs in a private mount namespace: /dev and /proc, optional binds, the chroot command;
# the binds vanish with the namespace even when the run is killed.
CHROOT_RUN = r"""
set -eu
C=$CHROOT_DIR
mounted=""
cleanup() {
  for m in $mounted; do umount -R -l "$m" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM
bind() {  # bind SRC DEST [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"
  mounted="$2 $mounted"
  if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}
mount --rbind /dev "$C/dev"; mounted="$C/dev $mounted"
mount -t proc proc "$C/proc"; mounted="$C/proc $mounted"
if [ -n "${CHROOT_MODDIR:-}" ]; then bind "$CHROOT_MODDIR" "$C/lib/modules/$CHROOT_KVER" ro; fi
if [ -n "${CHROOT_OUT:-}" ]; then bind "$CHROOT_OUT" "$C$CHROOT_OUT_AT"; fi
chroot "$C" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive /bin/sh -c "$CHROOT_SCRIPT"
"""

# The node's init: no systemd. The agent has moved /dev and /run (node.env) into the
# root already; the harness reads node.env from the console, then waits for SSHD_UP.
INIT = """#!/bin/sh
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mkdir -p /run/sshd /dev/pts
mount -t devpts devpts /dev/pts 2>/dev/null
echo "SSI-INIT-REACHED pid=$$"
echo "SSI-PROC-CMDLINE: $(cat /proc/cmdline)"
echo "SSI-NODE-ENV-BEGIN"
cat /run/ssi/node.env
echo "SSI-NODE-ENV-END"
# Owners as the node sees them: over NFSv4 without an idmapper they read as nobody.
ls -lnd /root /root/.ssh /root/.ssh/authorized_keys /etc/ssh/ssh_host_ed25519_key \\
    | sed "s/^/SSI-OWNER /"
# sshd forks once it listens: the marker means connections are taken.
if /usr/sbin/sshd -E /run/sshd.log; then echo "SSI-SSHD-UP"
else echo "SSI-SSHD-FAILED"; cat /run/sshd.log; fi
while :; do sleep 3600; done
"""

# Root by key only; no PAM (no logind to talk to); no reverse lookups (no DNS here).
SSHD_CONFIG = """\
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
"""


def cache_root() -> Path:
    env = os.environ.get("SSI_CACHE")
    return Path(env) if env else REPO / ".cache"


def run_in_chroot(root: Path, script: str, *, moddir: Path | None = None, kver: str = "",
                  out: Path | None = None, out_at: str = "/bench", capture: bool = True,
                  timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run `script` (sh) chrooted in `root` with /dev, /proc and optionally a kernel's
    modules (read-only, at /lib/modules/KVER) and `out` (at out_at) bound in."""
    env = {**os.environ, "CHROOT_DIR": str(root), "CHROOT_SCRIPT": script,
           "CHROOT_MODDIR": str(moddir) if moddir else "", "CHROOT_KVER": kver,
           "CHROOT_OUT": str(out) if out else "", "CHROOT_OUT_AT": out_at}
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           CHROOT_RUN], env=env, text=True, capture_output=capture,
                          timeout=timeout, check=False)


def debootstrap(root: Path, logf: Path, *, include: Sequence[str] = (), suite: str = SUITE,
                mirror: str = MIRROR) -> bool:
    """`debootstrap --variant=minbase` into root (appending to logf); True when it worked."""
    argv = ["debootstrap", "--variant=minbase"]
    if include:
        argv.append("--include=" + ",".join(include))
    with open(logf, "a") as f:
        # debootstrap mounts /proc and /sys in the target: a private namespace
        # takes them away even if it fails half-way.
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", *argv,
                               suite, str(root), mirror], stdout=f, stderr=subprocess.STDOUT,
                              check=False)
    return proc.returncode == 0


def available() -> str | None:
    """Why the tree cannot be built here (a reason to skip), or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot)"
    if shutil.which("debootstrap") is None:
        return "debootstrap not installed (make deps: debootstrap, debian-archive-keyring)"
    return None


def base_dir() -> Path:
    return cache_root() / "debianroot"


def tree_dir() -> Path:
    return base_dir() / "tree"


def _base_stamp_text() -> str:
    return f"recipe={RECIPE} suite={SUITE} packages={','.join(PACKAGES)}\n"


def source_digest() -> str:
    """SHA-256 over the wheel's source files (path and bytes)."""
    h = hashlib.sha256()
    for name in SOURCE:
        top = REPO / name
        paths = [top] if top.is_file() else sorted(
            p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for p in paths:
            h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def ensure_tree(log: Path | None = None) -> Path:
    """The tree, built or brought up to date; the lock keeps two test runs from racing."""
    if (why := available()) is not None:
        raise RuntimeError(f"debianroot: {why}")
    base_dir().mkdir(parents=True, exist_ok=True)
    logf = log or base_dir() / "build.log"
    with open(base_dir() / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _ensure_base(logf)
        # Cheap and idempotent: a changed init or sshd setting needs no new debootstrap.
        _configure(tree_dir())
        _ensure_wheel(logf)
    return tree_dir()


def _ensure_base(logf: Path) -> None:
    stamp = base_dir() / "base.ok"
    if stamp.is_file() and stamp.read_text() == _base_stamp_text():
        return
    # The wheel stamp goes with the base: a new base has no venv.
    stamp.unlink(missing_ok=True)
    (base_dir() / "wheel.ok").unlink(missing_ok=True)
    root = tree_dir()
    shutil.rmtree(root, ignore_errors=True)
    logf.write_text("")
    print(f"debianroot: debootstrap {SUITE} into {root} (log {logf}) ...", file=sys.stderr)
    start = time.monotonic()
    if not debootstrap(root, logf, include=PACKAGES):
        raise RuntimeError(f"debianroot: debootstrap failed, see {logf}")
    print(f"debianroot: debootstrap took {time.monotonic() - start:.0f} s", file=sys.stderr)
    stamp.write_text(_base_stamp_text())


def _configure(root: Path) -> None:
    """sshd for root by key, the test init; host keys came from openssh-server's postinst."""
    conf = root / "etc/ssh/sshd_config.d/ssi-test.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(SSHD_CONFIG)
    if not list((root / "etc/ssh").glob("ssh_host_*_key")):
        subprocess.run(["ssh-keygen", "-A", "-f", str(root)], check=True, capture_output=True)
    init = root / INIT_PATH.lstrip("/")
    init.write_text(INIT)
    init.chmod(0o755)
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    (root / "etc/hostname").write_text("ssi-node\n")


def _ensure_wheel(logf: Path) -> None:
    stamp = base_dir() / "wheel.ok"
    digest = source_digest()
    if stamp.is_file() and stamp.read_text() == digest + "\n":
        return
    stamp.unlink(missing_ok=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ssi-wheel-") as tmp:
        wheels = Path(tmp) / "wheels"
        # The host's pip (and its cache) fetches the dependencies as wheels; the chroot's
        # pip installs from them alone: no network inside the chroot.
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels),
                               str(REPO)], text=True, capture_output=True, check=False,
                              timeout=900)
        with open(logf, "a") as f:
            f.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"debianroot: pip wheel failed, see {logf}")
        script = (f"rm -rf {VENV} && python3 -m venv {VENV} && "
                  f"{VENV}/bin/pip install -q --no-index --find-links /wheels "
                  f"/wheels/ssi_boot-*.whl && ln -sf {VENV}/bin/lilo.ssi "
                  "/usr/local/bin/lilo.ssi && /usr/local/bin/lilo.ssi --help >/dev/null")
        res = run_in_chroot(tree_dir(), script, out=wheels, out_at="/wheels", timeout=900)
        with open(logf, "a") as f:
            f.write(res.stdout + res.stderr)
        if res.returncode != 0:
            raise RuntimeError(f"debianroot: installing the wheel failed, see {logf}:\n"
                               f"{res.stderr[-2000:]}")
    print(f"debianroot: wheel installed in {time.monotonic() - start:.0f} s", file=sys.stderr)
    stamp.write_text(digest + "\n")


def main() -> int:
    print(ensure_tree())
    return 0


if __name__ == "__main__":
    sys.exit(main())
