"""`decode`: find the payload (a folder or a Hub repo), plan its outputs by format, run the pipeline."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import hub
from ._display import abridged
from ._units import parse_size
from .checksums import ChecksumManifest, FileDigest, load_checksums
from .constants import INFLATE_SLACK, WEIGHT_SUFFIXES, default_jobs
from .errors import InputError, MissingFileError
from .formats import gzip_stream, native, oasst
from .formats.native_manifest import MANIFEST_NAME, is_native, load_manifest
from .hub.stream import mismatch_over_format_error
from .outfolder.paths import check_out_dir, check_regular_file
from .pipeline import Options, Plan, Step, run
from .reports import DecodeReport, FileReport
from .sources import FileSource, PayloadCompression, PayloadSource

if TYPE_CHECKING:
    from .delta.registry import DeltaRelease
    from .tensor_manifest import TensorManifest

logger = logging.getLogger(__name__)

Format = Literal["auto", "xorweights", "oasst"]


@dataclass(frozen=True)
class _Located:
    """The payload folder, where it came from, and the checksums to hold it to."""

    payload_dir: Path
    base_dir: Path
    out_dir: Path
    checksums: ChecksumManifest | None
    fetched: hub.HubPayload | None


def decode(
    payload: os.PathLike[str] | str,
    *,
    base: os.PathLike[str] | str,
    out: os.PathLike[str] | str,
    checksums: os.PathLike[str] | str | ChecksumManifest | None = None,
    format: Format = "auto",
    jobs: int | None = None,
    force: bool = False,
    fsync: bool = True,
    drop_cache: bool = False,
    gzip_backend: str | None = None,
    payload_compression: PayloadCompression = "auto",
    base_mode: Literal["auto", "files", "generate"] = "auto",
    verify: bool = False,
    download_dir: os.PathLike[str] | str | None = None,
    cache_dir: os.PathLike[str] | str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    offline: bool | None = None,
    progress: bool = False,
    revision: str | None = None,
    subfolder: str | None = None,
    local_dir: os.PathLike[str] | str | None = None,
    stream: bool = False,
    recipe: str | None = None,
    output_format: Literal["safetensors", "bin"] = "safetensors",
    max_shard_size: int | str | None = None,
) -> DecodeReport:
    """Rebuild fine-tuned files from an XOR payload and the base they were made against.

    Args:
        payload: the payload folder (or a download holding it a few levels down), or a Hub repo
            `owner/name[@revision][:subfolder]`: only its files are downloaded, each checked against
            the Hub's sha256 before it is read; checksums come from `checksums/` or the model card.
        base: the folder with the base files, named as in the payload.
        out: where the decoded files go; created if needed.
        checksums (*optional*): a release name, repo id, manifest or `md5sum` file (the decoded
            outputs). Base files are checked against `hf_base` and outputs against `decoded` in the
            same pass; an output is renamed into place only when both match.
        format: `auto` or `oasst` (the legacy file-level XOR; gzip payloads recognised).
        jobs: files decoded at once (default: the cores, at most 4); memory does not grow with size.
        force: overwrite files already in `out`.
        fsync, drop_cache: fsync each output before its rename; drop cached pages behind the cursor.
        gzip_backend: `auto` (isal when installed), `isal` or `zlib`.
        payload_compression: legacy payloads: `auto` reads a file starting `1f 8b 08` as gzip;
            `none` never decompresses; `gzip` requires every XOR-ed payload file to be gzip.
        base_mode: `files` XORs with the base folder's files; `generate` streams the pinned
            conversion's files from LLaMA weights in any form (Meta's original, any HF copy);
            `auto` generates when files the payload needs are missing and LLaMA weights are there.
        verify: prove outputs in place (md5/sha256, else made again in memory); remake any that differ.
        local_dir (alias `download_dir`), cache_dir, endpoint, token, offline: Hub access for a
            repo id (defaults: the Hub cache, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`).
        revision: the repo's branch, tag or commit (or `owner/name@revision`).
        subfolder: the payload folder when several hold model files (or `owner/name:subfolder`).
        progress: show progress on stderr (a bar on a terminal, else a line every 30 s).
        stream: with a repo id, read the payload's LFS files over HTTP as they are decoded, never
            on disk, each checked against the Hub's sha256 in the pass (see `hub.stream`).
        recipe: the payload is an additive delta made by this recipe (`fastchat`, `fastchat-v0`,
            `llava`, `alpaca`, `koala`; docs/recipes.md), picked for a known delta release (repo id
            or checksums).
        output_format, max_shard_size: a delta recovery's weight files: `safetensors` or `bin`
            (2023 layout), split at `max_shard_size` (`5GB`; default 50GB, bin 10GB).

    Returns:
        `DecodeReport` with every file's size and digests; `out_dir` holds the verified files.

    Raises:
        `MissingFileError`: the payload, the base folder or a base file is missing (named, first).
        `HubError`: the repo cannot be fetched (unknown, no access, offline without a cache).
        `PayloadMismatchError`: a downloaded payload file differs from the Hub's sha256.
        `BaseMismatchError`: a base file is not the one the release was made against.
        `ChecksumMismatchError`: an output differs from its published digest.
        `OutputExistsError`: `out` already holds an output file and `force` is false.
        `FormatError`: a payload file is corrupt (e.g. a truncated gzip stream).
    """
    _check_choice("payload format", format, ("auto", "xorweights", "oasst"))
    _check_choice("payload compression", payload_compression, ("auto", "none", "gzip"))
    started = time.perf_counter()
    if local_dir is not None and download_dir is not None and Path(local_dir) != Path(download_dir):
        raise InputError("local_dir and download_dir (its old name) name different folders", path=local_dir)
    access = hub.HubAccess(
        local_dir=local_dir if local_dir is not None else download_dir,
        cache_dir=cache_dir,
        endpoint=endpoint,
        token=token,
        offline=offline,
    )
    options = Options(jobs=jobs, progress=progress, fsync=fsync, drop_cache=drop_cache)
    release = _delta_release(payload, checksums)
    if recipe is not None or release is not None:
        delta = _DeltaCall(
            recipe, output_format, max_shard_size, release, checksums, revision, subfolder, progress, stream
        )
        return _decode_delta(payload, base, out, access, options, delta, force=force, verify=verify)
    where = _locate(
        payload,
        base,
        out,
        checksums,
        access,
        revision=revision,
        subfolder=subfolder,
        progress=progress,
        stream=stream,
    )
    with mismatch_over_format_error(where.fetched.streamed if where.fetched else {}):  # Hub bytes first
        if _is_native(where.payload_dir, format, payload_compression):
            return _decode_native(where, started, options, force=force, verify=verify)
        legacy = _LegacyOptions(payload_compression, gzip_stream.gzip_backend(gzip_backend), base_mode)
        return _decode_legacy(where, started, options, legacy, force=force, verify=verify)


def _is_native(payload_dir: Path, format: Format, compression: PayloadCompression) -> bool:
    """Whether the payload is decoded as native (it has `xorweights.json`) rather than legacy.

    Raises:
        `InputError`: the options contradict the payload.
    """
    if is_native(payload_dir) and format != "oasst":
        if compression == "gzip":
            raise InputError(
                f"{payload_dir} is a native payload, never gzip; --payload-compression gzip applies "
                "to legacy payloads",
                path=payload_dir,
            )
        return True
    if format == "xorweights":
        raise InputError(
            f"{payload_dir} has no {MANIFEST_NAME}: not a native payload (try --format auto)",
            path=payload_dir,
        )
    return False


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; expected {', '.join(choices[:-1])} or {choices[-1]}")


def _locate(
    payload: os.PathLike[str] | str,
    base: os.PathLike[str] | str,
    out: os.PathLike[str] | str,
    checksums: os.PathLike[str] | str | ChecksumManifest | None,
    access: hub.HubAccess,
    *,
    revision: str | None,
    subfolder: str | None,
    progress: bool,
    stream: bool,
) -> _Located:
    """The payload folder (downloaded first when `payload` is a repo id) and its checksums."""
    manifest = (
        checksums
        if isinstance(checksums, ChecksumManifest) or checksums is None
        else load_checksums(checksums, access=access)
    )
    payload_dir, fetched = hub.locate_payload(
        payload,
        access,
        revision=revision,
        subfolder=subfolder,
        checksums=manifest,
        progress=progress,
        apart={"base": base, "out": out},
        stream=stream,
    )
    if fetched is not None:
        manifest = manifest or fetched.checksums  # bundled for the repo id, or the card's: found by fetch
    check_regular_file(payload_dir / MANIFEST_NAME, payload_dir)  # a link out, or a FIFO: refused unread
    return _Located(payload_dir, Path(base), Path(out), manifest, fetched)


def _check_listed(
    published: ChecksumManifest,
    listed: Collection[str],
    decoded: Collection[str],
    names: set[str],
    where: Path,
) -> None:
    """The payload's outputs `names` are those the checksums describe: some of them listed (else a
    wrong release), and every `decoded` output among them (else an incomplete payload).

    Raises:
        `InputError`: no output is listed. `MissingFileError`: a listed output has no payload file.
    """
    weights = {n for n in names if n.endswith(WEIGHT_SUFFIXES)}
    if not set(listed) & (weights or names):
        raise InputError(
            f"none of the payload's {'weight ' if weights else ''}files "
            f"({abridged(sorted(weights or names), 3)}) is listed in the checksums of "
            f"{published.release}; wrong release?",
            path=published.path or published.release,
        )
    absent = sorted(set(decoded) - names)
    if absent:
        raise MissingFileError(
            f"the checksums of {published.release} list {len(absent)} outputs that {where} has no "
            f"payload file for ({abridged(absent, 3)}); an incomplete download or copy?",
            path=where / absent[0],
        )


def _hub_check(where: _Located, jobs: int | None, progress: bool) -> Callable[[Sequence[Step]], None] | None:
    """The pre-flight check of a downloaded payload: each file to decode matches the Hub's sha256."""
    fetched = where.fetched
    if fetched is None:
        return None

    def check(todo: Sequence[Step]) -> None:
        hub.check_lfs_files(
            fetched, sorted(s.name for s in todo), jobs=jobs or default_jobs(), progress=progress
        )

    return check


# --- legacy (oasst) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _LegacyOptions:
    compression: PayloadCompression
    backend: str
    base_mode: str


def _decode_legacy(
    where: _Located,
    started: float,
    options: Options,
    legacy_options: _LegacyOptions,
    *,
    force: bool,
    verify: bool,
) -> DecodeReport:
    """Decode a legacy payload: file by file, against the base folder's files or a generated base."""
    payload_dir, base_dir, manifest, fetched = (
        where.payload_dir,
        where.base_dir,
        where.checksums,
        where.fetched,
    )
    raw = manifest.raw_files if manifest else ()
    remote = dict(fetched.streamed) if fetched else {}
    only = {*fetched.files, *remote} if fetched else None
    oasst.refuse_plain_payload(payload_dir, raw, only)
    generated = oasst.generated_base(payload_dir, base_dir, raw, legacy_options.base_mode, remote)
    steps = oasst.plan(payload_dir, base_dir, raw_patterns=raw, generated=generated, only=only, remote=remote)
    check_out_dir(where.out_dir, {"payload": payload_dir, "base": base_dir})
    # A line file names no stage: given to decode, it lists the decoded outputs.
    line_file = manifest is not None and manifest.unstaged is not None
    hf_base = manifest.stage("hf_base") if manifest and not line_file else {}
    decoded = manifest.stage("decoded") if manifest else {}
    release = manifest.release if manifest else ""

    def remake(step: Step) -> Step:
        return _legacy_step(step, hf_base.get(step.name), decoded.get(step.name), legacy_options)

    steps = [remake(s) for s in steps]
    if manifest is not None:
        _check_listed(manifest, set(hf_base) | set(decoded), decoded, {s.name for s in steps}, payload_dir)
        oasst.check_base_sizes(steps, release)
    steps = [oasst.settle_by_digest(s, raw, where.out_dir, base_dir, release, remake) for s in steps]
    if legacy_options.compression == "gzip":
        oasst.require_gzip(steps)
    plan = Plan(
        tuple(steps),
        where.out_dir,
        "decode",
        release=release,
        force=force,
        rehash=verify,
        preflight=_hub_check(where, options.jobs, options.progress),
    )
    files = run(plan, options).files
    unverified = tuple(f.name for f in files if manifest is not None and not f.verified)
    for name in unverified:
        logger.warning("%s: no published decoded digest, output not verified", name)
    backend = legacy_options.backend if any(f.compressed for f in files) else None
    return _report(where, started, files, unverified=unverified, format="oasst", gzip_backend=backend)


def _legacy_step(
    step: Step, expect_base: FileDigest | None, expect_out: FileDigest | None, opts: _LegacyOptions
) -> Step:
    """A planned legacy step with its expected digests and, when XOR-ed, its payload file read as
    `opts` say (a copied file is never gzip), capped at what a gzip payload may inflate to: the
    published size, else twice its base plus slack."""
    stored = step.data.stored if isinstance(step.data, PayloadSource) else step.data
    if step.base is None:
        return replace(step, data=stored, expect_base=None, expect_out=expect_out)
    if expect_out is not None and expect_out.size is not None:
        limit = expect_out.size
    else:
        limit = 2 * step.base.identity()[0] + INFLATE_SLACK
    data = PayloadSource(stored, opts.compression, opts.backend, limit)
    return replace(step, data=data, expect_base=expect_base, expect_out=expect_out)


# --- native ------------------------------------------------------------------------------------


def _decode_native(
    where: _Located, started: float, options: Options, *, force: bool, verify: bool
) -> DecodeReport:
    """Decode a native payload: prove the base tensors, then rebuild every file in one pass each."""
    payload_dir, base_dir, published = where.payload_dir, where.base_dir, where.checksums
    manifest = load_manifest(payload_dir / MANIFEST_NAME)
    remote = where.fetched.streamed if where.fetched else {}
    native.check_payload_files(manifest, payload_dir, remote)
    if published is not None:
        decoded = published.stage("decoded")
        _check_listed(published, decoded, decoded, {f.name for f in manifest.files}, payload_dir)
    check_out_dir(where.out_dir, {"payload": payload_dir, "base": base_dir})
    if not base_dir.is_dir() and (manifest.base_tensors or any(f.base_file for f in manifest.files)):
        raise MissingFileError(f"base folder not found: {base_dir}", path=base_dir)
    store = native.open_store(manifest, base_dir)
    expected = native.expected_outputs(manifest, published)
    steps = [
        replace(s, expect_out=expected[s.name])
        for s in native.decode_plan(
            manifest,
            payload_dir,
            base_dir,
            store,
            workers=options.jobs or default_jobs(),
            open_payload=lambda f: remote.get(f.name) or FileSource(payload_dir / f.name),
        )
    ]
    hub_check = _hub_check(where, options.jobs, options.progress)

    def preflight(todo: Sequence[Step]) -> None:
        names = {s.name for s in todo}
        if hub_check is not None:
            hub_check(todo)
        needed = {t.base for f in manifest.files if f.name in names for t in f.tensors if t.base}
        native.check_base(
            manifest,
            store,
            base_dir,
            jobs=options.jobs or default_jobs(),
            progress=options.progress,
            names=needed,
            files=names,
        )

    plan = Plan(
        tuple(steps),
        where.out_dir,
        "decode",
        release=str(payload_dir / MANIFEST_NAME),
        force=force,
        rehash=verify,
        preflight=preflight,
    )
    outcome = run(plan, options)
    made = [replace(f, base_verified=f.action == "xor") for f in outcome.made]
    files = sorted([*made, *outcome.kept], key=lambda f: f.name)
    return _report(where, started, files, format="xorweights")


# --- additive deltas ------------------------------------------------------------------------------


def _delta_release(payload: os.PathLike[str] | str, checksums: object) -> DeltaRelease | None:
    """The known delta release `payload` (a repo id) or `checksums` (a release name) names."""
    from .delta.registry import find_delta_release

    if hub.is_repo_spec(payload):
        found = find_delta_release(str(payload))
        if found is not None:
            return found
    return find_delta_release(checksums) if isinstance(checksums, str) else None


def _delta_checksums(checksums: object, release: DeltaRelease | None) -> TensorManifest | None:
    """What `--checksums` holds for a delta: per-tensor digests to meet, or the release's name.

    Raises:
        `InputError`: anything else (an XOR release's manifest checks no delta recovery).
    """
    from .tensor_manifest import tensor_manifest_at

    if checksums is None:
        return None
    if isinstance(checksums, (str, os.PathLike)):
        found = tensor_manifest_at(checksums)
        if found is not None:
            return found
        if release is not None and str(checksums).lower() in (release.name.lower(), release.repo_id.lower()):
            return None
    raise InputError(
        f"--checksums {checksums}: a delta recovery takes a delta release's name or repo id, or an "
        "xorweights-tensors.json to meet tensor by tensor",
        path=str(checksums),
    )


@dataclass(frozen=True)
class _DeltaCall:
    recipe: str | None
    output_format: Literal["safetensors", "bin"]
    max_shard_size: int | str | None
    release: DeltaRelease | None
    checksums: os.PathLike[str] | str | ChecksumManifest | None
    revision: str | None
    subfolder: str | None
    progress: bool
    stream: bool


def _decode_delta(
    payload: os.PathLike[str] | str,
    base: os.PathLike[str] | str,
    out: os.PathLike[str] | str,
    access: hub.HubAccess,
    options: Options,
    call: _DeltaCall,
    *,
    force: bool,
    verify: bool,
) -> DecodeReport:
    """Recover a model from an additive delta: a folder (downloaded first for a repo id, its weight
    files checked against the Hub's sha256) or an EasyLM diff file (Koala)."""
    from .delta.decode import DeltaOptions, decode_delta

    if call.stream:
        raise InputError("--stream applies to XOR payloads; a delta is downloaded, then recovered")
    koala = (call.recipe or (call.release.recipe if call.release else None)) == "koala"
    if koala and hub.is_repo_spec(payload):
        raise InputError(
            f"{payload} holds several EasyLM diff files (koala_7b_diff_v2, koala_13b_diff_v2, ...): "
            f"download the one you want (`hf download {payload} koala_13b_diff_v2 --local-dir koala`) "
            "and give its path"
        )
    expect = _delta_checksums(call.checksums, call.release)
    if Path(payload).is_file():
        where = _Located(Path(payload), Path(base), Path(out), None, None)
    else:
        where = _locate(
            payload,
            base,
            out,
            None,
            access,
            revision=call.revision,
            subfolder=call.subfolder,
            progress=call.progress,
            stream=False,
        )
    fetched = where.fetched
    if fetched is not None:
        names = sorted(n for n in fetched.files if n.endswith(WEIGHT_SUFFIXES))
        hub.check_lfs_files(fetched, names, jobs=options.jobs or default_jobs(), progress=options.progress)
    try:
        limit = None if call.max_shard_size is None else parse_size(call.max_shard_size)
    except ValueError as e:
        raise InputError(f"max shard size: {e}") from None
    how = DeltaOptions(call.recipe, call.output_format, limit, call.release, expect)
    return decode_delta(
        where.payload_dir,
        where.base_dir,
        where.out_dir,
        how,
        options,
        force=force,
        verify=verify,
        source=fetched.source if fetched else None,
    )


def _report(where: _Located, started: float, files: Sequence[FileReport], **fields: Any) -> DecodeReport:
    return DecodeReport(
        files=tuple(files),
        seconds=time.perf_counter() - started,
        payload_dir=str(where.payload_dir),
        base_dir=str(where.base_dir),
        out_dir=str(where.out_dir),
        release=where.checksums.release if where.checksums else None,
        source=where.fetched.source if where.fetched else None,
        streamed=tuple(sorted(where.fetched.streamed)) if where.fetched else (),
        **fields,
    )
