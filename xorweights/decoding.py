"""`decode`: find the payload (a folder or a Hub repo), pick its codec, run the codec's plan, report."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from . import hub
from ._sizing import default_jobs
from ._units import parse_size
from .checksums import ChecksumManifest, load_checksums
from .codecs import CODECS, Codec, DecodeRequest, codec, encodable
from .delta.recipes import recipe as find_recipe
from .delta.registry import DeltaRelease, find_delta_release
from .errors import InputError
from .formats.gzip_stream import gzip_backend as pick_gzip_backend
from .formats.legacy_source import PayloadCompression
from .formats.native_manifest import MANIFEST_NAME
from .hub.base_repo import fetch_base
from .hub.stream import mismatch_over_format_error
from .model_files import WEIGHT_SUFFIXES
from .outfolder.paths import check_regular_file
from .pipeline import Options, run
from .reports import DecodeReport
from .tensor_manifest import TensorManifest, tensor_manifest_at

logger = logging.getLogger(__name__)

Format = Literal["auto", "xorweights", "oasst"]


@dataclass(frozen=True)
class _Located:
    """The payload folder, where it came from, and the checksums to hold it to."""

    payload_dir: Path
    checksums: ChecksumManifest | None
    fetched: hub.HubPayload | None
    expect: TensorManifest | None = None
    """A delta's per-tensor digests to meet (its `--checksums`)."""


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
    force_download: bool = False,
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
        base: the base folder, or a Hub repo `owner/name[@revision]` (a local folder of that
            name wins): only the files the payload reads are fetched, checked as payload files are.
        out: where the decoded files go; created if needed.
        checksums (*optional*): a release name, repo id, manifest or `md5sum` file; base files are
            held to `hf_base` and outputs to `decoded` in the same pass, renamed in only if both match.
        format: `auto` or `oasst` (the legacy file-level XOR; gzip payloads recognised).
        jobs: files decoded at once (default: the cores, at most 4); memory does not grow with size.
        force: overwrite files already in `out`.
        fsync, drop_cache: fsync each output before its rename; drop cached pages behind the cursor.
        gzip_backend: `auto` (isal when installed), `isal` or `zlib`.
        payload_compression: legacy payloads: `auto` (gzip when a file starts `1f 8b 08`), `none`, `gzip`.
        base_mode: `files` XORs with the base folder's files; `generate` streams the pinned
            conversion's files from LLaMA weights in any form (Meta's original, any HF copy);
            `auto` generates when files the payload needs are missing and LLaMA weights are there.
        verify: prove outputs in place (md5/sha256, else made again in memory); remake any that differ.
        local_dir (alias `download_dir`), cache_dir, endpoint, token, offline, force_download: Hub
            access (defaults: the Hub cache, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`, no).
        revision: the repo's branch, tag or commit (or `owner/name@revision`).
        subfolder: the payload folder when several hold model files (or `owner/name:subfolder`).
        progress: show progress on stderr (a bar on a terminal, else a line every 30 s).
        stream: with a repo id, read the payload's LFS files over HTTP as they are decoded.
        recipe: the payload is an additive delta made by this registered recipe (docs/recipes.md),
            picked for a known delta release (repo id or checksums).
        output_format, max_shard_size: a delta recovery's weight files: `safetensors` or `bin`
            (2023 layout), split at `max_shard_size` (`5GB`; default 50GB, bin 10GB).

    Returns:
        `DecodeReport` with every file's size and digests; `out_dir` holds the verified files.

    Raises:
        `MissingFileError`: the payload, the base folder or a base file is missing (named, first).
        `HubError`: the repo cannot be fetched. `FormatError`: a payload file is corrupt.
        `PayloadMismatchError`: a downloaded payload file differs from the Hub's sha256.
        `BaseMismatchError`, `ChecksumMismatchError`: a base file or an output is not the published one.
        `OutputExistsError`: `out` holds an output and not `force`. `NotAPayloadError`,
        `IncompatibleBaseError`: the wrong kind of payload, or of base or recipe.
    """
    _check_choice("payload format", format, ("auto", *encodable()))
    _check_choice("payload compression", payload_compression, ("auto", "none", "gzip"))
    started = time.perf_counter()
    local = _one_local_dir(local_dir, download_dir)
    access = hub.HubAccess(local, cache_dir, endpoint, token, offline, force_download)
    options = Options(jobs=jobs, progress=progress, fsync=fsync, drop_cache=drop_cache)
    ask = DecodeRequest(
        Path(payload),
        Path(base),
        Path(out),
        options,
        force=force,
        verify=verify,
        payload_compression=payload_compression,
        base_mode=base_mode,
        recipe=recipe,
        release=_delta_release(payload, checksums),
        output_format=output_format,
        max_shard_bytes=_shard_bytes(max_shard_size),
    )
    where = _locate_any(payload, ask, checksums, access, revision, subfolder, stream)
    if ask.recipe is not None or ask.release is not None:
        chosen = CODECS["delta"]
    else:
        ask = replace(ask, gzip_backend=pick_gzip_backend(gzip_backend))
        chosen = _pick(where.payload_dir, format)
    return _run(chosen, ask, where, started, _base_from_hub(base, chosen, ask, where, access))


def _base_from_hub(
    base: os.PathLike[str] | str, chosen: Codec, ask: DecodeRequest, where: _Located, access: hub.HubAccess
) -> hub.HubPayload | None:
    """The base's files, when `base` is a Hub repo id (a local folder of that name wins): only
    those the payload reads, from the Hub cache or downloaded, each checked against the Hub."""
    if not hub.is_repo_spec(base):
        return None
    wants = chosen.base_wants(replace(ask, payload_dir=where.payload_dir, only=_only(where.fetched)))
    jobs = ask.options.jobs or default_jobs()
    return fetch_base(str(base), access, wants, jobs=jobs, progress=ask.options.progress)


def _only(fetched: hub.HubPayload | None) -> frozenset[str] | None:
    """The payload files there are when it came from the Hub (None: the folder's)."""
    return frozenset({*fetched.files, *fetched.streamed}) if fetched else None


def _locate_any(
    payload: os.PathLike[str] | str,
    ask: DecodeRequest,
    checksums: os.PathLike[str] | str | ChecksumManifest | None,
    access: hub.HubAccess,
    revision: str | None,
    subfolder: str | None,
    stream: bool,
) -> _Located:
    """Where the payload is: an additive delta's folder or file, or an XOR payload's folder."""
    if ask.recipe is not None or ask.release is not None:
        return _locate_delta(payload, ask, checksums, access, revision, subfolder, stream)
    return _locate(payload, ask, checksums, access, revision=revision, subfolder=subfolder, stream=stream)


def _run(
    chosen: Codec, ask: DecodeRequest, where: _Located, started: float, base: hub.HubPayload | None
) -> DecodeReport:
    """Check, plan and run the decode with the chosen codec (against `base`, a base fetched from
    the Hub, when there is one); the report."""
    options = ask.options
    fetched = where.fetched
    request = replace(
        ask,
        payload_dir=where.payload_dir,
        base_dir=base.root if base is not None else ask.base_dir,
        checksums=where.checksums,
        remote=dict(fetched.streamed) if fetched else {},
        only=_only(fetched),
        hub_check=_hub_check(fetched, options),
        source=fetched.source if fetched else None,
        expect=where.expect,
    )
    with mismatch_over_format_error(fetched.streamed if fetched else {}):  # Hub bytes first
        chosen.check(request)
        planned = chosen.plan_decode(request)
        outcome = run(planned.plan, options)
        fields: dict[str, Any] = {
            "files": tuple(outcome.files),
            "release": where.checksums.release if where.checksums else None,
            **planned.report(outcome),
        }
    return DecodeReport(
        seconds=time.perf_counter() - started,
        payload_dir=str(where.payload_dir),
        base_dir=str(request.base_dir),
        out_dir=str(request.out_dir),
        source=request.source,
        base_source=base.source if base is not None else None,
        streamed=tuple(sorted(fetched.streamed)) if fetched else (),
        **fields,
    )


def _one_local_dir(
    local_dir: os.PathLike[str] | str | None, download_dir: os.PathLike[str] | str | None
) -> os.PathLike[str] | str | None:
    """`local_dir`, or `download_dir` (its old name); `InputError` when both name different folders."""
    if local_dir is not None and download_dir is not None and Path(local_dir) != Path(download_dir):
        msg = "`local_dir` and `download_dir` (its old name) name different folders"
        raise InputError(msg, path=local_dir)
    return local_dir if local_dir is not None else download_dir


def _pick(payload_dir: Path, format: str) -> Codec:
    """The codec of the payload in `payload_dir`: the one asked for, else the first that knows it.

    Raises:
        `InputError`: the payload is not of the format asked for.
    """
    if format == "auto":
        return next(c for c in CODECS.values() if c.compress_modes and c.detect(payload_dir))
    chosen = codec(format)
    if format == "xorweights" and not chosen.detect(payload_dir):
        raise InputError(
            f"{payload_dir} has no {MANIFEST_NAME}: not a native payload (try `format='auto'`)",
            path=payload_dir,
        )
    return chosen


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; expected {', '.join(choices[:-1])} or {choices[-1]}")


def _shard_bytes(max_shard_size: int | str | None) -> int | None:
    try:
        return None if max_shard_size is None else parse_size(max_shard_size)
    except ValueError as e:
        raise InputError(f"max shard size: {e}") from None


def _locate(
    payload: os.PathLike[str] | str,
    ask: DecodeRequest,
    checksums: os.PathLike[str] | str | ChecksumManifest | None,
    access: hub.HubAccess,
    *,
    revision: str | None,
    subfolder: str | None,
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
        progress=ask.options.progress,
        apart={"base": ask.base_dir, "out": ask.out_dir},
        stream=stream,
    )
    if fetched is not None:
        manifest = manifest or fetched.checksums  # bundled for the repo id, or the card's: found by fetch
    check_regular_file(payload_dir / MANIFEST_NAME, payload_dir)  # a link out, or a FIFO: refused unread
    return _Located(payload_dir, manifest, fetched)


def _hub_check(fetched: hub.HubPayload | None, options: Options) -> Callable[[Sequence[str]], None] | None:
    """The pre-flight check of a downloaded payload: each file to decode matches the Hub's sha256."""
    if fetched is None:
        return None

    def check(names: Sequence[str]) -> None:
        hub.check_lfs_files(fetched, names, jobs=options.jobs or default_jobs(), progress=options.progress)

    return check


# --- additive deltas ------------------------------------------------------------------------------


def _delta_release(payload: os.PathLike[str] | str, checksums: object) -> DeltaRelease | None:
    """The known delta release `payload` (a repo id) or `checksums` (a release name) names."""
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
    if checksums is None:
        return None
    if isinstance(checksums, (str, os.PathLike)):
        found = tensor_manifest_at(checksums)
        if found is not None:
            return found
        if release is not None and str(checksums).lower() in (release.name.lower(), release.repo_id.lower()):
            return None
    raise InputError(
        f"`checksums` {checksums}: a delta recovery takes a delta release's name or repo id, or an "
        "xorweights-tensors.json to meet tensor by tensor",
        path=str(checksums),
    )


def _locate_delta(
    payload: os.PathLike[str] | str,
    ask: DecodeRequest,
    checksums: object,
    access: hub.HubAccess,
    revision: str | None,
    subfolder: str | None,
    stream: bool,
) -> _Located:
    """An additive delta: a folder (downloaded first for a repo id, its weight files checked against
    the Hub's sha256) or, for a recipe that reads one, a file."""
    if stream:
        raise InputError("`stream` applies to XOR payloads; a delta is downloaded, then recovered")
    name = ask.recipe or (ask.release.recipe if ask.release else None)
    known = find_recipe(name) if name is not None else None
    if known is not None and known.from_repo is not None and hub.is_repo_spec(payload):
        raise InputError(known.from_repo.format(repo=payload))
    expect = _delta_checksums(checksums, ask.release)
    if Path(payload).is_file():
        return _Located(Path(payload), None, None, expect)
    where = _locate(payload, ask, None, access, revision=revision, subfolder=subfolder, stream=False)
    fetched = where.fetched
    if fetched is not None:
        names = sorted(n for n in fetched.files if n.endswith(WEIGHT_SUFFIXES))
        options = ask.options
        hub.check_lfs_files(fetched, names, jobs=options.jobs or default_jobs(), progress=options.progress)
    return replace(where, checksums=None, expect=expect)
