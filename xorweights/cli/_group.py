"""The `xorweights` click group, its logging set-up, the examples shown under commands' help, and
the one translation of the library's words for options into flags (`as_flags`): the library names
an option as the Python API does (`` `force=True` ``, `` `payload_compression="none"` ``, `` `out` ``),
the command line as its flag (`--force`, `--payload-compression none`, `--out`)."""

from __future__ import annotations

import contextlib
import functools
import logging
import re

import click

from .. import __version__
from .._display import shown

EXAMPLES = {
    "decode": "xorweights decode OpenAssistant/oasst-sft-6-llama-30b-xor --base llama30b_hf "
    "--out oasst-sft-6",
    "verify": "xorweights verify oasst-sft-6 --checksums oasst-sft-6-llama-30b",
    "checksum": "xorweights checksum oasst-sft-6 --output oasst-sft-6.md5",
    "publish": "xorweights publish my-release-xor me/my-release-xor",
}


class _ShownFormatter(logging.Formatter):
    """Escapes control characters and undecodable bytes in each log message (names come from inputs)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = shown(as_flags(record.message))
        return super().formatMessage(record)


class HeldLog(logging.Handler):
    """The CLI's log handler, on the root logger for one command: its records are held until the
    command ends, then written to stderr after a success and dropped after a failure, whose one
    error line is all a failing command prints; with `-v` they are written as they come."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_ShownFormatter("%(levelname)s %(name)s: %(message)s"))
        self.live = False
        self.quiet = False
        """`-q`: the held records are dropped after a success too (unless `-v` wrote them as they came)."""
        self._held: list[logging.LogRecord] = []

    def reset(self) -> None:
        """Ready for a new command: nothing held, records held, not quiet."""
        with self.lock or contextlib.nullcontext():
            self._held = []
        self.live = self.quiet = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.live:
            self._write(record)
        else:
            self._held.append(record)

    def _write(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:
            self.handleError(record)

    def end(self, *, ok: bool) -> None:
        """The command ended: write the held records (`ok`) or drop them."""
        with self.lock or contextlib.nullcontext():
            held, self._held = self._held, []
        for record in held if ok and not self.quiet else ():
            self._write(record)


def set_quiet() -> None:
    """`-q` given: a successful command prints nothing, its log records included."""
    for h in logging.getLogger().handlers:
        if isinstance(h, HeldLog):
            h.quiet = True


def set_verbosity(count: int) -> None:
    """`-v` given `count` times in all: the log level (-v info, -vv debug), and log lines as they come."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING - 10 * min(count, 2))
    for h in root.handlers:
        if isinstance(h, HeldLog):
            h.live = count > 0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xorweights")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug); also after the command.")
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Print nothing on success (no progress, no report; --json still prints its report); also after "
    "the command.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Rebuild fine-tuned weights from XOR payloads and a license-held base, and prove them."""
    ctx.ensure_object(dict).update(verbose=verbose, quiet=quiet)
    set_verbosity(verbose)
    if quiet:
        set_quiet()
    # huggingface_hub prints its own messages with its own handler: not twice.
    logging.getLogger("huggingface_hub").propagate = False


#: A backquoted parameter name, with an optional value: `name` or `name=value`.
_MENTION = re.compile(r"`([a-z][a-z_]*)(?:=([^`]*))?`")


@functools.cache
def _flags() -> dict[str, str]:
    """Each parameter name of any command, with its long flag."""
    found: dict[str, str] = {}

    def visit(command: click.Command) -> None:
        for p in command.params:
            if isinstance(p, click.Option) and p.name:
                longs = [o for o in p.opts if o.startswith("--")]
                if longs:
                    found.setdefault(p.name, longs[0])
        for sub in getattr(command, "commands", {}).values():
            visit(sub)

    visit(cli)
    return found


#: The library's parameters whose CLI option has another name.
_ALIASES = {"format": "fmt", "with_checksums": "manifest"}


def as_flags(text: str) -> str:
    """`text` with each backquoted mention of a parameter the CLI has written as its flag."""
    flags = _flags()

    def flag(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        option = flags.get(_ALIASES.get(name, name))
        if option is None:
            return m.group(0)
        if value is None or value == "True" or name in _ALIASES and name != "format":
            return option
        return f"{option} {value.strip(chr(34) + chr(39))}"

    return _MENTION.sub(flag, text)
