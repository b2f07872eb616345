"""`encode`: plan a payload in either format from fine-tuned files and their base, run the pipeline."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from .checksums import ChecksumManifest, FileDigest
from .constants import default_jobs
from .errors import InputError, MissingFileError, OutputExistsError, XorWeightsError
from .formats import native_encode, oasst, raw_storage
from .formats.native_manifest import MANIFEST_NAME, NativeManifest, check_base_model, load_manifest
from .hashing import hash_file
from .outfolder.atomic import AtomicFile
from .outfolder.folder import STATE_DIGEST
from .outfolder.paths import check_out_dir
from .pipeline import Options, Plan, Sink, Step, run
from .reports import EncodeReport, FileReport

logger = logging.getLogger(__name__)


def _version() -> str:
    from . import __version__

    return __version__


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
    _check_options(format, compress, allow_raw, base_name, with_checksums)
    started = time.perf_counter()
    src_dir, base_dir, out_dir = Path(finetuned), Path(base), Path(out)
    if not src_dir.is_dir():
        raise MissingFileError(f"fine-tuned folder not found: {src_dir}", path=src_dir)
    options = Options(jobs=jobs, progress=progress)
    if format == "xorweights":
        files, native_manifest = _encode_native(
            src_dir,
            base_dir,
            out_dir,
            options,
            force=force,
            allow_raw=allow_raw,
            base_name=base_name,
            compress=compress or "zstd",
        )
        published = None
        if with_checksums:
            description = "checksums written by xorweights encode (native payload)"
            published = native_manifest.to_checksums(release or out_dir.resolve().name, description)
        return EncodeReport(
            files=tuple(files),
            seconds=time.perf_counter() - started,
            finetuned_dir=str(src_dir),
            base_dir=str(base_dir),
            out_dir=str(out_dir),
            manifest=published,
            format="xorweights",
            native_manifest=native_manifest,
        )
    algos = ("md5", "sha256") if with_checksums else ()
    gzip = compress == "gzip"
    steps, files = _encode_legacy(src_dir, base_dir, out_dir, options, force, gzip, gzip_mtime, algos)
    manifest = None
    if with_checksums:
        manifest = _legacy_checksums(steps, files, release or out_dir.resolve().name, base_name)
    return EncodeReport(
        files=tuple(files),
        seconds=time.perf_counter() - started,
        finetuned_dir=str(src_dir),
        base_dir=str(base_dir),
        out_dir=str(out_dir),
        compress="gzip" if gzip else None,
        manifest=manifest,
    )


def _check_options(
    format: str, compress: str | None, allow_raw: Sequence[str], base_name: str | None, with_checksums: bool
) -> None:
    """Refuse options that do not go together, before anything is read."""
    if format not in ("xorweights", "oasst"):
        raise InputError(f"unknown payload format {format!r}; expected xorweights or oasst")
    modes = native_encode.COMPRESS_MODES if format == "xorweights" else ("none", "gzip")
    if compress is not None and compress not in modes:
        raise InputError(
            f"compression {compress!r} does not apply to {format} payloads; expected {', '.join(modes)}"
        )
    if allow_raw and format != "xorweights":
        raise InputError("allow_raw applies to native payloads; a legacy payload needs every base file")
    if base_name is not None:
        check_base_model(base_name)
        if format == "oasst" and not with_checksums:
            raise InputError(
                "a legacy (oasst) payload records its base name in the checksum manifest: "
                "pass --manifest too, or give the name to `publish --base-name`"
            )


# --- legacy (oasst) ----------------------------------------------------------------------------


def _encode_legacy(
    src_dir: Path,
    base_dir: Path,
    out_dir: Path,
    options: Options,
    force: bool,
    gzip: bool,
    gzip_mtime: int,
    algos: tuple[str, ...],
) -> tuple[list[Step], list[FileReport]]:
    """Encode file by file. The payload folder's records live in a hidden folder inside it; a
    rerun keeps the payload files an earlier run made from the same inputs with the same options
    (and, with checksums, recorded the digests of)."""
    planned = oasst.plan(src_dir, base_dir, encoding=True)
    check_out_dir(out_dir, {"fine-tuned": src_dir, "base": base_dir})
    written = ("sha256",) if algos else ()
    xor_sink = Sink(gzip_mtime=gzip_mtime if gzip else None, hash_written=written, refuse_gzip_head=not gzip)
    steps = [
        replace(
            s,
            sink=xor_sink if s.base is not None else Sink(hash_written=written),
            hash_inputs=algos,
            options={"gzip": (1, gzip_mtime)} if gzip and s.base is not None else {},
        )
        for s in planned
    ]
    plan = Plan(tuple(steps), out_dir, "encode", force=force, payload_folder=True)
    outcome = run(plan, options)
    for f in outcome.made:
        if oasst.follows_raw_rule(f.name) and f.action == "xor" and oasst.parses_as_json(out_dir / f.name):
            logger.warning(
                "payload %s parses as JSON although it is XOR-ed: a decoder without its published digest "
                "would take it as stored; publish the decoded checksums (--manifest)",
                f.name,
            )
    return steps, outcome.files


def _legacy_checksums(
    steps: Sequence[Step], files: Sequence[FileReport], release: str, base_name: str | None
) -> ChecksumManifest:
    """The release's checksums, from the digests the pass took of what it read."""

    def entry(d: Mapping[str, str], size: int | None) -> FileDigest:
        return FileDigest(md5=d.get("md5"), sha256=d.get("sha256"), size=size)

    by_name = {s.name: s for s in steps}
    hf_base = {
        f.name: entry(f.base_digests, by_name[f.name].base.size())  # type: ignore[union-attr]
        for f in files
        if f.action == "xor"
    }
    decoded = {f.name: entry(f.input_digests, by_name[f.name].data.size()) for f in files}
    return ChecksumManifest(
        release=release,
        description="checksums written by xorweights encode",
        base_model=base_name,
        stages={"hf_base": hf_base, "decoded": decoded},
    )


