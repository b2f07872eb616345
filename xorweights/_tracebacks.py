"""Errors that keep no buffers: once an error leaves the code that owns the buffers it passed
through, the finished frames of its traceback are cleared of their local variables.

An error the caller keeps (a list of failures, a log record, a test's `pytest.raises`) holds its
traceback, and each frame of that traceback holds its locals: here, chunk buffers of 16 MiB, frame
buffers, whole tensors. Clearing those frames keeps the error, its message, its chain and the
lines of its traceback, and lets the buffers go when the call fails, not when the error does.
"""

from __future__ import annotations

import inspect
import logging

logger = logging.getLogger(__name__)

#: Frames of generators and coroutines are left alone: clearing a suspended one would close it.
_RESUMABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def drop_locals(error: BaseException) -> None:
    """Clear the local variables of the finished frames in the traceback of `error` and of the
    errors it chains (`__cause__`, `__context__`). Running frames (the caller's) stay as they are."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            if not tb.tb_frame.f_code.co_flags & _RESUMABLE:
                try:
                    tb.tb_frame.clear()
                except RuntimeError:  # a frame still running, in this thread or another
                    pass
            tb = tb.tb_next
        todo += [e.__cause__, e.__context__]


def detached(error: BaseException) -> BaseException:
    """A new error of the same type, message, attributes and cause as `error`, without its
    traceback: what a reader may keep to raise again later. Built without calling `__init__`
    (whose signature differs among the package's errors, so `copy.copy` cannot rebuild them)."""
    twin = type(error).__new__(type(error), *error.args)
    twin.args = error.args
    twin.__dict__.update(error.__dict__)
    twin.__cause__, twin.__suppress_context__ = error.__cause__, error.__suppress_context__
    return twin
