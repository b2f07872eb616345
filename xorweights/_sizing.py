"""How work is cut: the chunk every pass reads at a time and the files done at once."""

from __future__ import annotations

import os

#: Bytes XOR-ed per step. Memory per job is a small multiple of this, whatever the file size.
CHUNK_SIZE = 16 * 1024 * 1024

#: Files processed at once by default: the cores, at most this many (each file already keeps
#: several cores busy; more files would only add memory).
DEFAULT_MAX_JOBS = 4


def default_jobs() -> int:
    """Files processed at once unless told: the cores, at most `DEFAULT_MAX_JOBS`."""
    return max(1, min(os.cpu_count() or 1, DEFAULT_MAX_JOBS))
