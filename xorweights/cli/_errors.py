"""The error boundary: exit codes, and a failed command reported in one stderr line (with `--json`,
also as one JSON error object on stdout)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

import click

from .._display import shown
from .._env import env_flag
from ..errors import ChecksumMismatchError, XorWeightsError
from ..hub.watch import HTTP_MODULES
from ._group import HeldLog, as_flags, cli
from ._render import emit_json
from ._signals import INTERRUPTED, Interrupted

#: Makes the CLI print full tracebacks.
ENV_DEBUG = "XORWEIGHTS_DEBUG"

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2
#: A bug (an error of no kind the boundary knows), printed with its traceback: sysexits' EX_SOFTWARE.
EXIT_INTERNAL = 70


def _one_line(e: BaseException) -> str:
    """The error as one printable line: names in it escaped, never raw."""
    if isinstance(e, XorWeightsError):
        return shown(as_flags(str(e)))
    if isinstance(e, OSError):
        where = f": {e.filename!s}" if e.filename else ""
        return shown(f"{e.strerror or e}{where}")
    return _joined(str(e))  # another library's message (the network's) may run over several lines


def _wants_json(args: Sequence[str]) -> bool:
    """Whether `--json` was given (before a `--` that ends the options)."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _error_doc(e: BaseException, message: str, code: int) -> dict[str, Any]:
    """The `--json` form of a failed command: `{"error": {type, message, path, exit_code}}`."""
    path = getattr(e, "path", None) if isinstance(e, XorWeightsError) else getattr(e, "filename", None)
    return {
        "error": {
            "type": type(e).__name__,
            "message": message,
            "path": None if path is None else os.fspath(path),
            "exit_code": code,
        }
    }


#: What a command may fail with: reported in one line (and with `--json`, as one JSON object).
_REPORTED = (
    Interrupted,
    KeyboardInterrupt,
    click.exceptions.ClickException,
    click.exceptions.Abort,
    XorWeightsError,
    OSError,
)


def run(argv: Sequence[str] | None) -> int:
    """Run the command `argv` (default: the program's arguments); returns its exit code.

    Its log records are held until it ends (`HeldLog`): written after it, dropped if it failed, so
    that a failed command prints one line on stderr (with `--json`, none: the JSON error object on
    stdout is its only error output)."""
    args = list(sys.argv[1:] if argv is None else argv)
    log = _held_log()
    log.quiet = _wants_json(args)  # with --json, stderr holds nothing but progress
    root = logging.getLogger()
    level = root.level
    root.addHandler(log)
    root.setLevel(logging.WARNING)
    shown_before = warnings.showwarning
    warnings.showwarning = _log_warning  # another library's warnings are held as log records are
    failed = True
    try:
        code = int(cli.main(args=args or ["--help"], prog_name="xorweights", standalone_mode=False) or 0)
        failed = False
        return code
    except BaseException as e:
        if not isinstance(e, _REPORTED) and not _from_the_network(e):
            raise
        as_json = _wants_json(args)
        code, message = _failure(e, on_stderr=not as_json)
        if as_json:
            emit_json(_error_doc(e, message, code))
        return code
    finally:
        log.end(ok=not failed)
        root.removeHandler(log)
        root.setLevel(level)
        warnings.showwarning = shown_before


def _log_warning(message: Warning | str, category: type[Warning], *args: object, **kw: object) -> None:
    """A Python warning (huggingface_hub's low-disk warning, say) as one log line of its module."""
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, _joined(str(message)))


_LOG: list[HeldLog] = []


def _held_log() -> HeldLog:
    """The process's one `HeldLog`, reset for a command. Never freed while the process lives: a
    handler freed at the end of a command runs logging's weakref callback, which takes logging's
    lock, and a signal arriving just then would be "Exception ignored" with a traceback."""
    if not _LOG:
        _LOG.append(HeldLog())
    log = _LOG[0]
    log.reset()
    return log


#: The HTTP clients and huggingface_hub: an error of theirs that reached here is the network's.
_NETWORK_MODULES = (*HTTP_MODULES, "huggingface_hub")


def _from_the_network(e: BaseException) -> bool:
    """Whether `e` is an error of the HTTP client or of huggingface_hub (the library turns those it
    expects into `HubError`s; any other is still one line)."""
    return type(e).__module__.split(".")[0] in _NETWORK_MODULES


def _failure(e: BaseException, *, on_stderr: bool = True) -> tuple[int, str]:
    """A failed command's exit code and its one line, written to stderr (`on_stderr`)."""
    code, message = _verdict(e)
    if on_stderr:
        click.echo(message, err=True)  # one line; XORWEIGHTS_DEBUG=1 adds the traceback
        if env_flag(ENV_DEBUG) and not isinstance(e, _NOT_ERRORS):
            traceback.print_exc()
    return code, message.removeprefix("Error: ")


#: What ends a command without an error of its own: no traceback, whatever XORWEIGHTS_DEBUG says.
_NOT_ERRORS = (Interrupted, KeyboardInterrupt, click.exceptions.ClickException, click.exceptions.Abort)


def _verdict(e: BaseException) -> tuple[int, str]:
    """The exit code of a failed command, and its line."""
    if isinstance(e, Interrupted):
        return e.code, INTERRUPTED
    if isinstance(e, click.exceptions.Abort):
        # A KeyboardInterrupt not sent by a signal (or click's own abort).
        return 130, INTERRUPTED if isinstance(e.__context__, KeyboardInterrupt) else "Aborted."
    if isinstance(e, KeyboardInterrupt):
        return 130, INTERRUPTED
    if isinstance(e, click.exceptions.UsageError):
        # click's usage block ("Usage: ...", "Try ... --help", the error) as one line.
        where = f" Try '{e.ctx.command_path} --help'." if e.ctx is not None else ""
        return EXIT_BAD_INPUT, f"Error: {_joined(e.format_message())}{where}"
    if isinstance(e, click.exceptions.ClickException):
        return EXIT_BAD_INPUT, f"Error: {_joined(e.format_message())}"
    code = EXIT_MISMATCH if isinstance(e, ChecksumMismatchError) else EXIT_BAD_INPUT
    return code, f"Error: {_one_line(e)}"


def _joined(text: str) -> str:
    """A message of several lines as one (names in it escaped)."""
    return shown(" ".join(line.strip() for line in text.splitlines() if line.strip()))
