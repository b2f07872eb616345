"""Command-line interface: the only place that prints or exits.

Exit codes: 0 success; 1 a checksum or verification mismatch; 2 bad usage or bad input.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

#: The one line an interrupted command prints.
INTERRUPTED = "interrupted; run the same command again to resume"


def _exit_at_once(signum: int, _frame: object) -> None:
    """While the CLI's modules load, before `main` runs: nothing is written yet, nothing to undo."""
    os.write(2, INTERRUPTED.encode() + b"\n")
    os._exit(128 + signum)


def _started_as_program() -> bool:
    """Whether this module is the program (`python -m xorweights.cli`) or is being imported by the
    top level of the program (the `xorweights` console script), rather than by a library or tests."""
    if __name__ == "__main__":
        return True
    f = sys._getframe(2)  # 0: here, 1: this module's body
    while f is not None and f.f_code.co_filename.startswith("<frozen importlib"):
        f = f.f_back
    return f is not None and f.f_code.co_name == "<module>" and f.f_globals.get("__name__") == "__main__"


# A signal while the rest loads (numpy, click, the library: a few hundred ms) exits 130/143 with the
# one line, before `main` installs the handlers that stop a running command cleanly.
_EARLY = (
    {sig: signal.signal(sig, _exit_at_once) for sig in (signal.SIGINT, signal.SIGTERM)}
    if threading.current_thread() is threading.main_thread()
    and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    else {}
)

import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import click  # noqa: E402

from . import __version__  # noqa: E402
from ._display import escaped, json_safe, needs_escape, shown  # noqa: E402
from ._units import human_bytes as _human  # noqa: E402
from ._units import human_rate  # noqa: E402
from .checksums import (  # noqa: E402
    ChecksumManifest,
    ChecksumReport,
    VerifyReport,
    checksum,
    known_releases,
    load_checksums,
    verify,
)
from .codec import DecodeReport, decode, encode  # noqa: E402
from .constants import ALGORITHMS, ENV_DEBUG, STAGES, env_flag  # noqa: E402
from .errors import ChecksumMismatchError, XorWeightsError  # noqa: E402
from .raw_storage import manifest_items  # noqa: E402

if _EARLY and not _started_as_program():  # imported by a library or tests: give back their handlers
    for _sig, _h in _EARLY.items():
        signal.signal(_sig, _h)
    _EARLY = {}

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2

EXAMPLES = {
    "decode": "xorweights decode OpenAssistant/oasst-sft-6-llama-30b-xor --base llama30b_hf "
    "--out oasst-sft-6",
    "verify": "xorweights verify oasst-sft-6 --checksums oasst-sft-6-llama-30b",
    "checksum": "xorweights checksum oasst-sft-6 --output oasst-sft-6.md5",
    "publish": "xorweights publish my-release-xor me/my-release-xor",
}


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(json_safe(doc), indent=2, sort_keys=True))


