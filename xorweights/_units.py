"""Sizes for people: one formatter for the command line and the model card."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """`123 B`, `4.0 KiB`, ..., `1.2 TiB`."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
