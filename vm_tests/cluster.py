"""The node table and settings the VM tests and the demo boot with."""

from __future__ import annotations

from pathlib import Path

ROOT_LABEL = "ssiroot"
ROOT_UUID = "5a1d0b7e-0000-4000-8000-00000000cafe"
BOOT_LABEL = "ssiboot"

MAC_N1 = "52:54:00:12:34:01"
MAC_N2 = "52:54:00:12:34:02"
MAC_N3 = "52:54:00:12:34:03"
MAC_N3_SECOND = "52:54:00:12:34:13"
MAC_N4 = "52:54:00:12:34:04"
MAC_UNKNOWN = "52:54:00:12:34:99"

# The bundled example table is the test and demo cluster: one source for both.
SSITAB = (Path(__file__).resolve().parent.parent / "examples" / "ssitab").read_text()
