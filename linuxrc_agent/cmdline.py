"""The kernel command line, as the agent reads it (DESIGN.md "Kernel command line").

Parsing never fails: PID 1 must boot, or at least explain, whatever the
command line holds. A bad value yields a warning (kept in `Cmdline.warnings`
for the caller to print once the console is up) and the default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from linuxrc_agent.ssitab import normalize_mac

DEFAULT_INIT = "/sbin/init"
DEFAULT_KERNEL = "/boot/vmlinuz"
DEFAULT_INITRD = "/boot/initrd.img"
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 86400.0
# The stage a bare `ssi.break` stops before, like dracut's bare rd.break.
DEFAULT_BREAK = "switch_root"

# /proc/cmdline is at most a few KiB; anything longer is not a real one.
MAX_CMDLINE = 64 * 1024
MAX_VALUE = 4096

_FSTYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_.+-]{0,31}$")
_STAGE_RE = re.compile(r"^[a-z][a-z_]{0,31}$")
_MODULE_RE = re.compile(r"^[A-Za-z0-9_-]{1,55}$")
_PARAM_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BOOTIF_RE = re.compile(r"^[0-9a-fA-F]{2}-([0-9a-fA-F]{2}(?:-[0-9a-fA-F]{2}){5})$")
_TRUE = frozenset({"", "1", "y", "yes", "true", "on"})
_FALSE = frozenset({"0", "n", "no", "false", "off"})


@dataclass(frozen=True)
class Cmdline:
    root: str | None = None
    rootfstype: str | None = None
    rootflags: str = ""
    readonly: bool = True
    init: str = DEFAULT_INIT
    kernel: str = DEFAULT_KERNEL
    initrd: str = DEFAULT_INITRD
    bootif: str | None = None  # normalised MAC of the NIC that netbooted
    breaks: tuple[str, ...] = ()  # lower-case stage names; main checks them
    debug: bool = False
    timeout: float = DEFAULT_TIMEOUT
    modules: str = "auto"  # ssi.modules=: "auto" (what devices need) or "all" carried modules
    # MODULE.param=value words: the kernel applies them to built-in code only;
    # for loadable modules modprobe passes them, and so does the agent.
    modparams: tuple[tuple[str, str], ...] = ()
    blacklist: tuple[str, ...] = ()  # modprobe.blacklist=a,b as modprobe honours it
    warnings: tuple[str, ...] = ()

    def params_for(self, module: str) -> str:
        return " ".join(p for m, p in self.modparams if m == module)


def split(text: str) -> list[tuple[str, str | None]]:
    """Words as the kernel splits them (kernel/params.c next_arg): (key, value or None).

    Double quotes group spaces: `key="a b"` and `"key=a b"` both give
    ('key', 'a b'). Words after a bare `--` belong to init and are dropped.
    """
    words: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        quoted = text[i] == '"'
        if quoted:
            i += 1
        in_quote = quoted
        start = i
        equals = -1
        while i < n and (in_quote or not text[i].isspace()):
            if equals < 0 and text[i] == "=":
                equals = i
            if text[i] == '"':
                in_quote = not in_quote
            i += 1
        word = text[start:i]
        if word.endswith('"') and (quoted or equals >= 0):
            word = word[:-1]
        if equals < 0:
            if word == "--" and not quoted:
                break
            words.append((word, None))
            continue
        key, value = word[:equals - start], word[equals - start + 1:]
        if value.startswith('"'):
            value = value[1:]
        words.append((key, value))
    return words


def parse(text: str) -> Cmdline:
    text = text[:MAX_CMDLINE].replace("\0", " ")
    fields: dict[str, object] = {}
    warnings: list[str] = []
    bootif_pxe: str | None = None
    breaks: list[str] = []
    modparams: list[tuple[str, str]] = []
    blacklist: list[str] = []

    def bad(key: str, value: str, expected: str) -> None:
        shown = value if len(value) <= 60 else value[:57] + "..."
        warnings.append(f"ignoring {key}={shown!r}: expected {expected}")

    def path(key: str, value: str | None, name: str) -> None:
        if value is None or not value.startswith("/") or len(value) > MAX_VALUE \
                or not value.isprintable():
            bad(key, value or "", "an absolute path")
        else:
            fields[name] = value

    for key, value in split(text):
        if key == "root":
            if not value or len(value) > MAX_VALUE or not value.isprintable():
                bad(key, value or "", "/dev/NAME, LABEL=, UUID= or PARTUUID=")
            else:
                fields["root"] = value
        elif key == "rootfstype":
            if value is None or not _FSTYPE_RE.match(value):
                bad(key, value or "", "a filesystem type such as ext4, xfs or vfat")
            else:
                fields["rootfstype"] = value
        elif key == "rootflags":
            if value is None or len(value) > MAX_VALUE or not value.isprintable():
                bad(key, value or "", "comma-separated mount options")
            else:
                fields["rootflags"] = value
        elif key in ("ro", "rw") and value is None:
            fields["readonly"] = key == "ro"  # the last one wins, as for the kernel
        elif key == "init":
            path(key, value, "init")
        elif key == "ssi.kernel":
            path(key, value, "kernel")
        elif key == "ssi.initrd":
            path(key, value, "initrd")
        elif key == "ssi.bootif":
            mac = normalize_mac(value or "")
            if mac is None:
                bad(key, value or "", "a MAC address such as 52:54:00:12:34:01")
            else:
                fields["bootif"] = mac
        elif key == "BOOTIF":
            # PXELINUX's IPAPPEND 2 form: ARP hardware type 01, then the MAC with dashes.
            m = _BOOTIF_RE.match(value or "")
            if m is None or not (value or "").startswith("01-"):
                bad(key, value or "", "01-xx-xx-xx-xx-xx-xx (PXELINUX IPAPPEND 2)")
            else:
                bootif_pxe = normalize_mac(m.group(1))
        elif key == "ssi.break":
            names = (value or DEFAULT_BREAK).lower().split(",")
            for name in names:
                if not _STAGE_RE.match(name):
                    bad(key, name, "stage names separated by commas")
                elif name not in breaks:
                    breaks.append(name)
        elif key == "ssi.debug":
            flag = (value or "").lower()
            if flag in _TRUE or flag in _FALSE:
                fields["debug"] = flag in _TRUE
            else:
                bad(key, value or "", "no value, 1 or 0")
        elif key == "ssi.timeout":
            seconds = _seconds(value)
            if seconds is None:
                bad(key, value or "", f"seconds, more than 0 and at most {MAX_TIMEOUT:.0f}")
            else:
                fields["timeout"] = seconds
        elif key == "ssi.modules":
            if value in ("auto", "all"):
                fields["modules"] = value
            else:
                bad(key, value or "", "auto or all")
        elif key == "modprobe.blacklist":
            for name in (value or "").split(","):
                if _MODULE_RE.match(name):
                    blacklist.append(name.replace("-", "_"))
                elif name:
                    bad(key, name, "module names separated by commas")
        elif "." in key and not key.startswith("ssi."):
            module, _, param = key.partition(".")
            if _MODULE_RE.match(module) and _PARAM_RE.match(param) and len(value or "") < 1024 \
                    and (value or "").isprintable():
                text = param if value is None else f'{param}="{value}"' if " " in value \
                    else f"{param}={value}"
                modparams.append((module.replace("-", "_"), text))
    # ssi.bootif is ours and explicit: it wins over what PXELINUX appended.
    if "bootif" not in fields and bootif_pxe is not None:
        fields["bootif"] = bootif_pxe
    return Cmdline(breaks=tuple(breaks), modparams=tuple(modparams), blacklist=tuple(blacklist),
                   warnings=tuple(warnings), **fields)  # type: ignore[arg-type]


def _seconds(value: str | None) -> float | None:
    if value is None or len(value) > 32:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT:
        return None
    return seconds


def read(path: str = "/proc/cmdline") -> Cmdline:
    """Parse the running kernel's command line; unreadable reads as empty, with a warning."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CMDLINE)
    except OSError as e:
        return Cmdline(warnings=(f"cannot read {path}: {e.strerror}; using defaults",))
    return parse(raw.decode("utf-8", "replace"))
