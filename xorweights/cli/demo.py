"""`xorweights demo`: encode, decode, verify and load a generated model pair, in both formats."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from ._errors import EXIT_MISMATCH, EXIT_OK
from ._group import cli
from ._options import jobs_option, json_option, quiet_option
from ._render import emit_json, print_demo


@cli.command("demo")
@click.option(
    "--size-mb",
    type=click.IntRange(min=32),
    default=128,
    show_default=True,
    help="Approximate size of the generated model.",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the generated files here (default: a temporary folder, removed after).",
)
@jobs_option
@quiet_option
@json_option
def demo_cmd(size_mb: int, workdir: Path | None, jobs: int | None, quiet: bool, as_json: bool) -> int:
    """Generate a small model pair; encode, decode against a re-saved base, verify and load it
    (native format); then encode, decode and verify it in the legacy format. No torch needed."""
    from ..demo import run_demo

    with tempfile.TemporaryDirectory(prefix="xorweights-demo-") as tmp:
        where = workdir if workdir is not None else Path(tmp)
        if not as_json and not quiet:
            click.echo(f"generating a {size_mb} MiB LLaMA-shaped model and a fine-tuned copy in {where} ...")
        rep = run_demo(where, size_mb=size_mb, jobs=jobs, progress=not quiet)
        if as_json:
            emit_json(rep.to_dict())
            return EXIT_OK if rep.ok else EXIT_MISMATCH
        if not quiet or not rep.ok:
            print_demo(rep, workdir)
        return EXIT_OK if rep.ok else EXIT_MISMATCH
