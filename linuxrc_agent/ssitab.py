"""The one parser of /etc/ssitab, shared by the boot agent and every admin command.

Standard library only: the agent imports it at boot. It validates by hand
rather than through `ipaddress` so that a 100,000-line table parses in a
fraction of a second, and it collects every problem of a file before failing
so an admin fixes a table in one pass.

Two paths read a line. The fast one is a single regular expression that only
ever *accepts* the usual spelling of a valid line; whatever it does not accept
(any error, unusual spelling, extra options) goes to the careful path, which
alone produces error messages. Both must agree on every line they accept; a
property test holds them to that.
"""

from __future__ import annotations

import enum
import gc
import re
from _socket import inet_aton, inet_ntoa  # not socket.py: start-up cost, issue 14
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter

DEFAULT_PATH = "/etc/ssitab"
DEFAULT_PREFIX = 24
MAX_NODE = 999_999
KNOWN_OPTIONS = ("hostname", "server")

# [0-9] rather than \d, and no IGNORECASE: Python's Unicode matching would
# otherwise accept Arabic-Indic digits or fold U+017F (long s) into "s".
_HEX = "[0-9a-fA-F]"
_MAC_RE = re.compile(rf"{_HEX}{{2}}([:-]){_HEX}{{2}}(?:\1{_HEX}{{2}}){{4}}")
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_DEVNAME_RE = re.compile(r"/dev/[A-Za-z0-9][A-Za-z0-9_.+:-]*(?:/[A-Za-z0-9][A-Za-z0-9_.+:-]*)*")
_UUID_RE = re.compile(
    rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"  # ext4, xfs, GPT
    rf"|{_HEX}{{4}}-{_HEX}{{4}}"  # vfat volume id
    rf"|{_HEX}{{8}}-{_HEX}{{2}}"  # MBR PARTUUID: disk id - partition number
)
# Labels end up in bootloader configs and on kernel command lines: no quotes,
# backslashes or control characters that would need escaping there.
_FS_LABEL_RE = re.compile(r"[^\s\"'\\\x00-\x1f\x7f]{1,64}")
_WORD_RE = re.compile(r"\S+")

_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
# The fast path's first octet leaves out 0, 127 and 224 and up (not unicast
# host addresses), its MACs have an even first octet (not multicast).
_FIRST_OCTET = "(?!127\\.)(22[0-3]|2[01][0-9]|1[0-9][0-9]|[1-9][0-9]|[1-9])"
# The same without groups, for the server= address (checked by the regex alone).
_NC_OCTET = _OCTET.replace("(", "(?:", 1)
_NC_FIRST_OCTET = _FIRST_OCTET.replace("(2", "(?:2", 1)
_UNICAST_MAC = rf"{_HEX}[02468aAcCeE](?:[:-]{_HEX}{{2}}){{5}}"
_FAST_RE = re.compile(
    r"\s*([1-9][0-9]{0,5})"
    rf"\s+({_FIRST_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET})(?:/([1-9]|[12][0-9]|3[0-2]))?"
    rf"\s+({_UNICAST_MAC}(?:,{_UNICAST_MAC})*)"
    r"\s+(1|0|[Yy][Ee][Ss]|[Nn][Oo])"
    r"\s+(\S+)"
    rf"(?:\s+hostname=({_LABEL}(?:\.{_LABEL})*))?"
    rf"(?:\s+server=({_NC_FIRST_OCTET}\.{_NC_OCTET}\.{_NC_OCTET}\.{_NC_OCTET}))?\s*"
)

_TRUE = frozenset({"1", "yes"})
_FALSE = frozenset({"0", "no"})


class BootDevKind(enum.Enum):
    PATH = "path"
    LABEL = "LABEL"
    UUID = "UUID"
    PARTUUID = "PARTUUID"


@dataclass(frozen=True, slots=True)
class BootDev:
    kind: BootDevKind
    value: str

    def __str__(self) -> str:
        return self.value if self.kind is BootDevKind.PATH else f"{self.kind.value}={self.value}"


