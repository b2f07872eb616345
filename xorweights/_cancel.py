"""Cancellation shared by the threads of a run: one event, set when the run is interrupted.

Only the main thread receives signals (`KeyboardInterrupt`, or the CLI's `Interrupted`). Every
thread-pool helper runs its pool under `guard`: when the main thread leaves it by an exception, the
event is set, queued work is dropped, and only the running jobs are waited for; they notice the
event between chunks (`check`, or the XOR pass's `should_stop`) and stop with `Cancelled`, their
temporaries removed by `AtomicFile`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager

_event = threading.Event()


class Cancelled(Exception):
    """Raised inside a pass when the caller's `should_stop` says so (another job failed)."""


def requested() -> bool:
    """Whether the run is being stopped."""
    return _event.is_set()


def check() -> None:
    """Raise `Cancelled` when the run is being stopped (called once per chunk by long loops)."""
    if _event.is_set():
        raise Cancelled()


def pause(seconds: float) -> None:
    """Sleep up to `seconds`; raise `Cancelled` as soon as the run is being stopped."""
    if _event.wait(seconds):
        raise Cancelled()


@contextmanager
def guard(pool: Executor) -> Iterator[Executor]:
    """On any exception in the block: stop the running jobs, drop the queued ones, wait for the
    running ones only, then re-raise. Use inside the pool's own `with`."""
    try:
        yield pool
    except BaseException:
        first = not _event.is_set()
        _event.set()
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        finally:
            if first:  # the outermost guard re-arms, so that a library caller may run again
                _event.clear()
        raise
