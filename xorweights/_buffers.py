"""Large work buffers mapped from the kernel rather than taken from the allocator's heaps.

The C allocator serves large requests from its heaps once it has seen a few freed (its mmap
threshold rises, up to 32 MiB), and freed heap memory mostly stays in the process. Buffers of a
pass (chunks of 16 MiB, frames of up to 32 MiB), mapped on their own, are given back to the kernel
the moment they are dropped: a process that runs many passes, failed ones included, does not grow.
"""

from __future__ import annotations

import logging
import mmap

import numpy as np

logger = logging.getLogger(__name__)

#: Below this, a buffer comes from the allocator as usual (mapping costs a system call and a page).
MAPPED_FROM = 1 << 20


def work_buffer(n: int) -> np.ndarray:
    """An uninitialised (in fact zeroed) `uint8` array of `n` bytes; mapped on its own when large."""
    if n < MAPPED_FROM:
        return np.empty(n, dtype=np.uint8)
    return np.frombuffer(mmap.mmap(-1, n), dtype=np.uint8)
