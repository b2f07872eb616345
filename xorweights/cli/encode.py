"""`xorweights encode`: make an XOR payload from a fine-tuned folder and its base."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..encoding import encode
from ._errors import EXIT_OK
from ._group import cli
from ._options import (
    RegistryChoice,
    allow_raw_option,
    compress_modes,
    jobs_option,
    json_option,
    payload_formats,
    quiet_option,
)
from ._render import emit_json, print_encode


@cli.command("encode")
@click.argument("finetuned", type=click.Path(path_type=Path))
@click.option("--base", required=True, type=click.Path(path_type=Path), help="Folder of the base files.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the payload.")
@click.option(
    "--format",
    "fmt",
    type=RegistryChoice(payload_formats),
    default="xorweights",
    show_default=True,
    help="xorweights: tensor-level XOR, decodable against any copy of the base, with xorweights.json; "
    "oasst: the legacy file-level XOR.",
)
@click.option(
    "--compress",
    type=RegistryChoice(compress_modes),
    default=None,
    help="How payload files are stored. xorweights: zstd (default: delta frames, format 3), "
    "zstd-grouped (5-15% smaller, slower to decode), none (format 1). "
    "oasst: gzip, or none (default).",
)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the release's checksum manifest (hf_base and decoded, md5 and sha256) here.",
)
@click.option("--release", default=None, help="Release name recorded in --manifest.")
@click.option(
    "--base-name",
    default=None,
    metavar="NAME",
    help="What the base is, for people: a Hub repo id (owner/name) or a plain name. Recorded in "
    "xorweights.json (oasst: in --manifest); `publish` puts it on the model card (base_model).",
)
@click.option("--force", is_flag=True, help="Overwrite files already in --out.")
@allow_raw_option
@jobs_option
@quiet_option
@json_option
def encode_cmd(
    finetuned: Path,
    base: Path,
    out: Path,
    fmt: str,
    compress: str | None,
    manifest: Path | None,
    release: str | None,
    base_name: str | None,
    force: bool,
    allow_raw: tuple[str, ...],
    jobs: int | None,
    quiet: bool,
    as_json: bool,
) -> int:
    """Make an XOR payload from a FINETUNED folder and its --base.

    Every fine-tuned tensor must have a base counterpart, and every file one of its name unless it
    is a config, tokenizer or text file: one without would be stored in the clear, so the encode
    refuses it unless an --allow-raw pattern names it.
    """
    if manifest is not None:
        _check_manifest_path(manifest, {"fine-tuned": finetuned, "base": base, "out": out}, force=force)
    report = encode(
        finetuned,
        base=base,
        out=out,
        format=fmt,
        compress=compress,  # type: ignore[arg-type]
        release=release,
        base_name=base_name,
        with_checksums=manifest is not None,
        jobs=jobs,
        force=force,
        allow_raw=allow_raw,
        progress=not quiet,
    )
    if manifest is not None and report.manifest is not None:
        from ..outfolder.atomic import AtomicFile

        with AtomicFile(manifest) as f:
            f.write((json.dumps(report.manifest.to_json(), indent=2) + "\n").encode())
            f.commit()
    if as_json:
        doc = report.to_dict()
        doc["manifest_file"] = str(manifest) if manifest else None  # "manifest" is its content
        emit_json(doc)
    elif not quiet:
        print_encode(report, manifest)
    return EXIT_OK


def _check_manifest_path(manifest: Path, folders: dict[str, Path], *, force: bool) -> None:
    """--manifest goes outside the input and output folders, and replaces only a checksum manifest
    (an earlier run's) unless --force.

    Raises:
        `InputError`: naming the clash, before anything is read.
    """
    from ..checksums import load_manifest_file
    from ..errors import InputError, XorWeightsError

    target = manifest.resolve()
    for role, folder in folders.items():
        if folder.resolve() in target.parents:
            raise InputError(f"--manifest {manifest} lies inside the {role} folder {folder}", path=manifest)
    if not os.path.lexists(manifest) or force:
        return
    try:
        load_manifest_file(manifest)
    except XorWeightsError:
        raise InputError(
            f"--manifest {manifest} exists and is not a checksum manifest; refusing to overwrite it "
            "(use --force)",
            path=manifest,
        ) from None
