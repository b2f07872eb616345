"""`encode`: pick the format's codec, run its plan, report."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ._version import version
from .codecs import EncodeRequest, codec, encodable
from .errors import InputError, MissingFileError
from .formats.native_manifest import check_base_model
from .pipeline import Options, run
from .reports import EncodeReport

logger = logging.getLogger(__name__)


def encode(
    finetuned: os.PathLike[str] | str,
    *,
    base: os.PathLike[str] | str,
    out: os.PathLike[str] | str,
    format: Literal["xorweights", "oasst"] = "xorweights",
    compress: Literal["zstd", "zstd-grouped", "none", "gzip"] | None = None,
    release: str | None = None,
    with_checksums: bool = False,
    jobs: int | None = None,
    force: bool = False,
    gzip_mtime: int = 0,
    allow_raw: Sequence[str] = (),
    progress: bool = False,
    base_name: str | None = None,
) -> EncodeReport:
    """Make an XOR payload from fine-tuned files and their base.

    Args:
        finetuned: folder of the fine-tuned files (flat).
        base: folder of the base: for `xorweights`, its tensors in any container; for `oasst`,
            files named as the fine-tuned ones.
        out: folder for the payload.
        format: `xorweights` (tensor-level XOR with `xorweights.json`) or `oasst` (legacy
            file-level XOR, as the published script does).
        compress (*optional*): how payload files are stored. `xorweights`: `zstd` (the default:
            tensors as delta frames, format version 2), `zstd-grouped` (a few percent smaller,
            decoding about half as fast), `none` (format version 1, as older releases).
            `oasst`: `gzip` stores each XOR-ed file as a gzip stream (level 9); default `none`.
        release (*optional*): name for the checksum manifest (default: the out folder's name).
        with_checksums: compute the `hf_base` and `decoded` digests (md5 and sha256) in the
            same pass and return them as `report.manifest`, ready for `decode --checksums`.
        jobs: files encoded at once (default: the cores, at most 4).
        force: overwrite files already in `out`.
        gzip_mtime: timestamp stored in gzip headers (the legacy script stores the current time).
        allow_raw: fnmatch patterns naming fine-tuned tensors (or weight files) that may be stored
            unmasked because the base has no counterpart (`xorweights` only); any other such item
            makes the encode refuse. The manifest records each raw item and its pattern.
        progress: show progress on stderr (a bar on a terminal, else a line every 30 s).
        base_name (*optional*): what the base is, for people: a Hub repo id (`owner/name`) or a
            plain name, recorded as `base_model` in `xorweights.json` (when not given, a payload
            found complete from the same inputs keeps the name it has; one made anew records
            none) or, for `oasst`, in the checksum manifest (needs `with_checksums`);
            `publish` puts it on the model card.

    Raises:
        `RawStorageError`: fine-tuned tensors or weight files would be stored unmasked and no
            `allow_raw` pattern names them (before anything is written).
        `MissingFileError`: a base counterpart is missing (named, before anything is written).
        `FormatError`: a plain payload would begin with the gzip magic bytes.
    """
    if format not in encodable():
        raise InputError(f"unknown payload format {format!r}; expected {' or '.join(encodable())}")
    chosen = codec(format)
    if compress is not None and compress not in chosen.compress_modes:
        raise InputError(
            f"compression {compress!r} does not apply to {format} payloads; "
            f"expected {', '.join(chosen.compress_modes)}"
        )
    if base_name is not None:
        check_base_model(base_name)
    started = time.perf_counter()
    src_dir, base_dir, out_dir = Path(finetuned), Path(base), Path(out)
    if not src_dir.is_dir():
        raise MissingFileError(f"fine-tuned folder not found: {src_dir}", path=src_dir)
    options = Options(jobs=jobs, progress=progress)
    request = EncodeRequest(
        src_dir,
        base_dir,
        out_dir,
        options,
        compress=compress,
        release=release,
        with_checksums=with_checksums,
        force=force,
        gzip_mtime=gzip_mtime,
        allow_raw=tuple(allow_raw),
        base_name=base_name,
        version=version(),
    )
    planned = chosen.plan_encode(request)
    outcome = run(planned.plan, options)
    return EncodeReport(
        files=tuple(outcome.files),
        seconds=time.perf_counter() - started,
        finetuned_dir=str(src_dir),
        base_dir=str(base_dir),
        out_dir=str(out_dir),
        **planned.report(outcome),
    )
