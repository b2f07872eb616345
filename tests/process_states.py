"""Catching a child process in a given state (Linux): the tests that signal or kill a process wait
for a state (a file, a line, a module loaded), never for a duration.

`step_until` lets the process run in short steps and stops it (SIGSTOP) between them to look at
its state, so that a state that lasts only a few milliseconds is still seen, however busy the
machine, and the signal sent next lands in that state: the process is still stopped in it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

#: A safety net only: no state takes this long to come on any machine the suite runs on.
SAFETY = 120.0


def _state(pid: int) -> str:
    """The process's scheduler state letter ("T" stopped, "Z" zombie, ...); "" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _all_stopped(pid: int) -> bool:
    """Whether every thread of the process is stopped (or gone): none can change its state."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t", "Z", "X"):
                    return False
        except (OSError, IndexError):
            pass  # a thread that ended
    return True


def _stop(proc: subprocess.Popen[bytes]) -> bool:
    """Stop the process and wait until all its threads are; False if it ended instead."""
    try:
        proc.send_signal(signal.SIGSTOP)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + SAFETY
    while True:
        state = _state(proc.pid)
        if state in ("T", "t") and _all_stopped(proc.pid):
            return True
        if state in ("", "Z", "X") or proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the process never stopped"
        time.sleep(0.0002)


def step_until(proc: subprocess.Popen[bytes], ready: Callable[[int], bool], step: float = 0.002) -> bool:
    """Run `proc` in steps of about `step` seconds until `ready(pid)` holds while it is stopped.

    Returns True with the process left stopped in that state (send the signal, then SIGCONT), or
    False if the process ended before the state was seen.
    """
    deadline = time.monotonic() + SAFETY
    while True:
        if not _stop(proc):
            return False
        if ready(proc.pid):
            return True
        proc.send_signal(signal.SIGCONT)
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(step)


def signal_stopped(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Send `signum` to a process `step_until` left stopped, and let it run to take it."""
    proc.send_signal(signum)
    if signum != signal.SIGKILL:
        proc.send_signal(signal.SIGCONT)


def open_files(pid: int) -> list[str]:
    """The paths the process holds open (from /proc)."""
    found = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return found


def opened(folder: Path, also: Callable[[str], bool] = lambda _: True) -> Callable[[int], bool]:
    """A state: the process holds open a file in `folder` that `also` accepts."""
    where = str(folder.resolve()) + os.sep
    return lambda pid: any(f.startswith(where) and also(f) for f in open_files(pid))


def mapped(needle: str) -> Callable[[int], bool]:
    """A state: a file whose path contains `needle` is mapped in the process (a module loaded)."""

    def state(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/maps") as f:
                return needle in f.read()
        except OSError:
            return False

    return state


def handles(signum: int) -> Callable[[int], bool]:
    """A state: the process catches `signum` (Python installs no SIGTERM handler: one of the CLI's)."""

    def state(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/status") as f:
                caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        except (OSError, StopIteration):
            return False
        return bool(caught >> (signum - 1) & 1)

    return state
