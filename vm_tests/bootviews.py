"""How a bootloader reads a boot partition, and which pair it boots from it.

vm_tests/crashstates.py judges every power-cut state of a partition through
these views, the unit tests check them on hand-written configs:

- syslinux (`syslinux_entry`): DEFAULT naming a LABEL, LINUX/KERNEL, INITRD,
  APPEND per label, case-insensitive keywords, `#` comments;
- an ESP (`esp_view`) as the firmware, shim and GRUB read it: shim and GRUB
  whole, then grub.cfg as GRUB's script lexer reads it (`grub_tokens`:
  quotes across lines, comments; `grub_menu`: `set default`, menuentry
  blocks), checked by grub-script-check when installed.

A view names the pair booted: old, new, none (nothing bootable) or - (torn:
a kernel of one pair with the other's ramdisk, or the wrong arguments).
Files are read without the kernel (`Reader`: debugfs with no journal replay,
mtools), as a bootloader reads them, or from a mounted directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from linuxrc_agent.bootpair.esp import CONFIG as ESP_CONFIG
from linuxrc_agent.bootpair.esp import grub_args


@dataclass(frozen=True)
class Expected:
    old: tuple[str, str]  # xxh3_128 of the old kernel and ramdisk
    new: tuple[str, str]
    old_append: str  # the kernel arguments the old pair boots with
    new_append: str
    old_bootable: bool = True  # False: the partition could not boot before the sync
    # An ESP: (path, xxh3_128) of shim, then of GRUB, as the shared root has them.
    loaders: tuple[tuple[str, str], ...] = ()
    old_loaders: tuple[tuple[str, str], ...] = ()  # the versions an update replaces


@dataclass
class View:
    pair: str = "-"  # old, new, none (nothing bootable), or - (torn)
    problems: list[str] = field(default_factory=list)
    entry: str = ""  # the syslinux label or GRUB menu entry booted
    notes: list[str] = field(default_factory=list)  # odd but harmless (a first sync's loaders)


@dataclass(frozen=True)
class BootEntry:
    kernel: str
    initrd: str
    append: str  # GRUB's: the words, one a line
    label: str = ""


_KNOWN = {"default", "prompt", "timeout", "label", "linux", "kernel", "initrd", "append",
          "serial", "noescape", "allowoptions"}


def syslinux_entry(text: str) -> tuple[BootEntry | None, list[str]]:
    """The entry syslinux boots from a config text (None: none), and what in it is odd.

    Enough of syslinux's grammar for the configs the sync writes (and their
    mixtures): case-insensitive keywords, `#` comments, DEFAULT naming a
    LABEL, LINUX/KERNEL, INITRD, APPEND per label. A keyword outside that set
    is reported (a torn config could bring in anything).
    """
    labels: dict[str, dict[str, str]] = {}
    default: str | None = None
    current: dict[str, str] | None = None
    odd: list[str] = []
    for raw in text.split("\n"):
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.replace("\t", " ").partition(" ")
        keyword, rest = keyword.lower(), rest.strip(" ")
        if keyword not in _KNOWN:
            odd.append(line[:80])
        elif keyword == "default":
            default = rest
        elif keyword == "label":
            current = labels.setdefault(rest, {})
        elif current is not None and keyword in ("linux", "kernel", "initrd", "append"):
            current["linux" if keyword == "kernel" else keyword] = rest
    if default is None:
        return None, [*odd, "no DEFAULT line"]
    entry = labels.get(default.split(" ")[0])
    if entry is None or "linux" not in entry:
        return None, [*odd, f"DEFAULT {default!r} names no entry with a kernel"]
    return BootEntry(entry["linux"], entry.get("initrd", ""), entry.get("append", ""),
                     default.split(" ")[0]), odd


def run_tool(argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(list(argv), capture_output=True, check=False, env=env,
                          **kw)  # type: ignore[call-overload,no-any-return]


class Reader:
    """Reads files from a filesystem image without the kernel (debugfs, mtools)."""

    def __init__(self, fs: str, image: Path, offset: int, scratch: Path) -> None:
        self.fs, self.image, self.offset, self.scratch = fs, image, offset, scratch

    def read(self, path: str) -> bytes | None:
        out = self.scratch / "file"
        out.unlink(missing_ok=True)
        if self.fs == "ext4":
            # -c: no bitmaps, no journal replay; -n: no checksum checks (syslinux makes none).
            run_tool(["debugfs", "-c", "-n", "-R", f"dump {path} {out}",
                  f"{self.image}?offset={self.offset}"])
        else:
            run_tool(["mcopy", "-n", "-o", "-i", f"{self.image}@@{self.offset}", f"::{path}",
                  str(out)])
        try:
            return out.read_bytes()
        except FileNotFoundError:
            return None


def _getter(read: Reader | Path) -> Callable[[str], bytes | None]:
    def get(path: str) -> bytes | None:
        if isinstance(read, Reader):
            return read.read(path)
        try:
            return (read / path.lstrip("/")).read_bytes()
        except OSError:
            return None
    return get


def view_of(read: Reader | Path, want: Expected, loader: str = "extlinux") -> View:
    """Which pair a reader boots: through its own file access, or a mounted directory.

    loader: extlinux (extlinux.conf as syslinux reads it) or grub (an ESP as the
    firmware, shim and GRUB read it: esp_view).
    """
    get = _getter(read)
    if loader == "grub":
        return esp_view(get, want)
    config = None
    for path in ("/extlinux.conf", "/syslinux/syslinux.cfg", "/syslinux.cfg"):
        config = get(path)
        if config is not None:
            break
    entry, odd = syslinux_entry(config.decode(errors="replace")) if config else (None, [])
    return _booted(View(), get, want, entry, odd, lambda append: append,
                   nothing_is_torn=not want.old_bootable)


def _booted(view: View, get: Callable[[str], bytes | None], want: Expected,
            entry: BootEntry | None, odd: list[str], spell: Callable[[str], str], *,
            nothing_is_torn: bool) -> View:
    """Judge the entry a loader picked: its two files hashed against the old and the new
    pair, its arguments against the pair's (spell: the expected append as the entry
    holds its arguments). nothing_is_torn: booting nothing is no harm here."""
    hashes = []
    if entry is not None:
        view.entry = entry.label
        for path in (entry.kernel, entry.initrd):
            data = get(path) if path else None
            if data is None:
                odd.append(f"{path or 'no initrd'}: missing")
                entry = None
                break
            hashes.append(xxhash.xxh3_128_hexdigest(data))
    if entry is None:
        # Booting nothing is torn only where the partition booted before the sync.
        view.pair = "none"
        if not nothing_is_torn:
            view.problems += odd or ["no config"]
        return view
    view.problems += [f"config line {line!r}" for line in odd]
    found = (hashes[0], hashes[1])
    view.pair = "old" if found == want.old else "new" if found == want.new else "-"
    if view.pair == "-":
        names = {want.old[0]: "old kernel", want.new[0]: "new kernel",
                 want.old[1]: "old initrd", want.new[1]: "new initrd"}
        view.problems.append(f"pair is {names.get(found[0], 'a torn kernel')} + "
                             f"{names.get(found[1], 'a torn initrd')}")
    elif entry.append != spell(want.old_append if view.pair == "old" else want.new_append):
        view.problems.append(f"the {view.pair} pair with arguments {entry.append[:120]!r}")
    return view


# ---------------------------------------------------------------- GRUB's reading of an ESP


def grub_tokens(text: str) -> tuple[list[tuple[bool, str]], list[str]]:
    """GRUB's script lexer, enough for the configs the sync writes and their torn mixtures.

    (is_word, text) tokens: words with their quotes resolved, and the
    operators newline, `;`, `{`, `}` (braces end a word: GRUB takes `x{` as x
    then `{`). A `#` opening a word comments to the end of the line; '...' is
    literal and spans lines (so the guard line `#'` is a comment when no quote
    is open and closes one a tear left open); "..." takes a backslash before
    \\ " $ and a newline; a backslash outside quotes takes the next character.
    What our configs never hold is reported: a quote open at the end of the
    file (GRUB drops the command), `$` (GRUB would expand it), | & < > ( ).
    """
    tokens: list[tuple[bool, str]] = []
    odd: list[str] = []
    word: list[str] | None = None  # None: between words
    i, n = 0, len(text)

    def end_word() -> None:
        nonlocal word
        if word is not None:
            tokens.append((True, "".join(word)))
            word = None

    while i < n:
        c = text[i]
        if c in " \t":
            end_word()
            i += 1
        elif c in "\n;{}":
            end_word()
            tokens.append((False, c))
            i += 1
        elif c == "#" and word is None:
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                odd.append(f"a single quote open to the end of the file: {text[i:i + 60]!r}")
                word = None
                break
            word = [*(word or []), text[i + 1:end]]
            i = end + 1
        elif c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n and text[j + 1] in '\\"$\n':
                    buf.append("" if text[j + 1] == "\n" else text[j + 1])
                    j += 2
                    continue
                if text[j] == "$":
                    odd.append(f"$ in double quotes: {text[i:i + 60]!r}")
                buf.append(text[j])
                j += 1
            if j >= n:
                odd.append(f"a double quote open to the end of the file: {text[i:i + 60]!r}")
                word = None
                break
            word = [*(word or []), "".join(buf)]
            i = j + 1
        elif c == "\\":
            if text[i + 1:i + 2] != "\n":  # a backslash-newline only joins the lines
                word = [*(word or []), text[i + 1:i + 2]]
            i += 2
        else:
            if c in "$|&<>()":
                odd.append(f"unquoted {c!r}: {text[max(0, i - 30):i + 30]!r}")
            word = [*(word or []), c]
            i += 1
    end_word()
    return tokens, odd


_MENUENTRY_FLAGS = {"--unrestricted"}
_MENUENTRY_OPTIONS = {"--id", "--class", "--users", "--hotkey"}


@dataclass(frozen=True)
class MenuEntry:
    title: str
    id: str
    commands: tuple[tuple[str, ...], ...]


def grub_menu(text: str) -> tuple[dict[str, str], list[MenuEntry], list[str]]:
    """(the variables the top level sets, the menu entries in order, what is odd) of a
    grub.cfg: `set NAME=VALUE`, `menuentry TITLE [options] { commands }`; any other
    top-level command, a block left open, a brace out of place is odd."""
    tokens, odd = grub_tokens(text)
    variables: dict[str, str] = {}
    entries: list[MenuEntry] = []
    pos = 0

    def command() -> tuple[list[str], str | None]:
        nonlocal pos
        words = []
        while pos < len(tokens) and tokens[pos][0]:
            words.append(tokens[pos][1])
            pos += 1
        op = tokens[pos][1] if pos < len(tokens) else None
        pos += 1
        return words, op

    while pos < len(tokens):
        words, op = command()
        if not words:
            if op in ("{", "}"):
                odd.append(f"a {op} outside a menu entry")
            continue
        if words[0] == "set":
            for word in words[1:]:
                name, _, value = word.partition("=")
                variables[name] = value
            if op == "{":
                odd.append(f"a block after {' '.join(words)[:60]!r}")
            continue
        if words[0] != "menuentry":
            odd.append(f"command {' '.join(words)[:80]!r}")
            continue
        title, ident, rest = None, "", iter(words[1:])
        for word in rest:
            key, eq, value = word.partition("=")
            if key in _MENUENTRY_OPTIONS:
                value = value if eq else next(rest, "")
                ident = value if key == "--id" else ident
            elif word not in _MENUENTRY_FLAGS and title is None:
                title = word
            elif word not in _MENUENTRY_FLAGS:
                odd.append(f"menuentry argument {word!r}")
        body: list[tuple[str, ...]] = []
        closed = False
        if op == "{":
            while pos < len(tokens):
                words, op = command()
                if words:
                    body.append(tuple(words))
                if op == "}":
                    closed = True
                    break
                if op == "{":
                    odd.append(f"a block inside menuentry {title!r}")
        if not closed or title is None:
            # GRUB reports a syntax error and defines no entry.
            odd.append(f"menuentry {title!r} without its block")
            continue
        entries.append(MenuEntry(title, ident, tuple(body)))
    return variables, entries, odd


def grub_entry(text: str) -> tuple[BootEntry | None, list[str]]:
    """The entry GRUB boots from a config text (None: none), and what in it is odd.

    `default` names an entry by number, title or --id; when it names none (or
    is unset), GRUB boots the first entry (grub-core/normal/menu.c, run_menu:
    "If DEFAULT_ENTRY is not within the menu entries, fall back to the first
    entry"). The entry's last `linux` and `initrd` count; its arguments are
    its words after the kernel's path, joined by newlines (grub_words).
    """
    variables, entries, odd = grub_menu(text)
    if not entries:
        return None, [*odd, "no menu entry"]
    chosen = entries[0]
    default = variables.get("default")
    if default is not None and default.isdigit():
        chosen = entries[int(default)] if int(default) < len(entries) else chosen
    elif default is not None:
        chosen = next((e for e in entries if default in (e.title, e.id)), chosen)
    kernel = initrd = None
    args: tuple[str, ...] = ()
    for words in chosen.commands:
        if words[0] == "linux" and len(words) > 1:
            kernel, args = words[1], words[2:]
        elif words[0] == "initrd" and len(words) == 2:
            initrd = words[1]
        else:
            odd.append(f"in {chosen.title!r}: {' '.join(words)[:80]!r}")
    if kernel is None:
        return None, [*odd, f"menu entry {chosen.title!r} loads no kernel"]
    return BootEntry(kernel, initrd or "", "\n".join(args), chosen.title), odd


def grub_words(args: str) -> str:
    """What grub_entry makes of a `linux` line's arguments (GRUB's spelling, esp.grub_args)."""
    tokens, _odd = grub_tokens(args)
    return "\n".join(text for is_word, text in tokens if is_word)


def _grub_script_check(config: bytes) -> str | None:
    """grub-script-check's complaint about a config, if that tool is installed."""
    if shutil.which("grub-script-check") is None:
        return None
    result = run_tool(["grub-script-check"], input=config)
    if result.returncode == 0:
        return None
    return "grub-script-check: " + " | ".join(
        (result.stdout + result.stderr).decode(errors="replace").strip().splitlines()[-3:])


