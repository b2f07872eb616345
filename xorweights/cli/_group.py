"""The `xorweights` click group, its logging set-up, the examples shown under commands' help, and
the one translation of the library's words for options into flags (`as_flags`): the library names
an option as the Python API does (`` `force=True` ``, `` `payload_compression="none"` ``, `` `out` ``),
the command line as its flag (`--force`, `--payload-compression none`, `--out`)."""

from __future__ import annotations

import functools
import logging
import re
import sys

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xorweights")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug); also after the command.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output; also after the command.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Rebuild fine-tuned weights from XOR payloads and a license-held base, and prove them."""
    ctx.ensure_object(dict).update(verbose=verbose, quiet=quiet)
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ShownFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
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