# --- native ------------------------------------------------------------------------------------


def _encode_native(
    src_dir: Path,
    base_dir: Path,
    out_dir: Path,
    options: Options,
    *,
    force: bool,
    allow_raw: Sequence[str],
    base_name: str | None,
    compress: native_encode.Compress,
) -> tuple[list[FileReport], NativeManifest]:
    """Encode tensor by tensor. The payload folder's records live in its hidden staging folder,
    removed once the payload is finished: `xorweights.json` is then the record. A rerun after a
    kill keeps the payload files already in place and the complete staged ones."""
    if not base_dir.is_dir():
        raise MissingFileError(f"base folder not found: {base_dir}", path=base_dir)
    check_out_dir(out_dir, {"fine-tuned": src_dir, "base": base_dir})
    prep = native_encode.prepare_encode(
        src_dir,
        base_dir,
        jobs=options.jobs or default_jobs(),
        progress=options.progress,
        allow_raw=allow_raw,
        compress=compress,
    )
    steps = tuple(
        replace(s, sink=Sink(hash_written=("sha256",)), hash_inputs=() if s.masked else ("sha256",))
        for s in prep.steps
    )
    result: list[NativeManifest] = []

    def reuse() -> list[FileReport] | None:
        if not os.path.lexists(out_dir / MANIFEST_NAME):
            return None
        found = _recognise_payload(prep, src_dir, base_dir, out_dir)
        if found is None and not force:
            raise OutputExistsError(
                f"{out_dir} already holds {MANIFEST_NAME}, not of a payload made from these "
                "inputs; refusing to overwrite (use --force)",
                path=out_dir / MANIFEST_NAME,
            )
        if found is None:
            return None
        result.append(found[1])
        return found[0]

    def finish(files: Sequence[FileReport], reused: bool) -> None:
        old = result[0] if reused else None
        if old is not None and (base_name is None or base_name == old.base_model):
            return
        made = native_encode.build_manifest(
            prep, files, src_dir, base_dir, out_dir, encoder=f"xorweights {_version()}"
        )
        raw_storage.check_frames(made, out_dir)  # the frames are what the manifest says: checked first
        new = replace(old if old is not None else made, base_model=base_name)
        with AtomicFile(out_dir / MANIFEST_NAME) as atomic:
            atomic.write(new.dumps())
            atomic.commit()
        result[:] = [new]

    plan = Plan(
        steps,
        out_dir,
        "encode",
        force=force,
        payload_folder=True,
        staged=True,
        retire=(MANIFEST_NAME,),
        reuse=reuse,
        finish=finish,
    )
    outcome = run(plan, options)
    return outcome.files, result[0]


def _recognise_payload(
    prep: native_encode.EncodePlan, src_dir: Path, base_dir: Path, out_dir: Path
) -> tuple[list[FileReport], NativeManifest] | None:
    """The files and manifest of a finished payload in `out_dir` made from these very inputs, or None.

    Its `xorweights.json` is the record: every payload file, fine-tuned file and whole base file
    is hashed (once) against it, and the manifest these would give must be the one in place.
    """
    try:
        old = load_manifest(out_dir / MANIFEST_NAME)
    except XorWeightsError:
        return None
    by_name = {s.name: s for s in prep.steps}
    if sorted(f.name for f in old.files) != sorted(by_name):
        return None
    reports = []
    try:
        for entry in old.files:
            out_file, src = out_dir / entry.name, src_dir / entry.name
            if not out_file.is_file() or out_file.is_symlink():
                return None
            if out_file.stat().st_size != entry.payload_size or src.stat().st_size != entry.size:
                return None
            got = hash_file(out_file, ["sha256", STATE_DIGEST])
            if got["sha256"] != entry.payload_sha256 or hash_file(src, ["sha256"])["sha256"] != entry.sha256:
                return None
            base = hash_file(base_dir / entry.name, ["sha256"]) if entry.base_file is not None else {}
            if entry.base_file is not None and base["sha256"] != entry.base_file.sha256:
                return None
            reports.append(
                FileReport(
                    name=entry.name,
                    action=by_name[entry.name].action,
                    size=entry.payload_size,
                    digests=got,
                    input_digests={"sha256": entry.sha256},
                    base_digests=base,
                    kept=True,
                )
            )
        new = native_encode.build_manifest(prep, reports, src_dir, base_dir, out_dir, encoder=old.encoder)
    except OSError:
        return None
    if replace(new, base_model=old.base_model) != old:
        return None
    try:
        raw_storage.check_frames(old, out_dir)  # stored frames where it masks: remade, never kept
    except XorWeightsError:
        return None
    return reports, old