def esp_view(get: Callable[[str], bytes | None], want: Expected) -> View:
    """What an ESP boots as the firmware, shim and GRUB read it.

    The firmware starts EFI/BOOT/BOOTX64.EFI (shim), shim starts grubx64.efi
    beside it: both must be whole, the shared root's (want.loaders) or, during
    an update, the version it replaces (want.old_loaders). Else, or with no
    shim, the firmware boots nothing from the disk and goes on to the network
    ("none"): torn where the partition booted before the sync, noted on a
    first sync. Past whole loaders there is no falling back: GRUB without a
    config, or with no entry it can boot, stops at its prompt (torn). Then
    EFI/BOOT/grub.cfg as grub_entry reads it, checked by grub-script-check too.
    """
    view = View()
    older = dict(want.old_loaders)
    for path, digest in want.loaders:
        data = get(path)
        # Either version, whole (Debian signs both; shim accepts a GRUB of another version).
        if data is not None and xxhash.xxh3_128_hexdigest(data) in (digest, older.get(path)):
            continue
        what = "missing" if data is None else f"{len(data)} bytes, not the shared root's"
        no_shim = data is None and path == want.loaders[0][0]
        if no_shim:
            view.pair = "none"  # nothing for the firmware to start: it goes on to the network
        if want.old_bootable:
            view.problems.append(f"{path}: {what}")
        else:
            # A first sync: the firmware, or shim, fails to load what is not a whole signed
            # image and the firmware goes on to its next boot option, the network, as
            # before the sync. Noted: an empty or partial loader is worth seeing.
            view.pair = "none"
            if not no_shim:
                view.notes.append(f"{path}: {what}")
        return view
    config = get(f"/{ESP_CONFIG}")
    if config is None:
        view.problems.append(f"no {ESP_CONFIG}: GRUB stops at its prompt")
        return view
    entry, odd = grub_entry(config.decode(errors="replace"))
    complaint = _grub_script_check(config)
    if complaint is not None:
        odd.append(complaint)
    return _booted(view, get, want, entry, odd, lambda append: grub_words(grub_args(append)),
                   nothing_is_torn=False)