class _ShownFormatter(logging.Formatter):
    """Escapes control characters and undecodable bytes in each log message (names come from inputs)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = shown(record.message)
        return super().formatMessage(record)


def _set_verbosity(ctx: click.Context, _param: click.Parameter, count: int) -> int:
    """`-v` before or after the subcommand: each one lowers the log level by a step (at most -vv)."""
    if count:
        state = ctx.ensure_object(dict)
        state["verbose"] = state.get("verbose", 0) + count
        logging.getLogger().setLevel(logging.WARNING - 10 * min(state["verbose"], 2))
    return count


def _merge_quiet(ctx: click.Context, _param: click.Parameter, quiet: bool) -> bool:
    """`-q` before or after the subcommand."""
    state = ctx.ensure_object(dict)
    state["quiet"] = bool(quiet or state.get("quiet"))
    return state["quiet"]


_verbose = click.option(
    "-v", "--verbose", count=True, expose_value=False, callback=_set_verbosity, help="More log output."
)
_quiet = click.option("--quiet", "-q", is_flag=True, callback=_merge_quiet, help="No progress output.")


def quiet_option(f: Any) -> Any:
    """`-q/--quiet` (passed as `quiet`) and `-v/--verbose`, accepted after the subcommand too."""
    return _quiet(_verbose(f))


json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
jobs_option = click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=None,
    help="Files processed at once [default: cores, at most 4].",
)

_revision = click.option(
    "--revision", default=None, help="For a repo id: its branch, tag or commit [default: main]."
)


def _non_empty(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("is empty", param=param)
    return value


_token = click.option(
    "--token",
    default=None,
    callback=_non_empty,
    help="Hugging Face access token [default: HF_TOKEN or the saved login].",
)
_cache_dir = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Hugging Face cache folder [default: HF_HUB_CACHE, HF_HOME/hub].",
)


def hub_options(f: Any) -> Any:
    """`--revision`, `--token`, `--cache-dir`, named as `hf download` names them."""
    return _revision(_token(_cache_dir(f)))


def download_options(f: Any) -> Any:
    """`hub_options`, plus `--local-dir` (hidden alias `--download-dir`) and `--subfolder`."""
    f = click.option(
        "--subfolder",
        default=None,
        help="The payload folder, when several folders hold model files (also OWNER/NAME:SUBFOLDER).",
    )(f)
    f = click.option("--download-dir", type=click.Path(path_type=Path), default=None, hidden=True)(f)
    f = click.option(
        "--local-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="For a repo id: download into this folder instead of the Hugging Face cache.",
    )(f)
    return hub_options(f)


allow_raw_option = click.option(
    "--allow-raw",
    "allow_raw",
    multiple=True,
    metavar="PATTERN",
    help="Allow fine-tuned tensors (or weight files) with no base counterpart, named by this fnmatch "
    "pattern, to be stored unmasked (repeatable). Anything else stored raw is refused.",
)


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


@cli.command("decode", epilog=f"Example: {EXAMPLES['decode']}")
@click.argument("payload")
@click.option("--base", required=True, type=click.Path(path_type=Path), help="Folder of the base files.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the decoded files.")
@click.option(
    "--checksums", help="Release name or repo id (see `xorweights releases`), or a manifest/md5sum file."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "xorweights", "oasst"]),
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
    help="Hash outputs already in place again (by default they are kept when size, mtime and ctime are "
    "as recorded).",
)
@download_options
@jobs_option
@quiet_option
@json_option
def decode_cmd(
    payload: str,
    base: Path,
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
    revision: str | None,
    token: str | None,
    cache_dir: Path | None,
    local_dir: Path | None,
    download_dir: Path | None,
    subfolder: str | None,
    jobs: int | None,
    quiet: bool,
    as_json: bool,
) -> int:
    """Decode PAYLOAD against --base into --out, verifying as it goes.

    PAYLOAD is a payload folder or a Hugging Face repo id (OWNER/NAME[@REVISION][:SUBFOLDER]); a
    repo's payload files are downloaded (HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE and the Hub cache
    apply) and checked against the sha256 the Hub reports before they are read.
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
        cache_dir=cache_dir,
        token=token,
        revision=revision,
        subfolder=subfolder,
        progress=not quiet,
    )
    if as_json:
        _emit_json(report.to_dict())
    else:
        _print_decode(report)
    return EXIT_OK


