"""The kernel command line: the one grammar every part of ssi-boot reads and writes it by.

The tokenizer follows the kernel's own rules (kernel/params.c `next_arg`,
init/main.c): whitespace separates words except inside double quotes; a
word's quotes are dropped around the whole word (`"k=a b"`) or around its
value (`k="a b"`); a bare `--` ends the kernel's words and starts init's.
On top of it sit `without` (drop words by key), `join` (text the kernel
tokenizes back into the same words) and one renderer per boot-loader
config (`for_syslinux`, `for_ipxe`, `for_grub`), so that the agent, the
local sync and lilo.ssi agree on what each argument is (docs/architecture.md,
"Kernel command line").

The agent's `parse` never fails: PID 1 must boot, or at least explain,
whatever the command line holds. A bad value yields a warning (kept in
`Cmdline.warnings` for the caller to print once the console is up) and the
default. The renderers, used by the admin tools before anything is written,
raise `CmdlineError` for an argument a loader could not carry unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import NamedTuple

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
# The kernel's isspace() for the bytes a command line holds (lib/ctype.c).
WHITESPACE = frozenset(" \t\n\v\f\r")
INIT_SEPARATOR = "--"

_FSTYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_.+-]{0,31}$")
_STAGE_RE = re.compile(r"^[a-z][a-z_]{0,31}$")
_MODULE_RE = re.compile(r"^[A-Za-z0-9_-]{1,55}$")
_PARAM_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BOOTIF_RE = re.compile(r"^[0-9a-fA-F]{2}-([0-9a-fA-F]{2}(?:-[0-9a-fA-F]{2}){5})$")
_TRUE = frozenset({"", "1", "y", "yes", "true", "on"})
_FALSE = frozenset({"0", "n", "no", "false", "off"})


class CmdlineError(ValueError):
    """An argument that a boot loader's config could not hand to the kernel unchanged."""


# ---------------------------------------------------------------- the grammar


class Word(NamedTuple):
    raw: str  # the word as written, quotes included
    key: str  # what the kernel calls param: up to the first '=', quotes dropped
    value: str | None  # None for a word without '='


class Args(NamedTuple):
    """A command line as words: the kernel's, then init's (after `--`) if there was a `--`."""

    kernel: tuple[Word, ...]
    init: tuple[Word, ...] | None = None


def _next_word(text: str, i: int) -> tuple[Word, int]:
    """The word starting at text[i] (not whitespace) and where scanning resumes."""
    start = i
    quoted = text[i] == '"'
    if quoted:
        i += 1
    in_quote = quoted
    body = i
    equals = -1
    n = len(text)
    while i < n and (in_quote or text[i] not in WHITESPACE):
        # Like next_arg: an '=' as the body's first character does not split.
        if equals < 0 and text[i] == "=" and i > body:
            equals = i
        if text[i] == '"':
            in_quote = not in_quote
        i += 1
    raw = text[start:i]
    closing = i > body and text[i - 1] == '"'
    if equals < 0:
        key = text[body:i - 1] if quoted and closing else text[body:i]
        return Word(raw, key, None), i
    key, value = text[body:equals], text[equals + 1:i]
    if value.startswith('"'):
        value = value[1:-1] if closing and len(value) > 1 else value[1:]
    elif quoted and closing:
        value = value[:-1]
    return Word(raw, key, value), i


def tokenize(text: str) -> Args:
    """Split a command line into words exactly as the kernel does."""
    kernel: list[Word] = []
    init: list[Word] | None = None
    words = kernel
    i, n = 0, len(text)
    while i < n:
        if text[i] in WHITESPACE:
            i += 1
            continue
        word, i = _next_word(text, i)
        if init is None and word.value is None and word.key == INIT_SEPARATOR:
            init = words = []
            continue
        words.append(word)
    return Args(tuple(kernel), None if init is None else tuple(init))


def split(text: str) -> list[tuple[str, str | None]]:
    """The kernel's words as (key, value or None); init's arguments are left out."""
    return [(w.key, w.value) for w in tokenize(text).kernel]


def without(args: Args | str, keys: Collection[str]) -> Args:
    """The command line less every kernel word whose key is one of keys (init's kept)."""
    if isinstance(args, str):
        args = tokenize(args)
    return Args(tuple(w for w in args.kernel if w.key not in keys), args.init)