@dataclass(frozen=True, slots=True)
class Node:
    number: int
    ip: str
    prefix: int
    macs: tuple[str, ...]
    local: bool
    bootdev: BootDev | None
    hostname: str
    line: int = field(default=0, compare=False)
    # The node's boot server (server=IP): its DHCP answer names it as next-server.
    # None: the proto decides, as for a table without the option.
    server: str | None = None

    @property
    def netmask(self) -> str:
        return int_to_ip((0xFFFFFFFF << (32 - self.prefix)) & 0xFFFFFFFF)

    @property
    def network(self) -> str:
        return f"{int_to_ip(ip_to_int(self.ip) & ip_to_int(self.netmask))}/{self.prefix}"


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


class SsitabError(Exception):
    """A table with one or more problems; str() lists them all, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Ssitab:
    path: str
    nodes: tuple[Node, ...]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def by_mac(self) -> dict[str, Node]:
        return {mac: node for node in self.nodes for mac in node.macs}

    def by_number(self) -> dict[int, Node]:
        return {node.number: node for node in self.nodes}


def normalize_mac(text: str) -> str | None:
    """Lower-case colon form, or None when `text` is not a 6-octet MAC."""
    if not _MAC_RE.fullmatch(text):
        return None
    return text.replace("-", ":").lower()


def ip_to_int(text: str) -> int:
    """A canonical dotted quad (as this parser leaves every address) as an integer."""
    return int.from_bytes(inet_aton(text), "big")


def int_to_ip(value: int) -> str:
    return inet_ntoa(value.to_bytes(4, "big"))


def _is_decimal(text: str, max_len: int) -> bool:
    # The length bound comes first: int() refuses strings of over 4300 digits.
    return 0 < len(text) <= max_len and text.isascii() and text.isdigit()


def _parse_ipv4(text: str) -> int | None:
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        # Leading zeros are rejected: some tools read them as octal.
        if not _is_decimal(part, 3) or (len(part) > 1 and part[0] == "0"):
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = (value << 8) | octet
    return value


def _is_host_address(text: str) -> bool:
    """A canonical dotted quad of a unicast host: what server= may name."""
    ip = _parse_ipv4(text)
    return ip is not None and (ip >> 24) not in (0, 127) and ip >> 24 < 224


def is_valid_hostname(name: str) -> bool:
    """RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.

    The last label must not be all digits (RFC 3696 section 2): "10.0.0.5"
    would read as an address in DHCP and DNS configurations.
    """
    if not 0 < len(name) <= 253:
        return False
    labels = name.split(".")
    return all(_LABEL_RE.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def parse_bootdev(text: str) -> BootDev | None:
    if text.startswith("/dev/"):
        if _DEVNAME_RE.fullmatch(text) and ".." not in text:
            return BootDev(BootDevKind.PATH, text)
        return None
    key, sep, value = text.partition("=")
    if not sep:
        return None
    if key == "LABEL" and _FS_LABEL_RE.fullmatch(value):
        return BootDev(BootDevKind.LABEL, value)
    if key in ("UUID", "PARTUUID") and _UUID_RE.fullmatch(value):
        return BootDev(BootDevKind(key), value.lower())
    return None


def _fields(line: str) -> list[tuple[int, str]]:
    """Whitespace-separated words with their 1-based columns."""
    return [(m.start() + 1, m.group()) for m in _WORD_RE.finditer(line)]


def _fast_node(text: str, lineno: int) -> Node | None:
    """A plainly valid line's node, uniqueness aside; None leaves it to the careful path."""
    m = _FAST_RE.fullmatch(text)
    if m is None:
        return None
    num, addr, _a, _b, _c, d, pfx, mac_text, flag, boot, hostname, server = m.groups()
    prefix = DEFAULT_PREFIX if pfx is None else int(pfx)
    if prefix == 24:
        if d == "0" or d == "255":
            return None
    elif prefix <= 30:
        hostmask = (1 << (32 - prefix)) - 1
        # The regex has made addr a canonical dotted quad: inet_aton reads it as such.
        host = ip_to_int(addr) & hostmask
        if host == 0 or host == hostmask:
            return None
    if "-" in mac_text:
        if ":" in mac_text:  # mixed spellings: the careful path checks each MAC
            return None
        mac_text = mac_text.replace("-", ":")
    macs = tuple(mac_text.lower().split(","))
    if "00:00:00:00:00:00" in macs or (len(macs) > 1 and len(set(macs)) != len(macs)):
        return None
    local = flag == "1" or (flag != "0" and flag.lower() == "yes")
    bootdev: BootDev | None = None
    if local:
        bootdev = parse_bootdev(boot)
        if bootdev is None:
            return None
    elif boot != "-":
        return None
    number = int(num)
    if hostname is None:
        hostname = f"node{number}"
    elif len(hostname) > 253 or hostname.rpartition(".")[2].isdigit():
        return None
    return Node(number, addr, prefix, macs, local, bootdev, hostname, lineno, server)


