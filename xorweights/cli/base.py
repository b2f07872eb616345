"""`xorweights base convert`: rebuild the exact base a legacy release was made against."""

from __future__ import annotations

from pathlib import Path

import click

from ._errors import EXIT_OK
from ._group import cli
from ._options import json_option, quiet_option
from ._render import emit_json, print_convert


@cli.group("base")
def base_group() -> None:
    """Rebuild the exact base a legacy release was made against."""


@base_group.command("convert")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(path_type=Path),
    help="Meta's original LLaMA folder, or any HF copy (.safetensors or .bin, any sharding).",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the converted base.")
@click.option(
    "--layout",
    type=click.Choice(["llama-7b", "llama-13b", "llama-30b", "llama-65b"]),
    default=None,
    help="Refuse a source of another shape.",
)
@click.option(
    "--checksums",
    default=None,
    help="Release or manifest whose hf_base digests every file must match [default for 30B: oasst-sft-6].",
)
@click.option("--force", is_flag=True, help="Overwrite files in --out not made by xorweights.")
@quiet_option
@json_option
def base_convert_cmd(
    source: Path,
    out: Path,
    layout: str | None,
    checksums: str | None,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> int:
    """Write what the pinned conversion wrote, from any copy of the LLaMA weights, verified as written."""
    from ..llama.base import convert_base

    report = convert_base(source, out, layout=layout, checksums=checksums, force=force, progress=not quiet)
    if as_json:
        emit_json(report.to_dict())
        return EXIT_OK
    if not quiet:
        print_convert(report)
    return EXIT_OK
