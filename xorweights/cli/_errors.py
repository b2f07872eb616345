"""The error boundary: exit codes, and a failed command reported in one stderr line (with `--json`,
also as one JSON error object on stdout)."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from .._display import shown
from .._env import env_flag
from ..errors import ChecksumMismatchError, XorWeightsError
from ..hub.watch import HTTP_MODULES
from ._group import as_flags, cli
from ._render import emit_json
from ._signals import INTERRUPTED, Interrupted

#: Makes the CLI print full tracebacks.
ENV_DEBUG = "XORWEIGHTS_DEBUG"

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2


def _one_line(e: BaseException) -> str:
    """The error as one printable line: names in it escaped, never raw."""
    if isinstance(e, OSError) and not isinstance(e, XorWeightsError):
        where = f": {e.filename!s}" if e.filename else ""
        return shown(f"{e.strerror or e}{where}")
    return shown(as_flags(str(e)))


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
    """Run the command `argv` (default: the program's arguments); returns its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(cli.main(args=args or ["--help"], prog_name="xorweights", standalone_mode=False) or 0)
    except BaseException as e:
        if not isinstance(e, _REPORTED) and not _from_the_network(e):
            raise
        code, message = _failure(e)
        if _wants_json(args):
            emit_json(_error_doc(e, message, code))
        return code


#: The HTTP clients and huggingface_hub: an error of theirs that reached here is the network's.
_NETWORK_MODULES = (*HTTP_MODULES, "huggingface_hub")


def _from_the_network(e: BaseException) -> bool:
    """Whether `e` is an error of the HTTP client or of huggingface_hub (the library turns those it
    expects into `HubError`s; any other is still one line)."""
    return type(e).__module__.split(".")[0] in _NETWORK_MODULES


def _failure(e: BaseException) -> tuple[int, str]:
    """Report a failed command on stderr in one line; returns its exit code and that line."""
    if isinstance(e, Interrupted):
        click.echo(INTERRUPTED, err=True)
        return e.code, INTERRUPTED
    if isinstance(e, click.exceptions.Abort):
        # A KeyboardInterrupt not sent by a signal (or click's own abort).
        message = INTERRUPTED if isinstance(e.__context__, KeyboardInterrupt) else "Aborted."
        click.echo(message, err=True)
        return 130, message
    if isinstance(e, click.exceptions.ClickException):
        e.show()
        return EXIT_BAD_INPUT, e.format_message()
    if isinstance(e, KeyboardInterrupt):
        click.echo(INTERRUPTED, err=True)
        return 130, INTERRUPTED
    code = EXIT_MISMATCH if isinstance(e, ChecksumMismatchError) else EXIT_BAD_INPUT
    message = _one_line(e)
    click.echo(f"Error: {message}", err=True)  # one line; XORWEIGHTS_DEBUG=1 adds the traceback
    if env_flag(ENV_DEBUG):
        traceback.print_exc()
    return code, message
