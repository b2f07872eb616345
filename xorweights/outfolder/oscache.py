"""Page-cache hints: start writeback early, and optionally drop pages behind the cursor.

Linux only (`sync_file_range` through libc, `posix_fadvise`); elsewhere every call is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4


def _load_sync_file_range():  # type: ignore[no-untyped-def]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_HAS_FADVISE = hasattr(os, "posix_fadvise")


def advise_sequential(fd: int) -> None:
    """Tell the kernel an input is read front to back (larger readahead)."""
    if _HAS_FADVISE:
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass


def drop(fd: int, end: int) -> None:
    """Drop the clean cached pages of `fd` before offset `end`."""
    if _HAS_FADVISE and end > 0:
        try:
            os.posix_fadvise(fd, 0, end, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Queue the written range for writeback now, without waiting for it."""
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def finish_writeback(fd: int, offset: int, length: int) -> None:
    """Wait until the range is on disk (it can then be dropped from the cache)."""
    if _sync_file_range is not None and length > 0:
        flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
        _sync_file_range(fd, offset, length, flags)
