"""Kernel + ramdisk delivery to N clients at once: nginx (HTTP) against tftpd-hpa (TFTP).

One namespace serves a published tftpboot (tftpd-hpa on :69, nginx on :80 with
that directory as its document root, as --http-url expects); N clients in
another namespace each fetch the set's vmlinuz then initrd.img, all started at
once, with curl (HTTP) or tftp-hpa's `tftp` (TFTP, 512-byte blocks: this client
asks for no larger blksize, iPXE asks for 1432). The figure is the time until
the last client has both files; every copy is checked by size.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vm_tests.netns import Netns, Proc, veth

SERVER_IP = "10.77.0.1"

NGINX_CONF = """\
daemon off;
user root;  # test trees live under 0700 pytest directories
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log {tmp}/nginx-access.log;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  types {{ }}
  default_type application/octet-stream;
  server {{
    listen {ip}:80;
    root {root};
    location / {{ autoindex off; }}
  }}
}}
"""


# nginx's default "combined" format: client, -, -, [time], "request", status, body bytes
ACCESS_RE = re.compile(r'^(\S+) \S+ \S+ \[[^\]]*\] "GET (\S+) [^"]*" (\d{3}) (\d+)', re.M)


def http_fetches(access_log: Path, tftpboot: Path) -> dict[str, set[str]]:
    """Client IP -> the paths nginx sent it whole (status 200, every byte of the file)."""
    got: dict[str, set[str]] = {}
    for client, path, status, sent in ACCESS_RE.findall(access_log.read_text()):
        file = tftpboot / path.lstrip("/")
        if status == "200" and file.is_file() and int(sent) == file.stat().st_size:
            got.setdefault(client, set()).add(path.lstrip("/"))
    return got


def start_nginx(ns: Netns, tftpboot: Path, tmp: Path, ip: str = SERVER_IP) -> Proc:
    """nginx serving tftpboot as its document root (what --http-url maps onto)."""
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, ip=ip, root=tftpboot))
    proc = ns.popen(["nginx", "-c", str(conf), "-e", str(tmp / "nginx-error.log")],
                    log=tmp / "nginx.log")
    deadline = time.monotonic() + 10
    while not (tmp / "nginx.pid").exists():
        if not proc.running() or time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not start: {proc.output()}"
                               f"{(tmp / 'nginx-error.log').read_text(errors='replace')}")
        time.sleep(0.05)
    return proc


def start_tftpd(ns: Netns, tftpboot: Path, tmp: Path, ip: str = SERVER_IP) -> Proc:
    return ns.popen(["in.tftpd", "--foreground", "--verbose", "--user", "root", "--address",
                     f"{ip}:69", "--secure", str(tftpboot)], log=tmp / "tftpd.log")


@dataclass(frozen=True)
class FetchResult:
    transport: str
    clients: int
    seconds: float  # until the last client had both files
    bytes_each: int

    def line(self) -> str:
        mb = self.bytes_each * self.clients / 1e6
        return (f"{self.transport:5} {self.clients:3} clients: all done in {self.seconds:6.2f} s "
                f"({mb / self.seconds:6.1f} MB/s in all)")


@contextlib.contextmanager
def fetch_network(tftpboot: Path, tmp: Path) -> Iterator[Netns]:
    with Netns(workdir=tmp) as server, Netns(workdir=tmp) as clients:
        veth(server, clients, addr_a=f"{SERVER_IP}/24", addr_b="10.77.0.2/24")
        start_tftpd(server, tftpboot, tmp)
        start_nginx(server, tftpboot, tmp)
        time.sleep(0.5)
        yield clients


def fetch(clients: Netns, transport: str, files: list[str], count: int, tmp: Path,
          expect: int) -> FetchResult:
    """count clients at once, each fetching files (paths under tftpboot) in order."""
    out = tmp / f"{transport}-{count}"
    out.mkdir()
    procs = []
    start = time.monotonic()
    for i in range(count):
        if transport == "http":
            steps = " && ".join(f"curl -sf -o {out}/{i}-{n} http://{SERVER_IP}/{f}"
                                for n, f in enumerate(files))
        else:
            steps = " && ".join(f"tftp {SERVER_IP} -m binary -c get {f} {out}/{i}-{n}"
                                for n, f in enumerate(files))
        procs.append(clients.popen(["sh", "-c", steps], log=tmp / f"{transport}-{count}-{i}.log"))
    for proc in procs:
        proc.popen.wait(timeout=900)
    seconds = time.monotonic() - start
    got = sum(p.stat().st_size for p in out.iterdir())
    if got != expect * count or any(p.popen.returncode for p in procs):
        raise RuntimeError(f"{transport}: {got} bytes arrived, {expect * count} expected")
    for p in out.iterdir():
        p.unlink()
    return FetchResult(transport, count, seconds, expect)