def _canonical(word: Word) -> str:
    """A word's shortest spelling that the kernel reads back as the same key and value."""
    key, value = word.key, word.value
    text = key if value is None else f"{key}={value}"
    if '"' in text or (value is None and key == INIT_SEPARATOR) or (value is None and not key):
        raise CmdlineError(f"{word.raw!r} cannot be passed to the kernel unchanged: "
                           "the kernel has no way to escape a double quote")
    if not any(c in WHITESPACE for c in text):
        return text
    if any(c in WHITESPACE for c in key):
        return f'"{text}"'
    return f'{key}="{value}"'


def _spelling(word: Word) -> str:
    # Balanced quotes: the raw word reads back the same wherever it stands. An
    # odd count ran to the end of the line, and would swallow what follows it.
    return word.raw if word.raw.count('"') % 2 == 0 else _canonical(word)


_SEPARATOR_WORD = Word(INIT_SEPARATOR, INIT_SEPARATOR, None)


def words_of(args: Args) -> list[Word]:
    """Every word in order, `--` included when init has arguments."""
    return [*args.kernel, *(() if args.init is None else (_SEPARATOR_WORD, *args.init))]


def join(args: Args | Iterable[Word], *, lenient: bool = False) -> str:
    """Text the kernel tokenizes back into these words (raw spellings kept where safe).

    A word no spelling can carry raises CmdlineError, or is left out when lenient
    (the agent persisting its own /proc/cmdline must not fail on it).
    """
    spelled: list[str] = []
    for word in words_of(args) if isinstance(args, Args) else args:
        try:
            spelled.append(INIT_SEPARATOR if word is _SEPARATOR_WORD else _spelling(word))
        except CmdlineError:
            if not lenient:
                raise
    return " ".join(spelled)


def with_words(args: Args, extra: str) -> Args:
    """args plus the kernel words of extra, placed before init's (a loader appends at the end)."""
    return Args(args.kernel + tokenize(extra).kernel, args.init)


# ---------------------------------------------------------------- boot-loader configs


# A console user at a loader's prompt could boot the node with init=/bin/sh;
# the configs lock the prompt unless the cluster's arguments carry this word.
LOADER_EDIT = "ssi.loader_edit"


def loader_edit_allowed(args: Args) -> bool:
    return any(w.key == LOADER_EDIT and (w.value or "1") not in _FALSE for w in args.kernel)


def syslinux_lock(args: Args) -> str:
    """The PXELINUX/extlinux directives that keep a console user from editing the kernel
    arguments (no escape to the boot: prompt, no options added to a label)."""
    return "" if loader_edit_allowed(args) else "NOESCAPE 1\nALLOWOPTIONS 0\n"


def for_syslinux(args: Args | str) -> str:
    """The APPEND text of PXELINUX and extlinux: the rest of the line, handed over verbatim."""
    return _printable(join(tokenize(args) if isinstance(args, str) else args))


def _printable(text: str) -> str:
    # A config is lines of text: a line break would end it early, and other
    # control characters are no argument an admin means to pass.
    for word in words_of(tokenize(text)):
        if any(not c.isprintable() and c != " " for c in word.raw):
            raise CmdlineError(f"{word.raw!r}: a control character (tab, line break, ...) "
                               "inside an argument cannot go into a boot loader config")
    return text


def for_ipxe(args: Args | str) -> str:
    """Arguments for an iPXE `kernel` line, which the kernel receives unchanged.

    iPXE splits a script line at whitespace with no quoting of its own, expands
    `${...}`, treats `#`, `||`, `&&` and `;` words as syntax, and joins the
    words with single spaces: what would change in that trip is refused.
    """
    text = _printable(join(tokenize(args) if isinstance(args, str) else args))
    for word in words_of(tokenize(text)):
        why = ""
        pieces = word.raw.split(" ")
        if "${" in word.raw:
            why = "iPXE would expand ${...} in it"
        elif "" in pieces:
            why = "iPXE would turn its runs of spaces inside quotes into single spaces"
        elif any(p.startswith("#") or p in ("||", "&&", ";") for p in pieces):
            why = "iPXE would read part of it as script syntax (#, ||, && or ;)"
        if why:
            raise CmdlineError(f"{word.raw!r}: {why}")
    return text


# What a GRUB script word may hold unquoted: none of its lexer's special characters
# (quotes, backslash, $, #, ;, &, |, <, >, parentheses, braces, whitespace).
_GRUB_BARE = re.compile(r"[A-Za-z0-9_.,:/=+@%-]+")


