"""The node table and settings the VM tests and the demo boot with."""

from __future__ import annotations

ROOT_LABEL = "ssiroot"
ROOT_UUID = "5a1d0b7e-0000-4000-8000-00000000cafe"
BOOT_LABEL = "ssiboot"

MAC_N1 = "52:54:00:12:34:01"
MAC_N2 = "52:54:00:12:34:02"
MAC_N3 = "52:54:00:12:34:03"
MAC_N3_SECOND = "52:54:00:12:34:13"
MAC_N4 = "52:54:00:12:34:04"
MAC_UNKNOWN = "52:54:00:12:34:99"

SSITAB = f"""\
# node  ip              mac                                  local  bootdev          options
1       10.77.0.11/24   {MAC_N1}                    0      -                hostname=n1
2       10.77.0.12/24   {MAC_N2}                    1      LABEL={BOOT_LABEL}    hostname=n2
3       10.77.0.13/24   {MAC_N3},{MAC_N3_SECOND}  0      -                hostname=n3
4       10.77.0.14/24   {MAC_N4}                    1      /dev/vdb1        hostname=n4
"""
