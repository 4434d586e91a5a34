"""The wheel alone, as an admin gets it: built from a tree without .git, installed into a
fresh virtualenv that never sees the checkout, then used for real.

Its three commands start; mkdhcpd.ssi writes the table's hosts; mkinitrd.ssi freezes
the agent from the installed package (its own SSI_CACHE) into a ramdisk that holds every
file of ramdisk_skel/; that ramdisk boots a node into the shared root (one boot). The
commands run from an empty directory with a clean environment (no PYTHONPATH, no
virtualenv of ours): whatever the wheel lacks, they lack.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from linuxrc_agent.ssitab import parse
from vm_tests import cluster
from vm_tests.conftest import BootVm
from vm_tests.kernel import Kernel
from vm_tests.qemu import INIT_MARKER, Disk

REPO = Path(__file__).resolve().parent.parent
SKEL = REPO / "ramdisk_skel"
# What is not the source: the checkout's venv and caches, what builds leave behind.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".cache", "*.egg-info", "__pycache__",
                                    "build", "dist", ".pytest_cache", ".mypy_cache",
                                    ".ruff_cache")
COMMANDS = ("mkdhcpd.ssi", "mkinitrd.ssi", "lilo.ssi")


class Installed:
    """A fresh virtualenv holding only the wheel and its dependencies."""

    def __init__(self, base: Path) -> None:
        self.venv = base / "venv"
        self.cwd = base / "cwd"  # empty: nothing importable from where the commands run
        self.cache = base / "ssi-cache"
        self.cwd.mkdir()
        # pip's own configuration (index, certificates) and HOME (its cache) only.
        pip = {k: v for k, v in os.environ.items()
               if k.startswith("PIP_") or k.lower() in ("http_proxy", "https_proxy", "no_proxy")}
        self.env = {**pip, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
                    "PATH": f"{self.venv}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "SSI_CACHE": str(self.cache)}

    def run(self, *argv: str | Path, timeout: float = 600) -> str:
        proc = subprocess.run([str(a) for a in argv], cwd=self.cwd, env=self.env, text=True,
                              capture_output=True, timeout=timeout, check=False)
        assert proc.returncode == 0, \
            f"{argv} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    start = time.monotonic()
    src = base / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE, symlinks=True)
    inst = Installed(base)
    inst.run("/usr/bin/python3", "-m", "venv", inst.venv)
    inst.run(inst.bin("pip"), "wheel", "-q", "--no-deps", "-w", base / "wheels", src)
    wheels = list((base / "wheels").glob("ssi_boot-*.whl"))
    assert len(wheels) == 1, wheels
    inst.run(inst.bin("pip"), "install", "-q", wheels[0], timeout=900)
    print(f"wheel built and installed with its dependencies in {time.monotonic() - start:.0f} s")
    return inst


def test_installed_wheel_builds_a_ramdisk_that_boots(
        installed: Installed, kernel: Kernel, boot_vm: BootVm,
        root_images: dict[str, Path], tmp_path: Path) -> None:
    where = installed.run(installed.bin("python"), "-c",
                          "import linuxrc_agent, mkinitrd_ssi.dhcp; print(mkinitrd_ssi.__file__)")
    assert where.startswith(f"{installed.venv}/lib/"), where  # not the checkout
    for command in COMMANDS:
        assert "usage:" in installed.run(installed.bin(command), "--help")

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/ssitab").write_text(cluster.SSITAB)
    shutil.copyfile(REPO / "examples/dhcpd.proto", root / "etc/dhcpd.proto")
    installed.run(installed.bin("mkdhcpd.ssi"), "--root", root)  # dhcpd -t checks it
    conf = (root / "etc/dhcpd.conf").read_text()
    for node in parse(cluster.SSITAB):
        for mac in node.macs:
            assert re.search(rf"hardware ethernet {mac};\s*fixed-address {node.ip};", conf), \
                (mac, conf)

    image = tmp_path / "initrd.img"
    start = time.monotonic()
    installed.run(installed.bin("mkinitrd.ssi"), "--root", root, "--moddir", kernel.moddir,
                  "--no-dhcpd", "-o", image)
    print(f"installed mkinitrd.ssi froze the agent and built the image in "
          f"{time.monotonic() - start:.0f} s")
    assert list((installed.cache / "agent").iterdir())  # frozen here, from the wheel

    listed = installed.run(installed.bin("mkinitrd.ssi"), "--list", image).splitlines()
    skel = sorted(str(p.relative_to(SKEL)) for p in SKEL.rglob("*") if p.is_file())
    assert {"etc/passwd", "etc/profile"} <= set(skel)
    assert set(skel) <= set(listed), set(skel) - set(listed)
    verbose = installed.run(installed.bin("mkinitrd.ssi"), "-v", "--list", image)
    for rel in skel:
        assert re.search(rf"^\S+ +\d+ skel +{re.escape(rel)}$", verbose, re.MULTILINE), rel

    vm = boot_vm(f"root=LABEL={cluster.ROOT_LABEL}",
                 [Disk(root_images["plain"], extra=",snapshot=on")], initrd=image)
    env = vm.node_env()
    assert INIT_MARKER in vm.output()
    assert (env["SSI_NODE"], env["SSI_IP"], env["SSI_MAC"]) == ("1", "10.77.0.11",
                                                                cluster.MAC_N1)
    assert "Kernel panic" not in vm.output()
