"""Boot storms, measured (issue 15): DHCP leases/s and worst latency of ISC dhcpd, Kea
and dnsmasq serving mkdhcpd.ssi's configs to 1,000 and 10,000 clients at once; and the
time N clients take to fetch a kernel + ramdisk from nginx (HTTP) and tftpd-hpa (TFTP).

    .venv/bin/python bench/bench_storm.py [--sizes 1000,10000] [--windows 64,512]
                                          [--fetchers 16,64]

Root (network namespaces). Each run is one measurement: the machine is shared, so
repeat it before trusting a difference of a few percent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vm_tests.dhcpstorm import run_storm
from vm_tests.fetchstorm import fetch, fetch_network
from vm_tests.kernel import cached

RAMDISK_BYTES = 8_800_000  # bench_pxe's ramdisk (the agent's, zstd)


def dhcp(sizes: list[int], windows: list[int]) -> None:
    print("DHCP storm: clients, window (clients in flight), leases/s, worst latency")
    for size in sizes:
        for window in windows:
            for kind in ("isc", "kea", "dnsmasq"):
                with tempfile.TemporaryDirectory() as tmp:
                    result = run_storm(kind, size, Path(tmp), window=window, deadline=600)
                print(f"  window {window:4}: {result.line()}", flush=True)


def delivery(counts: list[int]) -> None:
    kernel = cached()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        where = work / "tftpboot/ssi/sets/bench"
        where.mkdir(parents=True)
        if kernel is not None:  # the Debian cloud kernel the VM tests boot
            shutil.copyfile(kernel.vmlinuz, where / "vmlinuz")
        else:
            (where / "vmlinuz").write_bytes(os.urandom(14_000_000))
        (where / "initrd.img").write_bytes(os.urandom(RAMDISK_BYTES))
        size = sum(p.stat().st_size for p in where.iterdir())
        print(f"kernel + ramdisk delivery: {size / 1e6:.1f} MB per client")
        files = ["ssi/sets/bench/vmlinuz", "ssi/sets/bench/initrd.img"]
        with fetch_network(work / "tftpboot", work) as clients:
            for count in counts:
                for transport in ("http", "tftp"):
                    print("  " + fetch(clients, transport, files, count, work, size).line(),
                          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--windows", default="64,512")
    parser.add_argument("--fetchers", default="16,64")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_storm.py: needs root (network namespaces)")
    dhcp([int(s) for s in args.sizes.split(",")], [int(w) for w in args.windows.split(",")])
    delivery([int(n) for n in args.fetchers.split(",")])


if __name__ == "__main__":
    main()
