"""The extlinux configuration (BIOS: SeaBIOS or firmware -> MBR -> extlinux) for a local pair.

One writer per bootloader configuration sits beside this one (a GRUB/ESP
writer for UEFI fits the same Bootloader protocol, bootpair.pair).
"""

from __future__ import annotations

import enum
from pathlib import Path

from linuxrc_agent import cmdline
from linuxrc_agent.bootpair.pair import ROLES, FileId, LocalPair, PairMember, is_digest, member_name


class BootloaderKind(enum.Enum):
    EXTLINUX = "extlinux"  # BIOS; GRUB (grub.cfg) and UEFI (loader/entries) fit the same protocol


_HEADER = (
    "# ssi-boot local boot partition, written by linuxrc (bootpair) and lilo.ssi --local-only.\n"
    "# Replaced whole at every sync: change the cluster's kernel arguments, not this file.\n"
)


class Extlinux:
    name = BootloaderKind.EXTLINUX.value
    # extlinux 6.04 reads <install dir>/extlinux.conf first, then /boot/syslinux,
    # /syslinux, /; the install dir is wherever ldlinux.sys was put.
    INSTALL_DIRS = ("", "extlinux", "boot/extlinux", "boot/syslinux", "syslinux")

    def config_path(self, boot_dir: Path) -> Path:
        for sub in self.INSTALL_DIRS:
            if (boot_dir / sub / "ldlinux.sys").exists():
                return boot_dir / sub / "extlinux.conf"
        return boot_dir / "extlinux.conf"

    def render(self, pair: LocalPair) -> bytes:
        lines = [_HEADER]
        for role in ROLES:
            m = pair.member(role)
            lines.append(f"# ssi-pair {role} {m.name} size={m.ident.size} "
                         f"xxh3_128={m.ident.xxh3_128}\n")
        serial = _serial_directive(pair.append)
        if serial:
            lines.append(serial + "\n")
        lines.append(
            "DEFAULT ssi\nPROMPT 0\nTIMEOUT 0\n"
            "LABEL ssi\n"
            f"  LINUX /{pair.kernel.name}\n"
            f"  INITRD /{pair.initrd.name}\n"
            f"  APPEND {pair.append}\n"
        )
        return "".join(lines).encode()

    def parse(self, data: bytes) -> LocalPair | None:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return None
        members: dict[str, PairMember] = {}
        append = None
        for line in text.splitlines():
            if line.startswith("# ssi-pair "):
                words = line.split()
                if len(words) != 6 or words[2] not in ROLES:
                    return None
                size, digest = words[4].removeprefix("size="), words[5].removeprefix("xxh3_128=")
                if not size.isdigit() or not is_digest(digest):
                    return None
                members[words[2]] = PairMember(words[3], FileId(int(size), digest))
            elif line.startswith("  APPEND "):
                append = line[len("  APPEND "):]
        if append is None or set(members) != set(ROLES):
            return None
        pair = LocalPair(members["kernel"], members["initrd"], append)
        if any(pair.member(r).name != member_name(r, pair.member(r).ident.xxh3_128)
               for r in ROLES):
            return None
        return pair if self.render(pair) == data else None


EXTLINUX = Extlinux()


def _serial_directive(append: str) -> str:
    """SERIAL for the last console=ttySn[,baud], so the loader talks where the kernel will."""
    serial = ""
    for _raw, key, value in cmdline.tokenize(append).kernel:
        if key == "console" and value is not None:
            dev, _, opts = value.partition(",")
            if dev.startswith("ttyS") and dev[4:].isdigit():
                baud = "".join(c for c in opts.partition("n")[0] if c.isdigit()) or "9600"
                serial = f"SERIAL {dev[4:]} {baud}"
            else:
                serial = ""
    return serial
