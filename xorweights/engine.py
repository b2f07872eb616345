"""Chunked XOR of two byte streams, with hashing fused into the same pass.

The data stream sets the output length (the legacy rule): the base is read alongside it,
zero-padded where it is shorter and ignored past the data's end (though still hashed when a
base digest is wanted, so no file is read twice). Two reusable `uint8` buffers of
`chunk_size` bytes are all the memory a call needs, whatever the file sizes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

import numpy as np
import numpy.typing as npt

from .constants import CHUNK_SIZE

logger = logging.getLogger(__name__)

#: Which stream a digest is taken of: the data (payload or fine-tuned), the base, the output.
Role = Literal["data", "base", "out"]


class Cancelled(Exception):
    """Raised inside a pass when the caller's `should_stop` says so (another job failed)."""


@dataclass(frozen=True)
class XorStats:
    """What one pass read, wrote and hashed."""

    size: int
    """Bytes of output written (equal to the bytes of data read)."""
    base_read: int
    """Bytes of base read: the overlap, or the whole base when its digest was wanted."""
    digests: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Hex digests by role (`data`, `base`, `out`) and algorithm (`md5`, `sha256`)."""


def read_full(stream: BinaryIO, view: memoryview) -> int:
    """Fill `view` from `stream` as far as it goes; returns the count (short only at EOF)."""
    filled = 0
    total = len(view)
    while filled < total:
        n = stream.readinto(view[filled:])  # type: ignore[attr-defined]
        if not n:
            break
        filled += n
    return filled


def xor_stream(
    data: BinaryIO,
    base: BinaryIO | None,
    out: BinaryIO,
    *,
    hashes: Mapping[Role, Sequence[str]] | None = None,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> XorStats:
    """Write `data XOR base` to `out`, chunk by chunk; `base=None` copies `data`.

    Args:
        data (`BinaryIO`): the stream whose length the output takes (payload, or fine-tuned file).
        base (`BinaryIO`, *optional*): the base stream; zero-padded when shorter, truncated when longer.
        out (`BinaryIO`): where the result goes.
        hashes (`Mapping`, *optional*): algorithms wanted per role, e.g. `{"out": ["md5"]}`.
        chunk_size (`int`): bytes per step.
        on_progress (`Callable`, *optional*): called with the bytes of output written per step.
        should_stop (`Callable`, *optional*): polled per step; when true, the pass raises `Cancelled`.

    Returns:
        `XorStats`: sizes and the requested digests.
    """
    hashes = hashes or {}
    hashers = {role: {algo: hashlib.new(algo) for algo in algos} for role, algos in hashes.items() if algos}
    data_h = list(hashers.get("data", {}).values())
    base_h = list(hashers.get("base", {}).values())
    out_h = list(hashers.get("out", {}).values())

    buf_a: npt.NDArray[np.uint8] = np.empty(chunk_size, dtype=np.uint8)
    buf_b: npt.NDArray[np.uint8] | None = np.empty(chunk_size, dtype=np.uint8) if base is not None else None
    view_a = memoryview(buf_a)
    view_b = memoryview(buf_b) if buf_b is not None else None

    size = 0
    base_read = 0
    base_done = base is None
    while True:
        if should_stop is not None and should_stop():
            raise Cancelled()
        n = read_full(data, view_a)
        if n == 0:
            break
        for h in data_h:
            h.update(view_a[:n])
        if not base_done:
            assert buf_b is not None and view_b is not None and base is not None
            m = read_full(base, view_b[:n])
            if m:
                for h in base_h:
                    h.update(view_b[:m])
                np.bitwise_xor(buf_a[:m], buf_b[:m], out=buf_a[:m])
                base_read += m
            if m < n:
                base_done = True  # base shorter: the rest XORs with zeros, i.e. stays as is
        for h in out_h:
            h.update(view_a[:n])
        out.write(view_a[:n])
        size += n
        if on_progress is not None:
            on_progress(n)
        if n < chunk_size:
            break

    if not base_done and base_h:
        # Base longer than the data: its tail is not used, but its digest covers it.
        assert view_b is not None and base is not None
        while m := read_full(base, view_b):
            for h in base_h:
                h.update(view_b[:m])
            base_read += m

    digests = {role: {algo: h.hexdigest() for algo, h in hs.items()} for role, hs in hashers.items()}
    return XorStats(size=size, base_read=base_read, digests=digests)