def _all_unique(values: Iterable[object], count: int) -> bool:
    return len(set(values)) == count


def _parse_plain(text: str, path: str) -> Ssitab | None:
    """The whole table when every line is plainly valid and unique, else None.

    Uniqueness is checked in bulk at the end, which is much cheaper than
    dictionary bookkeeping per line; any doubt sends the table to _parse().
    """
    nodes: list[Node] = []
    append = nodes.append
    for lineno, raw in enumerate(text.split("\n"), 1):
        if "#" in raw:
            raw = raw.split("#", 1)[0]
        if not raw or raw.isspace():
            continue
        node = _fast_node(raw, lineno)
        if node is None:
            return None
        append(node)
    count = len(nodes)
    macs = list(chain.from_iterable(map(attrgetter("macs"), nodes)))
    if not (_all_unique(map(attrgetter("number"), nodes), count)
            and _all_unique(map(attrgetter("ip"), nodes), count)
            and _all_unique(map(str.lower, map(attrgetter("hostname"), nodes)), count)
            and _all_unique(macs, len(macs))):
        return None
    return Ssitab(path, tuple(nodes))


def _printable(text: str) -> str:
    """A message as a terminal may show it: the words it quotes from a corrupt or hostile
    table keep their control characters and undecodable bytes only as escapes (\\x1b,
    \\xff), so an error cannot move the cursor or clear the admin's screen."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable()
                   else f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else c.encode("unicode_escape").decode("ascii") for c in text)


class _Failed:
    """What a column check returns after reporting its error (None can be a valid value)."""


_FAILED = _Failed()


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.nodes: list[Node] = []
        # Where each unique value was first seen, for "first on line N" messages.
        self.numbers: dict[int, int] = {}
        self.ips: dict[str, int] = {}  # canonical dotted quad
        self.macs: dict[str, int] = {}
        self.hostnames: dict[str, int] = {}

    def error(self, lineno: int, col: int, message: str) -> None:
        self.problems.append(Problem(self.path, lineno, col, _printable(message)))

    def fast_line(self, lineno: int, text: str) -> bool:
        """Accept a plainly valid line and return True; False leaves it to line()."""
        node = _fast_node(text, lineno)
        if node is None:
            return False
        key = node.hostname.lower()
        seen = self.macs
        if (node.number in self.numbers or node.ip in self.ips or key in self.hostnames
                or any(mac in seen for mac in node.macs)):
            return False
        self.numbers[node.number] = lineno
        self.ips[node.ip] = lineno
        for mac in node.macs:
            seen[mac] = lineno
        self.hostnames[key] = lineno
        self.nodes.append(node)
        return True

    def line(self, lineno: int, raw: str) -> None:
        text = raw.split("#", 1)[0]
        words = _fields(text)
        if not words:
            return
        if len(words) < 5:
            end = len(text.rstrip()) + 1
            self.error(lineno, end, f"too few columns ({len(words)}); expected "
                       "'node ip mac local bootdev [options]', e.g. '1 10.0.0.11/24 "
                       "52:54:00:12:34:01 0 -'")
            return
        number = self.node_number(lineno, *words[0])
        ip_prefix = self.address(lineno, *words[1])
        macs = self.mac_list(lineno, *words[2])
        local = self.local_flag(lineno, *words[3])
        bootdev = self.boot_device(lineno, words[4][0], words[4][1], local)
        options = self.options(lineno, words[5:])
        hostname: str | None = None
        server = options["server"][1] if options is not None and "server" in options else None
        if options is not None:
            if "hostname" in options:
                col, hostname = options["hostname"]
                hostname = self.unique_hostname(lineno, col, hostname, None)
            elif number is not None:
                hostname = self.unique_hostname(lineno, words[0][0], f"node{number}", number)
        if (number is None or ip_prefix is None or macs is None or local is None
                or isinstance(bootdev, _Failed) or hostname is None):
            return
        ip, prefix = ip_prefix
        self.nodes.append(Node(number, int_to_ip(ip), prefix, macs, local, bootdev,
                               hostname, lineno, server))

    def node_number(self, lineno: int, col: int, word: str) -> int | None:
        if not _is_decimal(word, 6) or word[0] == "0":
            self.error(lineno, col, f"bad node number '{word}'; expected an integer "
                       f"from 1 to {MAX_NODE}")
            return None
        number = int(word)
        if number in self.numbers:
            self.error(lineno, col, f"duplicate node number {number} (first on line "
                       f"{self.numbers[number]}); node numbers must be unique")
            return None
        self.numbers[number] = lineno
        return number

    def address(self, lineno: int, col: int, word: str) -> tuple[int, int] | None:
        addr, slash, pfx = word.partition("/")
        ip = _parse_ipv4(addr)
        if ip is None:
            self.error(lineno, col, f"bad IPv4 address '{addr}'; expected four decimal "
                       "octets 0-255 with an optional /prefix, e.g. 10.0.0.11/24")
        prefix: int | None = DEFAULT_PREFIX
        if slash:
            prefix = int(pfx) if _is_decimal(pfx, 2) else None
            if prefix is None or not 1 <= prefix <= 32:
                self.error(lineno, col + len(addr), f"bad prefix '/{pfx}'; expected "
                           "/1 to /32, e.g. 10.0.0.11/24")
                prefix = None
        if ip is None:
            return None
        first = ip >> 24
        if first == 0 or first == 127 or first >= 224:
            self.error(lineno, col, f"address {addr} is not a unicast host address; "
                       "expected e.g. 10.0.0.11/24")
            return None
        if prefix is None:
            return None
        # /31 and /32 have no network or broadcast address (RFC 3021).
        if prefix <= 30:
            hostmask = (1 << (32 - prefix)) - 1
            if ip & hostmask == 0:
                self.error(lineno, col, f"{addr} is the network address of "
                           f"{addr}/{prefix}; use a host address inside the subnet")
                return None
            if ip & hostmask == hostmask:
                self.error(lineno, col, f"{addr} is the broadcast address of "
                           f"{addr}/{prefix}; use a host address inside the subnet")
                return None
        # addr is canonical: _parse_ipv4 refuses leading zeros.
        if addr in self.ips:
            self.error(lineno, col, f"duplicate IP address {addr} (first on line "
                       f"{self.ips[addr]}); each node needs its own address")
            return None
        self.ips[addr] = lineno
        return ip, prefix

    def mac_list(self, lineno: int, col: int, word: str) -> tuple[str, ...] | None:
        macs: list[str] = []
        ok = True
        offset = 0
        for item in word.split(","):
            here = col + offset
            offset += len(item) + 1
            mac = normalize_mac(item)
            if mac is None:
                self.error(lineno, here, f"bad MAC address '{item}'; expected six hex "
                           "octets separated by ':' or '-', e.g. 52:54:00:12:34:01")
                ok = False
            elif mac == "00:00:00:00:00:00":
                self.error(lineno, here, f"MAC {mac} is all-zero; use the NIC's real address")
                ok = False
            elif mac == "ff:ff:ff:ff:ff:ff":
                self.error(lineno, here, f"MAC {mac} is the broadcast address; use the "
                           "NIC's real address")
                ok = False
            elif int(mac[:2], 16) & 1:
                self.error(lineno, here, f"MAC {mac} is a multicast address (first octet "
                           "odd); a NIC's address has an even first octet")
                ok = False
            elif mac in self.macs:
                self.error(lineno, here, f"duplicate MAC {mac} (first on line "
                           f"{self.macs[mac]}); a MAC belongs to one node only")
                ok = False
            else:
                self.macs[mac] = lineno
                macs.append(mac)
        return tuple(macs) if ok else None

    def local_flag(self, lineno: int, col: int, word: str) -> bool | None:
        flag = word.lower() if word.isascii() else word
        if flag in _TRUE:
            return True
        if flag in _FALSE:
            return False
        self.error(lineno, col, f"bad local boot flag '{word}'; expected 1, 0, yes or no")
        return None

    def boot_device(self, lineno: int, col: int, word: str,
                    local: bool | None) -> BootDev | _Failed | None:
        """The node's boot partition, None for '-'."""
        if word == "-":
            if local:
                self.error(lineno, col, "local node without a boot device; expected "
                           "/dev/NAME, LABEL=, UUID= or PARTUUID=")
                return _FAILED
            return None
        bootdev = parse_bootdev(word)
        if bootdev is None:
            self.error(lineno, col, f"bad boot device '{word}'; expected /dev/NAME, "
                       "LABEL=NAME, UUID=UUID, PARTUUID=UUID or '-'")
            return _FAILED
        if local is False:
            self.error(lineno, col, f"non-local node with boot device '{word}'; use '-' "
                       "or set the local flag to 1")
            return _FAILED
        return bootdev

    def options(self, lineno: int,
                words: list[tuple[int, str]]) -> dict[str, tuple[int, str]] | None:
        """key -> (column, value); None after an error."""
        options: dict[str, tuple[int, str]] = {}
        ok = True
        for index, (col, word) in enumerate(words):
            if "=" not in word and index > 0:
                self.error(lineno, col, f"too many columns: '{word}'; expected "
                           "'node ip mac local bootdev [key=value ...]'")
                ok = False
                continue
            offset = 0
            for item in word.split(","):
                here = col + offset
                offset += len(item) + 1
                key, sep, value = item.partition("=")
                if not sep or not key:
                    self.error(lineno, here, f"malformed option '{item}'; expected "
                               "key=value, e.g. hostname=n3")
                    ok = False
                elif key not in KNOWN_OPTIONS:
                    self.error(lineno, here, f"unknown option '{key}'; known options: "
                               + ", ".join(KNOWN_OPTIONS))
                    ok = False
                elif key in options:
                    self.error(lineno, here, f"option '{key}' given twice; give it once")
                    ok = False
                elif key == "hostname" and not is_valid_hostname(value):
                    self.error(lineno, here + len(key) + 1, f"bad hostname '{value}'; "
                               "expected RFC 1123 labels of letters, digits and inner "
                               "hyphens, the last one not all digits, e.g. n3")
                    ok = False
                elif key == "server" and not _is_host_address(value):
                    self.error(lineno, here + len(key) + 1, f"bad server address '{value}'; "
                               "expected the IPv4 address of the node's boot server (four "
                               "decimal octets, a unicast host), e.g. server=10.0.0.1")
                    ok = False
                else:
                    options[key] = (here + len(key) + 1, value)
        return options if ok else None

    def unique_hostname(self, lineno: int, col: int, name: str,
                        default_for: int | None) -> str | None:
        # DNS names are case-insensitive: N3 and n3 are the same host.
        key = name.lower()
        first = self.hostnames.get(key)
        if first is None:
            self.hostnames[key] = lineno
            return name
        if default_for is None:
            self.error(lineno, col, f"duplicate hostname '{name}' (first on line {first}); "
                       "each node needs its own hostname=")
        else:
            self.error(lineno, col, f"node {default_for}'s default hostname '{name}' is "
                       f"already used on line {first}; give one of them another hostname=")
        return None


