"""The one parser of /etc/ssitab, shared by the boot agent and every admin command.

Standard library only: the agent imports it at boot. It validates by hand
rather than through `ipaddress` so that a 1,000,000-line table parses in
seconds, and it collects every problem of a file before failing so an admin
fixes a table in one pass.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

DEFAULT_PATH = "/etc/ssitab"
DEFAULT_PREFIX = 24
MAX_NODE = 999_999
KNOWN_OPTIONS = ("hostname",)

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_DEVNAME_RE = re.compile(r"^/dev/[A-Za-z0-9][A-Za-z0-9_.+:-]*(/[A-Za-z0-9][A-Za-z0-9_.+:-]*)*$")
_UUID_RE = re.compile(
    r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # ext4, xfs, GPT
    r"|[0-9a-fA-F]{4}-[0-9a-fA-F]{4}"  # vfat volume id
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{2})$"  # MBR PARTUUID: disk id - partition number
)
_FS_LABEL_RE = re.compile(r"^[^\s\"'\\]{1,64}$")

_TRUE = frozenset({"1", "yes"})
_FALSE = frozenset({"0", "no"})


class BootDevKind(enum.Enum):
    PATH = "path"
    LABEL = "LABEL"
    UUID = "UUID"
    PARTUUID = "PARTUUID"


@dataclass(frozen=True)
class BootDev:
    kind: BootDevKind
    value: str

    def __str__(self) -> str:
        return self.value if self.kind is BootDevKind.PATH else f"{self.kind.value}={self.value}"


@dataclass(frozen=True)
class Node:
    number: int
    ip: str
    prefix: int
    macs: tuple[str, ...]
    local: bool
    bootdev: BootDev | None
    hostname: str
    line: int = field(default=0, compare=False)

    @property
    def netmask(self) -> str:
        return _int_to_ip((0xFFFFFFFF << (32 - self.prefix)) & 0xFFFFFFFF)

    @property
    def network(self) -> str:
        return f"{_int_to_ip(_ip_to_int(self.ip) & _ip_to_int(self.netmask))}/{self.prefix}"


@dataclass(frozen=True)
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
    if not _MAC_RE.match(text):
        return None
    return text.replace("-", ":").lower()


def _ip_to_int(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def _int_to_ip(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _parse_ipv4(text: str) -> int | None:
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        # Leading zeros are rejected: some tools read them as octal.
        if not part.isdigit() or not part.isascii() or (len(part) > 1 and part[0] == "0"):
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = (value << 8) | octet
    return value


def is_valid_hostname(name: str) -> bool:
    """RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens."""
    return 0 < len(name) <= 253 and all(_LABEL_RE.match(label) for label in name.split("."))


def parse_bootdev(text: str) -> BootDev | None:
    if text.startswith("/dev/"):
        return BootDev(BootDevKind.PATH, text) if _DEVNAME_RE.match(text) and ".." not in text else None
    key, sep, value = text.partition("=")
    if not sep:
        return None
    if key == "LABEL" and _FS_LABEL_RE.match(value):
        return BootDev(BootDevKind.LABEL, value)
    if key in ("UUID", "PARTUUID") and _UUID_RE.match(value):
        return BootDev(BootDevKind(key), value.lower())
    return None


def _fields(line: str) -> list[tuple[int, str]]:
    """Whitespace-separated words with their 1-based columns."""
    return [(m.start() + 1, m.group()) for m in re.finditer(r"\S+", line)]


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.nodes: list[Node] = []
        self.numbers: dict[int, int] = {}
        self.ips: dict[int, int] = {}
        self.macs: dict[str, int] = {}

    def error(self, lineno: int, col: int, message: str) -> None:
        self.problems.append(Problem(self.path, lineno, col, message))

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
        ok = True
        number = self.node_number(lineno, *words[0])
        ip_prefix = self.address(lineno, *words[1])
        macs = self.mac_list(lineno, *words[2])
        local = self.local_flag(lineno, *words[3])
        bootdev = self.boot_device(lineno, words[4][0], words[4][1], local)
        options = self.options(lineno, words[5:])
        if number is None or ip_prefix is None or macs is None or local is None:
            ok = False
        if bootdev is False or options is None:
            ok = False
        if not ok:
            return
        assert number is not None and ip_prefix is not None and macs is not None
        assert local is not None and options is not None and bootdev is not False
        ip, prefix = ip_prefix
        self.nodes.append(Node(number, _int_to_ip(ip), prefix, macs, local, bootdev,
                               options.get("hostname", f"node{number}"), lineno))

    def node_number(self, lineno: int, col: int, word: str) -> int | None:
        if not (word.isascii() and word.isdigit()) or not 1 <= int(word) <= MAX_NODE \
                or (len(word) > 1 and word[0] == "0"):
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
        prefix = DEFAULT_PREFIX
        if slash:
            if not (pfx.isascii() and pfx.isdigit()) or not 1 <= int(pfx) <= 32:
                self.error(lineno, col + len(addr) + 1, f"bad prefix '/{pfx}'; expected "
                           "/1 to /32, e.g. 10.0.0.11/24")
                return None
            prefix = int(pfx)
        ip = _parse_ipv4(addr)
        if ip is None:
            self.error(lineno, col, f"bad IPv4 address '{addr}'; expected four decimal "
                       "octets 0-255 with an optional /prefix, e.g. 10.0.0.11/24")
            return None
        first = ip >> 24
        if ip == 0 or first == 127 or first >= 224:
            self.error(lineno, col, f"address {addr} is not a unicast host address; "
                       "expected e.g. 10.0.0.11/24")
            return None
        if prefix <= 30:
            hostmask = (1 << (32 - prefix)) - 1
            if ip & hostmask == 0:
                self.error(lineno, col, f"{addr} is the network address of {word}; "
                           "use a host address inside the subnet")
                return None
            if ip & hostmask == hostmask:
                self.error(lineno, col, f"{addr} is the broadcast address of {word}; "
                           "use a host address inside the subnet")
                return None
        if ip in self.ips:
            self.error(lineno, col, f"duplicate IP address {addr} (first on line "
                       f"{self.ips[ip]}); each node needs its own address")
            return None
        self.ips[ip] = lineno
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
        flag = word.lower()
        if flag in _TRUE:
            return True
        if flag in _FALSE:
            return False
        self.error(lineno, col, f"bad local boot flag '{word}'; expected 1, 0, yes or no")
        return None

    def boot_device(self, lineno: int, col: int, word: str,
                    local: bool | None) -> BootDev | None | bool:
        """The node's boot partition, None for '-', False after an error."""
        if word == "-":
            if local:
                self.error(lineno, col, "local node without a boot device; expected "
                           "/dev/NAME, LABEL=, UUID= or PARTUUID=")
                return False
            return None
        bootdev = parse_bootdev(word)
        if bootdev is None:
            self.error(lineno, col, f"bad boot device '{word}'; expected /dev/NAME, "
                       "LABEL=NAME, UUID=UUID, PARTUUID=UUID or '-'")
            return False
        if local is False:
            self.error(lineno, col, f"non-local node with boot device '{word}'; use '-' "
                       "or set the local flag to 1")
            return False
        return bootdev

    def options(self, lineno: int, words: list[tuple[int, str]]) -> dict[str, str] | None:
        options: dict[str, str] = {}
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
                    self.error(lineno, here, f"option '{key}' given twice")
                    ok = False
                elif key == "hostname" and not is_valid_hostname(value):
                    self.error(lineno, here, f"bad hostname '{value}'; expected RFC 1123 "
                               "labels of letters, digits and inner hyphens, e.g. n3")
                    ok = False
                else:
                    options[key] = value
        return options if ok else None


def parse(text: str, path: str = DEFAULT_PATH) -> Ssitab:
    """Parse a whole table; raise SsitabError listing every problem."""
    parser = _Parser(path)
    for lineno, raw in enumerate(text.splitlines(), 1):
        parser.line(lineno, raw)
    if parser.problems:
        raise SsitabError(parser.problems)
    return Ssitab(path, tuple(parser.nodes))


def load(path: str = DEFAULT_PATH) -> Ssitab:
    """Read and parse `path`; OSError propagates to the caller, which knows the context."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read(), path)