def for_grub(args: Args | str) -> str:
    """Arguments for a GRUB `linux` line, which the kernel receives unchanged.

    GRUB reads the line as script words (quotes, backslashes, `$` expansion),
    then rebuilds the command line from those words: a word holding a space is
    wrapped in double quotes, and every backslash, single and double quote gets
    a backslash the kernel keeps (measured with Debian 12's signed GRUB 2.06:
    `'foo=a b' "sq=it's" 'bs=a\\b'` reached /proc/cmdline as `"foo=a b"
    sq=it\\'s bs=a\\\\b`). So each word goes in as GRUB's argument `key=value`,
    single-quoted unless plainly safe, and a word holding a backslash or a quote
    is refused. A word that is all quotes (`""`) is refused too: GRUB passes an
    empty word as nothing.
    """
    if isinstance(args, str):
        args = tokenize(args)
    _printable(join(args))
    spelled: list[str] = []
    for word in words_of(args):
        if word is _SEPARATOR_WORD:
            spelled.append(INIT_SEPARATOR)
            continue
        text = word.key if word.value is None else f"{word.key}={word.value}"
        bad = sorted(c for c in set(text) if c in "\\'\"")
        if bad:
            raise CmdlineError(f"{word.raw!r}: GRUB would put a backslash before each "
                               f"{' and '.join(bad)} in it, and the kernel would keep it")
        if not text:
            raise CmdlineError(f"{word.raw!r}: GRUB would drop this empty argument")
        spelled.append(text if _GRUB_BARE.fullmatch(text) else f"'{text}'")
    return " ".join(spelled)


def grub_lock(args: Args) -> str:
    """The grub.cfg line that keeps a console user from editing the kernel arguments:
    superusers set with no password, so GRUB's editor and shell admit nobody."""
    return "" if loader_edit_allowed(args) else 'set superusers=""\n'


# ---------------------------------------------------------------- the agent's reading


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
    overlay: str = ""  # ssi.overlay=: "tmpfs" (a writable layer over the read-only root) or ""
    # MODULE.param=value words: the kernel applies them to built-in code only;
    # for loadable modules modprobe passes them, and so does the agent.
    modparams: tuple[tuple[str, str], ...] = ()
    blacklist: tuple[str, ...] = ()  # modprobe.blacklist=a,b as modprobe honours it
    warnings: tuple[str, ...] = ()

    def params_for(self, module: str) -> str:
        return " ".join(p for m, p in self.modparams if m == module)


class _Reading:
    """What parse has gathered so far; each handler below adds one key's worth."""

    def __init__(self) -> None:
        self.fields: dict[str, object] = {}
        self.warnings: list[str] = []
        self.breaks: list[str] = []
        self.modparams: list[tuple[str, str]] = []
        self.blacklist: list[str] = []
        self.bootif_pxe: str | None = None

    def bad(self, key: str, value: str | None, expected: str) -> None:
        value = value or ""
        shown = value if len(value) <= 60 else value[:57] + "..."
        self.warnings.append(f"ignoring {key}={shown!r}: expected {expected}")


def _sane(value: str | None) -> bool:
    return value is not None and len(value) <= MAX_VALUE and value.isprintable()


def _path(field: str) -> Callable[[_Reading, str, str | None], None]:
    def handle(r: _Reading, key: str, value: str | None) -> None:
        if _sane(value) and value is not None and value.startswith("/"):
            r.fields[field] = value
        else:
            r.bad(key, value, "an absolute path")
    return handle


def _root(r: _Reading, key: str, value: str | None) -> None:
    if value and _sane(value):
        r.fields["root"] = value
    else:
        r.bad(key, value, "/dev/NAME, LABEL=, UUID=, PARTUUID=, nfs:SERVER:/PATH or "
              "nfs4:SERVER:/PATH")


def _rootfstype(r: _Reading, key: str, value: str | None) -> None:
    if value is not None and _FSTYPE_RE.match(value):
        r.fields["rootfstype"] = value
    else:
        r.bad(key, value, "a filesystem type such as ext4, xfs or vfat")


def _rootflags(r: _Reading, key: str, value: str | None) -> None:
    if _sane(value):
        r.fields["rootflags"] = value
    else:
        r.bad(key, value, "comma-separated mount options")


def _ro_rw(r: _Reading, key: str, value: str | None) -> None:
    if value is None:  # `ro=1` is not the flag
        r.fields["readonly"] = key == "ro"  # the last one wins, as for the kernel


