"""SIGINT and SIGTERM: exit at once while the CLI loads, raise `Interrupted` in the main thread while
a command runs, and exit at once again from the moment its result is out until the process ends.

Only the standard library's cheapest modules: this module is imported before anything else the
CLI needs, so that a signal while the rest loads already gets the one line and the exit code.
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` itself loads `enum` first (several ms of start-up)
import atexit
import os
import sys

TYPE_CHECKING = False  # not `typing`'s: this module loads before anything else
if TYPE_CHECKING:
    from typing import Any, NoReturn

#: The one line an interrupted command prints.
INTERRUPTED = "interrupted; run the same command again to resume"

#: The handlers `install_early` replaced, while its own are installed (`main` restores them).
EARLY: dict[int, Any] = {}


def _exit_at_once(signum: int, _frame: object) -> None:
    """While the CLI's modules load, before `main` runs: nothing is written yet, nothing to undo."""
    os.write(2, INTERRUPTED.encode() + b"\n")
    os._exit(128 + signum)


def install_early() -> None:
    """A signal while the rest loads (numpy, click, the library: a few hundred ms) exits 130/143 with
    the one line, before `main` installs the handlers that stop a running command cleanly."""
    global EARLY
    if (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        try:
            EARLY = {sig: signal.signal(sig, _exit_at_once) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread (`threading` is not loaded this early: 6 ms)
            EARLY = {}


def _started_as_program() -> bool:
    """Whether the CLI package is being imported by the top level of the program (the `xorweights`
    console script, `python -m xorweights`) or run by `python -m xorweights.cli`, rather than
    imported by a library or tests."""
    f = sys._getframe(1)
    while f is not None and not (
        f.f_code.co_name == "<module>" and f.f_globals.get("__name__") == __package__
    ):
        f = f.f_back  # up to the package's body
    f = f.f_back if f is not None else None
    while f is not None and f.f_code.co_filename.startswith("<frozen importlib"):
        f = f.f_back
    if f is None:
        return False
    if f.f_globals.get("__name__") == "runpy":  # `-m`: sys.argv[0] is "-m" while the module is located
        return sys.argv[:1] == ["-m"]
    return f.f_code.co_name == "<module>" and f.f_globals.get("__name__") == "__main__"


def restore_early_unless_program() -> None:
    """At the end of the package's body: imported by a library or tests, give back their handlers."""
    global EARLY
    if EARLY and not _started_as_program():
        for sig, h in EARLY.items():
            signal.signal(sig, h)
        EARLY = {}


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the main thread; `code` is the exit code (128 + the signal).

    Not a `KeyboardInterrupt`, which click would turn into `Abort` after printing a blank line;
    not an `Exception`, which library code would treat as a failure.
    """

    def __init__(self, signum: int) -> None:
        import signal as signals  # loaded by then (numpy, asyncio, ...): names the signal

        super().__init__(signals.Signals(signum).name)
        self.code = 128 + signum


#: The exit codes of an interrupted command (SIGINT, SIGTERM).
INTERRUPTED_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def install_signal_handlers() -> dict[int, Any]:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread; returns the handlers replaced.

    A second signal while the first is being handled (running jobs stopping, temporaries being
    removed, well under a second) is ignored, so that the clean-up runs to its end.
    """
    import threading  # loaded by then

    if threading.current_thread() is not threading.main_thread():
        return {}
    seen: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        if seen:
            return
        seen.append(signum)
        raise Interrupted(signum)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def finishing(code: int) -> None:
    """The command's result is out (`code`): from now on a signal ends the process at once, with the
    one line and 128 + signum, or, when `code` already says the command was interrupted (its line
    printed), silently with `code`."""
    import threading  # loaded by then

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: object) -> None:
        if code in INTERRUPTED_CODES:
            os._exit(code)
        _exit_at_once(signum, _frame)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def exit_now(code: int) -> NoReturn:
    """End the process with `code` after `finishing(code)`: output flushed, worker threads joined
    and `atexit` callbacks run (logging's flush among them) as Python's own exit does, then
    `os._exit`, skipping the rest of Python's shutdown.

    Python's own exit has moments where a signal gets neither the code nor the line: a handler
    that raises runs inside an `atexit` callback ("Exception ignored", exit code 0), and once
    Python restores the default handlers to tear modules down (tens of ms with numpy and torch
    loaded), the process dies by the signal, silently. Here the handler `finishing` installed ends
    the process at any of these moments, and the teardown is skipped: nothing the command made
    depends on it (files are closed and renamed).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe: exit 120 as Python does when its flush fails
            code = code or 120
    # As Python's own exit does first: worker threads still running (an interrupted command's)
    # finish, removing their temporaries, and idle thread pools are woken to end.
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            code = code or 120
    os._exit(code)
