"""Boot storms at a small size (the full size is bench/bench_storm.py): a few hundred
DHCP clients at once against each server's mkdhcpd.ssi config, every one getting
exactly its reserved address; and 16 clients fetching a set over HTTP and TFTP."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vm_tests.dhcpstorm import run_storm
from vm_tests.fetchstorm import fetch, fetch_network
from vm_tests.netns import available

pytestmark = pytest.mark.integration
SERVERS = {"isc": "dhcpd", "kea": "kea-dhcp4", "dnsmasq": "dnsmasq"}


@pytest.mark.parametrize("kind", list(SERVERS))
def test_dhcp_storm_every_client_gets_its_reserved_address(kind: str, tmp_path: Path) -> None:
    if available() or shutil.which(SERVERS[kind]) is None:
        pytest.skip(available() or f"{SERVERS[kind]} not installed (make deps)")
    result = run_storm(kind, 300, tmp_path, window=64, deadline=60)
    print(result.line())
    assert (result.leased, result.wrong) == (300, 0), result
    assert result.seconds < 60


def test_sixteen_clients_fetch_a_set_over_http_and_tftp(tmp_path: Path) -> None:
    for tool in ("nginx", "in.tftpd", "tftp", "curl"):
        if available() or shutil.which(tool) is None:
            pytest.skip(available() or f"{tool} not installed (make deps)")
    tftpboot = tmp_path / "tftpboot"
    where = tftpboot / "ssi/sets/0123456789abcdef"
    where.mkdir(parents=True)
    (where / "vmlinuz").write_bytes(os.urandom(300_000))
    (where / "initrd.img").write_bytes(os.urandom(700_000))
    tmp_path.chmod(0o755)
    files = ["ssi/sets/0123456789abcdef/vmlinuz", "ssi/sets/0123456789abcdef/initrd.img"]
    with fetch_network(tftpboot, tmp_path) as clients:
        for transport in ("http", "tftp"):
            result = fetch(clients, transport, files, 16, tmp_path, 1_000_000)
            print(result.line())
    access = (tmp_path / "nginx-access.log").read_text()
    assert access.count("GET /ssi/sets/0123456789abcdef/initrd.img HTTP/1.1\" 200") == 16