def _print_decode(report: DecodeReport) -> None:
    if report.source:
        fresh = any(not f.kept for f in report.files)
        click.echo(
            f"payload {shown(report.source)}"
            + (": files read were first checked against the sha256 the Hub reports" if fresh else "")
        )
    for f in report.files:
        how = "copied" if f.action == "copy" else ("xor gzip" if f.compressed else "xor")
        how = "kept" if f.kept else how
        proof = []
        if f.base_verified:
            proof.append("base ok")
        if f.verified:
            proof.append("output ok (" + ", ".join(f"{a} {d}" for a, d in sorted(f.digests.items())) + ")")
        click.echo(f"  {shown(f.name):<40} {_human(f.size):>10}  {how:<8} {'; '.join(proof)}")
    made = [f for f in report.files if not f.kept]
    n_made = sum(f.size for f in made)
    kept = len(report.files) - len(made)
    click.echo(
        (
            f"decoded {len(made)} files, {_human(n_made)} in {report.seconds:.1f} s "
            f"({human_rate(n_made, report.seconds)}) into {shown(report.out_dir)}"
            if made
            else f"nothing to decode: {shown(report.out_dir)} already holds every output"
        )
        + (f"; {kept} already in place (kept)" if made and kept else "")
        + (f"; gzip payloads read with {report.gzip_backend}" if report.gzip_backend else "")
    )
    if report.format == "xorweights":
        n_ok = sum(f.verified for f in report.files)
        manifest = shown(Path(report.payload_dir) / "xorweights.json")
        click.echo(
            f"verified against {manifest}: {n_ok} outputs (sha256), "
            "every base tensor and base file they use checked before writing"
        )
    elif report.release:
        n_ok = sum(f.verified for f in report.files)
        n_base = sum(f.base_verified for f in report.files)
        click.echo(f"verified against {shown(report.release)}: {n_ok} outputs, {n_base} base files")
        for name in report.unverified:
            click.echo(f"warning: {shown(name)}: no published digest; not verified", err=True)
    else:
        click.echo("no --checksums given: outputs were not verified", err=True)


