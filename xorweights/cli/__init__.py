"""Command-line interface: the only place that prints or exits.

Exit codes: 0 success; 1 a checksum or verification mismatch; 2 bad usage or bad input; 130/143
interrupted; 70 an internal error (a bug, printed with its traceback).

`_signals` loads first and installs its handlers at once: a signal while the rest loads exits with
the one line and 130/143. Each command module registers its command on the group (`_group.cli`).
"""

from __future__ import annotations

from . import _signals

_signals.install_early()

import logging  # noqa: E402
import signal  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import click  # noqa: E402

from .._units import human_bytes as _human  # noqa: E402
from . import base, decode, demo, encode, publish, releases, verify  # noqa: E402, F401 (register the commands)
from ._errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_MISMATCH, EXIT_OK, run  # noqa: E402
from ._group import EXAMPLES, _ShownFormatter, cli  # noqa: E402
from ._signals import INTERRUPTED, Interrupted  # noqa: E402

_signals.restore_early_unless_program()

logger = logging.getLogger(__name__)

__all__ = [
    "EXAMPLES",
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL",
    "EXIT_MISMATCH",
    "EXIT_OK",
    "INTERRUPTED",
    "Interrupted",
    "_ShownFormatter",
    "_human",
    "cli",
    "main",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `xorweights` command: runs it and exits with its exit code; with `argv`
    (called in-process), returns the exit code instead."""
    previous = _signals.install_signal_handlers()
    if argv is not None:  # called in-process (tests, scripts): give the caller its handlers back
        previous.update(_signals.EARLY)  # the handlers from before the CLI was loaded
        try:
            return run(argv)
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
    # The program: from the moment the result is out until the process is gone, a signal still
    # ends it with the one line and 128 + signum (see `_signals.exit_now`).
    try:
        code = run(None)
        _signals.finishing(code)
    except Interrupted as e:  # after the command's own boundary (its result printed), before the exit
        click.echo(INTERRUPTED, err=True)
        code = e.code
        _signals.finishing(code)  # no second `Interrupted`: the handler takes one signal only
    except Exception:  # a bug: the traceback, as Python would print it; never 1, which CI reads as a mismatch
        traceback.print_exc()
        code = EXIT_INTERNAL
        _signals.finishing(code)
    _signals.exit_now(code)
