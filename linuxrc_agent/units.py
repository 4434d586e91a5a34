"""Sizes as people read them: one formatter for the agent's messages and the admin tools."""

from __future__ import annotations


def human_size(size: int) -> str:
    """Bytes in binary units, one decimal above bytes: `512 B`, `70.0 MiB`, `1.5 TiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