@cli.command("encode")
@click.argument("finetuned", type=click.Path(path_type=Path))
@click.option("--base", required=True, type=click.Path(path_type=Path), help="Folder of the base files.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the payload.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["xorweights", "oasst"]),
    default="xorweights",
    show_default=True,
    help="xorweights: tensor-level XOR, decodable against any copy of the base, with xorweights.json; "
    "oasst: the legacy file-level XOR.",
)
@click.option(
    "--compress",
    type=click.Choice(["gzip"]),
    default=None,
    help="Store each XOR-ed file gzipped (oasst only).",
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

    Every fine-tuned tensor must have a base counterpart: one without would be stored in the clear,
    so the encode refuses it unless an --allow-raw pattern names it.
    """
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
        from ._atomic import AtomicFile

        with AtomicFile(manifest) as f:
            f.write((json.dumps(report.manifest.to_json(), indent=2) + "\n").encode())
            f.commit()
    if as_json:
        doc = report.to_dict()
        doc["manifest"] = str(manifest) if manifest else None
        _emit_json(doc)
    else:
        stored = (
            f" (stored as {_human(report.bytes_written)})"
            if report.bytes_written != report.bytes_processed
            else ""
        )
        click.echo(
            f"encoded {len(report.files)} files, {_human(report.bytes_processed)}{stored} in "
            f"{report.seconds:.1f} s ({human_rate(report.bytes_processed, report.seconds)}) into "
            f"{shown(report.out_dir)}"
        )
        if report.native_manifest is not None:
            items = manifest_items(report.native_manifest, Path(report.out_dir))
            raw = [r for r in items if not r.grown]
            grown = sum(r.nbytes for r in items if r.grown)
            click.echo(
                f"xorweights.json written: {len(report.native_manifest.base_tensors)} base tensors used, "
                f"{len(raw)} items ({_human(sum(r.nbytes for r in raw))}) stored raw"
                + (" as allowed by --allow-raw" if raw else "")
                + (f", {_human(grown)} of new vocabulary rows unmasked" if grown else "")
            )
            for f in report.native_manifest.files:
                if f.note:
                    click.echo(f"note: {shown(f.name)}: {shown(f.note)}", err=True)
        if manifest:
            click.echo(f"checksums written to {manifest}")
    return EXIT_OK


@cli.command("publish", epilog=f"Example: {EXAMPLES['publish']}")
@click.argument("payload", type=click.Path(path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--revision", default=None, help="Branch to commit to (created if missing) [default: main].")
@click.option(
    "--checksums",
    default=None,
    help="For a file-level (oasst) payload: the manifest written by `encode --manifest`.",
)
@click.option("--message", default=None, help="Commit message.")
@click.option(
    "--base-name",
    default=None,
    metavar="NAME",
    help="The base model named on the card (a Hub repo id becomes its base_model) "
    "[default: what `encode --base-name` recorded].",
)
@click.option(
    "--license",
    "license_id",
    default=None,
    metavar="ID",
    help="The card's Hub license identifier, e.g. apache-2.0 [default: other, the base's terms apply].",
)
@allow_raw_option
@jobs_option
@quiet_option
@json_option
def publish_cmd(
    payload: Path,
    repo_id: str,
    private: bool,
    revision: str | None,
    checksums: str | None,
    message: str | None,
    base_name: str | None,
    license_id: str | None,
    allow_raw: tuple[str, ...],
    jobs: int | None,
    quiet: bool,
    as_json: bool,
) -> int:
    """Upload an encoded PAYLOAD folder to REPO_ID with a generated model card.

    The card holds the decode command, the base and decoded checksums, the payload format and the
    xorweights version; `xorweights decode REPO_ID` reads its checksums back. Publishing again is
    safe: an unchanged release makes no commit, and a changed one deletes the earlier payload's
    files it no longer has. Uses HF_TOKEN and HF_ENDPOINT.
    """
    from .publishing import publish

    report = publish(
        payload,
        repo_id,
        private=private,
        revision=revision,
        checksums=checksums,
        commit_message=message,
        allow_raw=allow_raw,
        jobs=jobs,
        progress=not quiet,
        base_name=base_name,
        license=license_id,
    )
    if as_json:
        _emit_json(report.to_dict())
    else:
        what = f"{len(report.files)} files ({_human(report.payload_bytes)} of {report.format} payload)"
        if report.unchanged:
            click.echo(
                f"{report.url} at {report.revision} already holds these {what}: nothing to upload "
                f"(commit {report.commit})"
            )
        else:
            click.echo(
                f"published {what} to {report.url} at {report.revision} (commit {report.commit})"
                + (f"; removed {len(report.removed)} files of the earlier payload" if report.removed else "")
            )
        click.echo(
            f"decode with: xorweights decode {report.repo_id}"
            + (f"@{report.revision}" if report.revision != "main" else "")
            + " --base BASE_DIR --out OUT_DIR"
        )
    return EXIT_OK


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
    from .base import convert_base

    report = convert_base(source, out, layout=layout, checksums=checksums, force=force, progress=not quiet)
    if as_json:
        _emit_json(report.to_dict())
        return EXIT_OK
    for f in report.files:
        click.echo(
            f"  {f.name:<40} {_human(f.size):>10}  md5 {f.digests['md5']}  {'verified' if f.verified else ''}"
        )
    click.echo(
        f"converted a {report.layout} base into {report.out_dir} in {report.seconds:.1f} s"
        + (f"; verified against {report.release} hf_base" if report.release else "")
    )
    for name in report.unverified:
        click.echo(f"warning: {name}: no published digest; not verified", err=True)
    return EXIT_OK


@cli.command("verify", epilog=f"Example: {EXAMPLES['verify']}")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--checksums",
    required=True,
    help="A manifest or md5sum/sha256sum file, a known release, or any repo id OWNER/NAME[@REVISION] "
    "(the bundled manifest, else the checksum block of the repo's model card).",
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
    from .hub import HubAccess

    access = HubAccess(cache_dir=cache_dir, token=token)
    manifest = load_checksums(checksums, access=access, revision=revision)
    report = verify(folder, manifest, stage=stage, jobs=jobs, progress=not quiet)
    if as_json:
        _emit_json(report.to_dict())
    else:
        _print_verify(report)
    return EXIT_OK if report.ok else EXIT_MISMATCH


def _print_verify(report: VerifyReport) -> None:
    bad = {m.name: m for m in report.mismatches}
    for name in report.checked:
        if name in bad:
            m = bad[name]
            hint = f"; {m.hint}" if m.hint else ""
            click.echo(f"MISMATCH {shown(name)}: {m.algorithm} {m.actual}, expected {m.expected}{hint}")
        else:
            click.echo(f"ok       {shown(name)}")
    for name in report.missing:
        click.echo(f"MISSING  {shown(name)}")
    for name in report.extra:
        click.echo(f"extra    {shown(name)} (not listed)")
    verdict = "OK" if report.ok else "FAILED"
    click.echo(
        f"{verdict}: {len(report.matched)}/{len(report.checked) + len(report.missing)} files of "
        f"{shown(report.release)} [{report.stage}] match"
    )


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
        _print_sum_lines(report)
    else:
        click.echo(f"{len(report.entries)} {algorithm} lines written to {shown(output)}", err=True)
    return EXIT_OK


def _print_sum_lines(report: ChecksumReport) -> None:
    """Into a pipe or file, the exact bytes `md5sum` writes; on a terminal, names escaped (as `ls` does)."""
    if not sys.stdout.isatty():
        click.echo(report.data(), nl=False)
        return
    for name, digest in sorted(report.entries.items()):
        if needs_escape(name) or "\\" in name:
            click.echo(f"\\{digest}  {escaped(name)}")
        else:
            click.echo(f"{digest}  {name}")


def _release_doc(m: ChecksumManifest) -> dict[str, Any]:
    return {
        "release": m.release,
        "repo_id": m.repo_id,
        "description": m.description,
        "stages": {
            s: {"files": len(f), "algorithms": sorted({a for d in f.values() for a in d.algorithms()})}
            for s, f in m.stages.items()
        },
        "needs": dict(m.needs),
        "caveats": list(m.caveats),
    }


@cli.command("releases")
@quiet_option
@json_option
def releases_cmd(quiet: bool, as_json: bool) -> int:  # -q: accepted here as after any command
    """List the known releases, their checksum stages and what decoding each needs."""
    docs = [_release_doc(m) for m in known_releases()]
    if as_json:
        _emit_json(docs)
        return EXIT_OK
    for d in docs:
        click.echo(f"{d['release']}  ({d['repo_id']})")
        if d["description"]:
            click.echo(f"  {d['description']}")
        for stage in STAGES:
            s = d["stages"].get(stage)
            have = f"{s['files']} files, {'+'.join(s['algorithms'])}" if s else "not published"
            click.echo(f"  {stage:<14} {have}")
        for what, need in d["needs"].items():
            click.echo(f"  needs ({what}): {need}")
        for c in d["caveats"]:
            click.echo(f"  caveat: {c}")
        click.echo("")
    return EXIT_OK


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
    from .codec import EncodeReport
    from .demo import run_demo

    with tempfile.TemporaryDirectory(prefix="xorweights-demo-") as tmp:
        where = workdir if workdir is not None else Path(tmp)
        if not as_json:
            click.echo(f"generating a {size_mb} MiB LLaMA-shaped model and a fine-tuned copy in {where} ...")
        rep = run_demo(where, size_mb=size_mb, jobs=jobs, progress=not quiet)
        if as_json:
            _emit_json(rep.to_dict())
            return EXIT_OK if rep.ok else EXIT_MISMATCH

        def done(r: EncodeReport | DecodeReport) -> str:
            rate = human_rate(r.bytes_written, r.seconds)
            return f"{len(r.files)} files, {_human(r.bytes_written)} in {r.seconds:.2f} s ({rate})"

        def matched(r: VerifyReport) -> str:
            return f"{len(r.matched)}/{len(r.checked)} files match"

        e, c, d, ld = rep.encode, rep.base_copy, rep.decode, rep.load
        assert e.native_manifest is not None
        grown = sum(i.nbytes for i in manifest_items(e.native_manifest, Path(e.out_dir)) if i.grown)
        kept = sum(f.kept for f in d.files)
        proven = (
            f"{kept} outputs kept from an earlier run, " if kept else f"{rep.base_tensors} base tensors and "
        )
        click.echo(
            f"1. generate  base/ and finetuned/: {rep.layers} layers, {_human(rep.model_bytes)}, vocabulary "
            f"grown by 16 rows, added_tokens.json ({rep.generate_seconds:.1f} s)"
        )
        click.echo("native format (xorweights.json): decodes against any copy of the base's tensors")
        click.echo(
            f"2. encode    finetuned/ vs base/ -> payload/: {done(e)}; {rep.base_tensors} base tensors "
            f"used, {_human(grown)} of new vocabulary rows unmasked"
        )
        click.echo(
            f"3. re-save   base/ ({len(c.source_files)} safetensors files) -> base-copy/ ({len(c.files)} "
            f"PyTorch .bin shards, tensors in reverse order, written without torch): "
            f"{_human(c.bytes_written)} in {c.seconds:.2f} s"
        )
        click.echo(
            f"4. decode    payload/ + base-copy/ -> decoded/: {done(d)}; {proven}"
            f"{sum(f.verified for f in d.files)} outputs proven by sha256"
        )
        click.echo(f"5. verify    decoded/ against payload/xorweights.json: {matched(rep.verify)}")
        click.echo(
            f"6. load      load_state_dict(payload/, base-copy/, framework='numpy'): {ld.name} "
            f"{tuple(ld.shape)} {ld.dtype} in {ld.seconds:.2f} s, "
            + ("equal to the fine-tuned tensor" if ld.equal else "DIFFERENT from the fine-tuned tensor")
        )
        click.echo("legacy format (oasst): file by file, the base must be byte-identical")
        click.echo(
            f"7. encode    finetuned/ XOR base/ -> oasst-payload/: {done(rep.legacy_encode)}; "
            "oasst-checksums.json written"
        )
        ldec = rep.legacy_decode
        click.echo(
            f"8. decode    oasst-payload/ XOR base/ -> oasst-decoded/: {done(ldec)}; "
            f"{sum(f.base_verified for f in ldec.files)} base files and "
            f"{sum(f.verified for f in ldec.files)} outputs verified in the same pass"
        )
        click.echo(f"9. verify    oasst-decoded/ against oasst-checksums.json: {matched(rep.legacy_verify)}")
        click.echo(
            "demo OK: both decodes are byte-identical to the fine-tuned files, and so is the loaded tensor"
            if rep.ok
            else "demo FAILED"
        )
        if workdir is not None:
            click.echo(f"files kept in {workdir}")
        return EXIT_OK if rep.ok else EXIT_MISMATCH


def _one_line(e: BaseException) -> str:
    """The error as one printable line: names in it escaped, never raw."""
    if isinstance(e, OSError) and not isinstance(e, XorWeightsError):
        where = f": {e.filename!s}" if e.filename else ""
        return shown(f"{e.strerror or e}{where}")
    return shown(str(e))


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the main thread; `code` is the exit code (128 + the signal).

    Not a `KeyboardInterrupt`, which click would turn into `Abort` after printing a blank line;
    not an `Exception`, which library code would treat as a failure.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


def _install_signal_handlers() -> dict[int, Any]:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread; returns the handlers replaced.

    A second signal while the first is being handled (running jobs stopping, temporaries being
    removed, well under a second) is ignored, so that the clean-up runs to its end.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    seen: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        if seen:
            return
        seen.append(signum)
        raise Interrupted(signum)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `xorweights` command; returns (and exits with) the exit code."""
    previous = _install_signal_handlers()
    if previous:
        previous.update(_EARLY)  # the handlers from before this module was loaded
    try:
        code = _main(argv)
    finally:
        if argv is not None:  # called in-process (tests, scripts): give the caller its handlers back
            for sig, h in previous.items():
                signal.signal(sig, h)
    if argv is None:
        sys.exit(code)
    return code


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


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(cli.main(args=args or ["--help"], prog_name="xorweights", standalone_mode=False) or 0)
    except _REPORTED as e:
        code, message = _failure(e)
        if _wants_json(args):
            _emit_json(_error_doc(e, message, code))
        return code


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


if __name__ == "__main__":  # pragma: no cover
    main()
