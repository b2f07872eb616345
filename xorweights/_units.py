"""Sizes, rates and durations for people, in binary units: one formatter for the command line,
progress and the model card."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """`123 B`, `4.0 KiB`, ..., `1.2 TiB`."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _three_digits(x: float) -> str:
    """A magnitude in up to three significant digits: `412`, `41.2`, `4.12`, `0.41`, `0.001`."""
    if x == 0:
        return "0"
    if abs(x) >= 99.95:
        return f"{x:.0f}"
    if abs(x) >= 9.995:
        return f"{x:.1f}"
    if abs(x) >= 0.995:
        return f"{x:.2f}"
    return f"{x:.2g}"


def human_rate(n_bytes: float, seconds: float) -> str:
    """A byte rate in binary units: `412 MiB/s`, `41.2 MiB/s`, `410 KiB/s`, `0.25 B/s`; `-` without time.

    Slow rates step down a unit rather than round to zero.
    """
    if seconds <= 0:
        return "-"
    rate = n_bytes / seconds
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(rate) < 999.5:
            return f"{_three_digits(rate)} {unit}/s"
        rate /= 1024
    return f"{_three_digits(rate)} TiB/s"


def human_duration(seconds: float) -> str:
    """A rough length of time: `40 s`, `12 min`, `2.5 h`."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """A size as transformers' `max_shard_size` takes it: bytes, or `5GB` (10^9), `5GiB` (2^30), ...

    Raises:
        `ValueError`: not a positive size.
    """
    if isinstance(text, int):
        value = text
    else:
        s = text.strip().upper().replace(" ", "")
        digits = s.rstrip("KMGTIB")
        unit = s[len(digits) :]
        if unit not in _SIZE_UNITS or not digits:
            raise ValueError(f"{text!r} is not a size (e.g. 5GB, 500MB, 2GiB or a byte count)")
        try:
            value = int(float(digits) * _SIZE_UNITS[unit])
        except ValueError:
            raise ValueError(f"{text!r} is not a size (e.g. 5GB, 500MB, 2GiB or a byte count)") from None
    if value <= 0:
        raise ValueError(f"{text!r}: a size must be positive")
    return value
