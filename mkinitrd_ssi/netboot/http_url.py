"""--http-url: kernel and ramdisk over HTTP, kept in ROOT/etc/ssi/http-url.

TFTP moves one 512-byte-to-1.4-kB block per round trip; HTTP streams over TCP. With
a URL, the loaders that speak HTTP (iPXE, GRUB) fetch the content-named set from
URL + its path in tftpboot (URL maps onto ROOT/tftpboot: any web server whose
document root is that directory serves it), and TFTP carries only what the
firmware itself must fetch (the loader and its config).

`{server}` in the URL stands for the node's boot server as DHCP named it
(next-server: ssitab server=, else the proto's): each loader substitutes it at
boot (iPXE `${next-server}`, GRUB `$net_default_server`), so one published tree,
copied unchanged to every boot server by `lilo.ssi --servers`, sends every node
to its own server. Without `{server}` every node fetches from the one URL.
"""

from __future__ import annotations

import re

from mkinitrd_ssi import cli
from mkinitrd_ssi.atomic import replace_if_changed
from mkinitrd_ssi.errors import SsiError

HTTP_URL_FILE = "/etc/ssi/http-url"
SERVER = "{server}"
IPXE_SERVER = "${next-server}"
GRUB_SERVER = "$net_default_server"

# http://HOST[:PORT][/PATH]: HOST a name, an IPv4 address or {server}. No characters
# that iPXE's or GRUB's command parsers would read as syntax (spaces, quotes, $, #, ;,
# braces outside {server}), no query or fragment (the set's path is appended).
_URL_RE = re.compile(r"http://(\{server\}|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
                     r"(?::([0-9]{1,5}))?(/[A-Za-z0-9._~/%+-]*)?")


def checked(text: str) -> str:
    """The URL as kept and published: validated, with exactly one trailing slash."""
    m = _URL_RE.fullmatch(text)
    if m is None:
        raise SsiError(f"--http-url {text!r}: not an http://HOST[:PORT]/PATH URL that boot "
                       "loaders can fetch from",
                       hint="e.g. --http-url http://10.77.0.1/ (the web server's document root "
                       "is ROOT/tftpboot), or http://{server}/ for each node's boot server; "
                       "--http-url '' goes back to TFTP")
    port = m.group(2)
    if port is not None and not 0 < int(port) < 65536:
        raise SsiError(f"--http-url {text!r}: port {port} out of range 1-65535")
    return text.rstrip("/") + "/"


def kept_http_url(root: cli.Root, given: str | None, *, dry_run: bool) -> str | None:
    """given (kept in ROOT/etc/ssi/http-url; '' clears it), else the kept one, else None."""
    path = root(HTTP_URL_FILE)
    if given is None:
        try:
            return checked(path.read_text().strip()) or None
        except FileNotFoundError:
            return None
    if given == "":
        if not dry_run:
            path.unlink(missing_ok=True)
        return None
    url = checked(given)
    if not dry_run:
        replace_if_changed(path, (url + "\n").encode(), backup=False)
    return url


def ipxe_dir(url: str | None, set_dir: str) -> str:
    """Where iPXE fetches the set: relative to its TFTP server, or by HTTP."""
    if url is None:
        return set_dir
    return url.replace(SERVER, IPXE_SERVER) + set_dir


def grub_dir(url: str | None, set_dir: str) -> str:
    """Where GRUB fetches the set: /PATH on its TFTP root, or (http,HOST[:PORT])/PATH.

    GRUB names a network file by device and path, not by URL.
    """
    if url is None:
        return f"/{set_dir}"
    m = _URL_RE.fullmatch(url)
    assert m is not None, url  # checked() let it in
    host = GRUB_SERVER if m.group(1) == SERVER else m.group(1)
    port = f":{m.group(2)}" if m.group(2) else ""
    return f"(http,{host}{port}){m.group(3) or '/'}{set_dir}"


def url_for(url: str, set_dir: str, server: str) -> str:
    """The URL one node fetches a set file from, with {server} filled in (tests, benches)."""
    return url.replace(SERVER, server) + set_dir