def _bootif(r: _Reading, key: str, value: str | None) -> None:
    mac = normalize_mac(value or "")
    if mac is None:
        r.bad(key, value, "a MAC address such as 52:54:00:12:34:01")
    else:
        r.fields["bootif"] = mac


def _pxelinux_bootif(r: _Reading, key: str, value: str | None) -> None:
    # PXELINUX's IPAPPEND 2 form: ARP hardware type 01, then the MAC with dashes.
    m = _BOOTIF_RE.match(value or "")
    if m is None or not (value or "").startswith("01-"):
        r.bad(key, value, "01-xx-xx-xx-xx-xx-xx (PXELINUX IPAPPEND 2)")
    else:
        r.bootif_pxe = normalize_mac(m.group(1))


def _break(r: _Reading, key: str, value: str | None) -> None:
    for name in (value or DEFAULT_BREAK).lower().split(","):
        if not _STAGE_RE.match(name):
            r.bad(key, name, "stage names separated by commas")
        elif name not in r.breaks:
            r.breaks.append(name)


def _debug(r: _Reading, key: str, value: str | None) -> None:
    flag = (value or "").lower()
    if flag in _TRUE or flag in _FALSE:
        r.fields["debug"] = flag in _TRUE
    else:
        r.bad(key, value, "no value, 1 or 0")


def _timeout(r: _Reading, key: str, value: str | None) -> None:
    seconds = _seconds(value)
    if seconds is None:
        r.bad(key, value, f"seconds, more than 0 and at most {MAX_TIMEOUT:.0f}")
    else:
        r.fields["timeout"] = seconds


def _module_mode(r: _Reading, key: str, value: str | None) -> None:
    if value in ("auto", "all"):
        r.fields["modules"] = value
    else:
        r.bad(key, value, "auto or all")


def _overlay(r: _Reading, key: str, value: str | None) -> None:
    if value == "tmpfs":
        r.fields["overlay"] = value
    elif value in ("none", "0", "off"):  # a later word turns an earlier one off
        r.fields["overlay"] = ""
    else:
        r.bad(key, value, "tmpfs (or none)")


def _blacklist(r: _Reading, key: str, value: str | None) -> None:
    for name in (value or "").split(","):
        if _MODULE_RE.match(name):
            r.blacklist.append(name.replace("-", "_"))
        elif name:
            r.bad(key, name, "module names separated by commas")


def _module_param(r: _Reading, key: str, value: str | None) -> None:
    module, _, param = key.partition(".")
    if _MODULE_RE.match(module) and _PARAM_RE.match(param) and len(value or "") < 1024 \
            and (value or "").isprintable():
        text = param if value is None else f'{param}="{value}"' if " " in value \
            else f"{param}={value}"
        r.modparams.append((module.replace("-", "_"), text))


_HANDLERS: dict[str, Callable[[_Reading, str, str | None], None]] = {
    "root": _root,
    "rootfstype": _rootfstype,
    "rootflags": _rootflags,
    "ro": _ro_rw,
    "rw": _ro_rw,
    "init": _path("init"),
    "ssi.kernel": _path("kernel"),
    "ssi.initrd": _path("initrd"),
    "ssi.bootif": _bootif,
    "BOOTIF": _pxelinux_bootif,
    "ssi.break": _break,
    "ssi.debug": _debug,
    "ssi.timeout": _timeout,
    "ssi.modules": _module_mode,
    "ssi.overlay": _overlay,
    "modprobe.blacklist": _blacklist,
}


def parse(text: str) -> Cmdline:
    r = _Reading()
    args = tokenize(text[:MAX_CMDLINE].replace("\0", " "))
    for _raw, key, value in args.kernel:
        handler = _HANDLERS.get(key)
        if handler is not None:
            handler(r, key, value)
        elif "." in key and not key.startswith("ssi."):
            _module_param(r, key, value)
    # PXELINUX's IPAPPEND adds BOOTIF= at the very end, after a `--` if there is one.
    for word in args.init or ():
        if word.key == "BOOTIF":
            _pxelinux_bootif(r, word.key, word.value)
    # ssi.bootif is ours and explicit: it wins over what PXELINUX appended.
    if "bootif" not in r.fields and r.bootif_pxe is not None:
        r.fields["bootif"] = r.bootif_pxe
    return Cmdline(breaks=tuple(r.breaks), modparams=tuple(r.modparams),
                   blacklist=tuple(r.blacklist), warnings=tuple(r.warnings),
                   **r.fields)  # type: ignore[arg-type]


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
