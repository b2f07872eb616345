"""`xorweights verify` and `xorweights checksum`: check files against published digests, or list theirs."""

from __future__ import annotations

from pathlib import Path

import click

from .._display import shown
from ..checksum_types import ALGORITHMS, STAGES
from ..checksums import checksum, load_checksums, verify
from ._errors import EXIT_MISMATCH, EXIT_OK
from ._group import EXAMPLES, cli
from ._options import hub_options, jobs_option, json_option, quiet_option
from ._render import emit_json, print_sum_lines, print_verify


@cli.command("verify", epilog=f"Example: {EXAMPLES['verify']}")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--checksums",
    required=True,
    help="A manifest or md5sum/sha256sum file, a known release, or any repo id OWNER/NAME[@REVISION] "
    "(the bundled manifest, else the checksum block of the repo's model card); or a per-tensor manifest "
    "(xorweights-tensors.json): every tensor is checked, whatever the container and sharding.",
)
@click.option("--stage", type=click.Choice(STAGES), default="decoded", show_default=True)
@hub_options
@jobs_option
@quiet_option
@json_option
def verify_cmd(
    folder: Path,
    checksums: str,
    stage: str,
    revision: str | None,
    token: str | None,
    cache_dir: Path | None,
    jobs: int | None,
    quiet: bool,
    as_json: bool,
) -> int:
    """Check the files in FOLDER against published checksums."""
    from ..hub import HubAccess
    from ..tensor_manifest import tensor_manifest_at

    tensors = tensor_manifest_at(checksums)
    if tensors is not None:  # per-tensor digests: any container, any sharding
        report = verify(folder, checksums, jobs=jobs, progress=not quiet)
    else:
        access = HubAccess(cache_dir=cache_dir, token=token)
        manifest = load_checksums(checksums, access=access, revision=revision)
        report = verify(folder, manifest, stage=stage, jobs=jobs, progress=not quiet)
    if as_json:
        emit_json(report.to_dict())
    elif not quiet or not report.ok:  # a mismatch is reported, quiet or not
        print_verify(report)
    return EXIT_OK if report.ok else EXIT_MISMATCH


@cli.command("checksum", epilog=f"Example: {EXAMPLES['checksum']}")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--algorithm", "-a", type=click.Choice(ALGORITHMS), default="md5", show_default=True)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the lines to this file instead of stdout.",
)
@jobs_option
@quiet_option
def checksum_cmd(folder: Path, algorithm: str, output: Path | None, jobs: int | None, quiet: bool) -> int:
    """Print md5sum/sha256sum-compatible lines for every file in FOLDER."""
    report = checksum(folder, algorithm=algorithm, output=output, jobs=jobs, progress=not quiet)
    if output is None:
        print_sum_lines(report)  # the lines are the command's result: printed when quiet too
    elif not quiet:
        click.echo(f"{len(report.entries)} {algorithm} lines written to {shown(output)}", err=True)
    return EXIT_OK
