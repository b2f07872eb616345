"""The `xorweights` click group, its logging set-up, and the examples shown under commands' help."""

from __future__ import annotations

import logging
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
        record.message = shown(record.message)
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
