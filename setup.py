"""Everything is in pyproject.toml but this: the packages that package-dir maps from
elsewhere (ramdisk_skel/ as mkinitrd_ssi.ramdisk_skel) are packages to build too.

packages.find only finds a package where its name puts it, so without this build_py
never copies ramdisk_skel/ into the wheel. Listing each directory under it (rather than
the top one alone) is what setuptools asks of package data in subdirectories.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    def finalize_options(self) -> None:
        super().finalize_options()
        mapped = [name for name in self.package_dir if name and name not in self.packages]
        for name in mapped:
            top = Path(self.package_dir[name])
            # A directory whose name is no identifier (modprobe.d) cannot be a package
            # name; setuptools does not ask it to be one either.
            subdirs = sorted(d for d in (p.relative_to(top) for p in top.rglob("*")
                                         if p.is_dir())
                             if all(part.isidentifier() for part in d.parts)
                             and "__pycache__" not in d.parts)
            self.packages += [name, *(f"{name}.{'.'.join(d.parts)}" for d in subdirs)]


setup(cmdclass={"build_py": BuildPy})