def _parse(text: str, path: str, fast: bool) -> Ssitab:
    """Line by line with bookkeeping; fast=False uses the careful path alone."""
    parser = _Parser(path)
    fast_line = parser.fast_line
    line = parser.line
    # split("\n") rather than splitlines(): the latter also breaks at form
    # feeds and U+2028 and would number lines differently from editors.
    for lineno, raw in enumerate(text.split("\n"), 1):
        if "#" in raw:
            raw = raw.split("#", 1)[0]
        if not (fast and fast_line(lineno, raw)):
            line(lineno, raw)
    if parser.problems:
        raise SsitabError(parser.problems)
    return Ssitab(path, tuple(parser.nodes))


def parse(text: str, path: str = DEFAULT_PATH) -> Ssitab:
    """Parse a whole table; raise SsitabError listing every problem."""
    # The parser allocates only acyclic objects, yet their sheer number would
    # trigger full collections that cost as much as the parsing itself.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        table = _parse_plain(text, path)
        return _parse(text, path, fast=True) if table is None else table
    finally:
        if gc_was_enabled:
            gc.enable()


def parse_bytes(data: bytes, path: str = DEFAULT_PATH) -> Ssitab:
    """The table in a file's bytes, read as a text file reads (any newline convention)."""
    text = data.decode("utf-8", errors="surrogateescape")
    return parse(text.replace("\r\n", "\n").replace("\r", "\n"), path)


def load(path: str = DEFAULT_PATH) -> Ssitab:
    """Read and parse `path`; OSError propagates to the caller, which knows the context."""
    with open(path, "rb") as f:
        return parse_bytes(f.read(), path)
