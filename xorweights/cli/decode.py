"""`xorweights decode`: rebuild the fine-tuned files from a payload and the base."""

from __future__ import annotations

from pathlib import Path

import click

from ..decoding import decode
from ._errors import EXIT_OK
from ._group import EXAMPLES, cli
from ._options import (
    RegistryChoice,
    download_options,
    jobs_option,
    json_option,
    payload_formats,
    quiet_option,
    recipes,
)
from ._render import emit_json, print_decode


@cli.command("decode", epilog=f"Example: {EXAMPLES['decode']}")
@click.argument("payload")
@click.option(
    "--base",
    required=True,
    help="Folder of the base files, or a Hub repo OWNER/NAME[@REVISION] (a local folder of that name "
    "wins): only the files the payload reads are taken from the cache or downloaded.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the decoded files.")
@click.option(
    "--checksums", help="Release name or repo id (see `xorweights releases`), or a manifest/md5sum file."
)
@click.option(
    "--format",
    "fmt",
    type=RegistryChoice(lambda: ("auto", *payload_formats())),
    default="auto",
    show_default=True,
    help="auto: native when the payload has xorweights.json, else legacy (plain or gzip, told per file).",
)
@click.option("--force", is_flag=True, help="Overwrite files already in --out.")
@click.option(
    "--drop-cache",
    is_flag=True,
    help="Drop inputs and outputs from the page cache behind the cursor (long runs on shared machines).",
)
@click.option(
    "--no-fsync",
    is_flag=True,
    help="Skip fsync of outputs before renaming (faster; a power failure may lose them).",
)
@click.option(
    "--base-mode",
    type=click.Choice(["auto", "files", "generate"]),
    default="auto",
    show_default=True,
    help="files: XOR with --base's files as they are; generate: --base holds LLaMA in any form (Meta's "
    "original, any HF copy) and the release's exact base is generated from it on the fly; auto: generate "
    "when files the payload needs are missing.",
)
@click.option(
    "--gzip-backend",
    type=click.Choice(["auto", "isal", "zlib"]),
    default=None,
    help="gzip decompressor [default: isal when installed, else zlib].",
)
@click.option(
    "--payload-compression",
    type=click.Choice(["auto", "none", "gzip"]),
    default="auto",
    show_default=True,
    help="Legacy payloads: auto reads a file starting with 1f 8b 08 as gzip; none never decompresses (a "
    "plain XOR that happens to start that way); gzip requires every XOR-ed payload file to be gzip.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Prove outputs already in place against their published or recorded md5/sha256 (one with only "
    "a CRC-32 recorded is made again in memory and compared); any that differs is made again. By default "
    "they are kept when size, mtime and ctime are as recorded.",
)
@click.option(
    "--stream",
    is_flag=True,
    help="With a repo id: read the payload's weight files over HTTP as they are decoded, never writing "
    "them to disk (each checked against the Hub's sha256 in the same pass; a dropped connection resumes).",
)
@click.option(
    "--recipe",
    type=RegistryChoice(recipes),
    default=None,
    help="PAYLOAD is an additive delta made by this recipe (see docs/recipes.md); picked automatically for a "
    "known delta release (`xorweights releases`).",
)
@click.option(
    "--output-format",
    type=click.Choice(["safetensors", "bin"]),
    default="safetensors",
    show_default=True,
    help="A delta recovery's weight files: safetensors shards as current transformers write them, or the "
    "2023 pytorch_model*.bin layout.",
)
@click.option(
    "--max-shard-size",
    default=None,
    help="A delta recovery's largest weight file (5GB = 5*10^9 bytes, 2GiB, or bytes) "
    "[default: 50GB; bin: 10GB].",
)
@download_options
@jobs_option
@quiet_option
@json_option
def decode_cmd(
    payload: str,
    base: str,
    out: Path,
    checksums: str | None,
    fmt: str,
    force: bool,
    drop_cache: bool,
    no_fsync: bool,
    base_mode: str,
    gzip_backend: str | None,
    payload_compression: str,
    verify: bool,
    stream: bool,
    recipe: str | None,
    output_format: str,
    max_shard_size: str | None,
    revision: str | None,
    token: str | None,
    cache_dir: Path | None,
    local_dir: Path | None,
    download_dir: Path | None,
    force_download: bool,
    subfolder: str | None,
    jobs: int | None,
    quiet: bool,
    as_json: bool,
) -> int:
    """Decode PAYLOAD against --base into --out, verifying as it goes.

    PAYLOAD is a payload folder or a Hugging Face repo id (OWNER/NAME[@REVISION][:SUBFOLDER]); a
    repo's payload files are downloaded (HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE and the Hub cache
    apply) and checked against the sha256 the Hub reports before they are read; with --stream they
    are read as they are decoded instead, and only the outputs touch the disk.
    """
    report = decode(
        payload,
        base=base,
        out=out,
        checksums=checksums,
        format=fmt,  # type: ignore[arg-type]
        jobs=jobs,
        force=force,
        fsync=not no_fsync,
        drop_cache=drop_cache,
        gzip_backend=gzip_backend,
        payload_compression=payload_compression,  # type: ignore[arg-type]
        base_mode=base_mode,  # type: ignore[arg-type]
        verify=verify,
        local_dir=local_dir,
        download_dir=download_dir,
        force_download=force_download,
        cache_dir=cache_dir,
        token=token,
        revision=revision,
        subfolder=subfolder,
        progress=not quiet,
        stream=stream,
        recipe=recipe,
        output_format=output_format,  # type: ignore[arg-type]
        max_shard_size=max_shard_size,
    )
    if as_json:
        emit_json(report.to_dict())
    elif not quiet:
        print_decode(report)
    return EXIT_OK
