"""The native format (tensor-level XOR described by `xorweights.json`, versions 1 and 2) as a codec."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._sizing import default_jobs
from ..errors import ChecksumMismatchError, InputError, MissingFileError, OutputExistsError, XorWeightsError
from ..formats import native, native_encode, plausible, raw_storage
from ..formats.native_manifest import MANIFEST_NAME, is_native, load_manifest
from ..hashing import hash_file
from ..outfolder.folder import STATE_DIGEST
from ..outfolder.paths import check_out_dir
from ..pipeline import FileReport, FileSource, Outcome, Plan, Sidecars, Sink, Staged, Step
from .base import (
    BaseWants,
    DecodeRequest,
    EncodeRequest,
    Planned,
    check_listed,
    refuse_delta_options,
    register,
)


class NativeCodec:
    """Tensor by tensor: each payload tensor XOR its base tensor, in any container; version 2 stores
    tensors as delta frames."""

    name = "xorweights"
    compress_modes = native_encode.COMPRESS_MODES

    def detect(self, payload_dir: Path) -> bool:
        return is_native(payload_dir)

    def check(self, request: DecodeRequest) -> None:
        refuse_delta_options(request, "a native payload")
        if request.payload_compression == "gzip":
            raise InputError(
                f"{request.payload_dir} is a native payload, never gzip; `payload_compression='gzip'` "
                "applies to legacy payloads",
                path=request.payload_dir,
            )

    def plan_decode(self, request: DecodeRequest) -> Planned:
        """Check the base (its tensors by name, shape and dtype; its whole files by sha256), then
        rebuild every file in one pass each, which proves each base tensor as it reads it."""
        payload_dir, base_dir, published = request.payload_dir, request.base_dir, request.checksums
        manifest = load_manifest(payload_dir / MANIFEST_NAME)
        remote = request.remote
        native.check_payload_files(manifest, payload_dir, remote)
        if published is not None:
            decoded = published.stage("decoded")
            check_listed(published, decoded, decoded, {f.name for f in manifest.files}, payload_dir)
        check_out_dir(request.out_dir, {"payload": payload_dir, "base": base_dir})
        if not base_dir.is_dir() and (manifest.base_tensors or any(f.base_file for f in manifest.files)):
            raise MissingFileError(f"base folder not found: {base_dir}", path=base_dir)
        store = native.open_store(manifest, base_dir)
        expected = native.expected_outputs(manifest, published)
        jobs = request.options.jobs or default_jobs()
        hub_check = request.hub_check

        def plan_steps() -> list[Step]:
            return [
                replace(s, expect_out=expected[s.name])
                for s in native.decode_plan(
                    manifest,
                    payload_dir,
                    base_dir,
                    store,
                    workers=jobs,
                    open_payload=lambda f: remote.get(f.name) or FileSource(payload_dir / f.name),
                )
            ]

        try:
            steps = plan_steps()
        except ChecksumMismatchError as e:  # a damaged payload file's first frames, read to plan
            name = Path(e.path or "").name
            if hub_check is None or e.stage != "payload" or Path(e.path or "") != payload_dir / name:
                raise
            hub_check([name])  # downloaded again when it is not the Hub's file
            steps = plan_steps()

        def preflight(todo: Sequence[Step]) -> None:
            names = {s.name for s in todo}
            if hub_check is not None:
                hub_check(sorted(names))
            needed = {t.base for f in manifest.files if f.name in names for t in f.tensors if t.base}
            native.check_base(
                manifest,
                store,
                base_dir,
                jobs=jobs,
                progress=request.options.progress,
                names=needed,
                files=names,
                in_pass=native.proven_in_pass(manifest, names),
            )

        plan = Plan(
            tuple(steps),
            request.out_dir,
            "decode",
            release=str(payload_dir / MANIFEST_NAME),
            force=request.force,
            rehash=request.verify,
            preflight=preflight,
            plausible=plausible.verdict,
        )

        def report(outcome: Outcome) -> Mapping[str, Any]:
            made = [replace(f, base_verified=f.action == "xor") for f in outcome.made]
            return {"files": tuple(sorted([*made, *outcome.kept], key=lambda f: f.name)), "format": self.name}

        return Planned(plan, report)

    def base_wants(self, request: DecodeRequest) -> BaseWants:
        """The base tensors the manifest names, and the base files it reads whole."""
        manifest = load_manifest(request.payload_dir / MANIFEST_NAME)
        files = {f.base_file.name for f in manifest.files if f.base_file}
        return BaseWants(files=files, tensors=set(manifest.base_tensors))

    def plan_encode(self, request: EncodeRequest) -> Planned:
        """Encode tensor by tensor. The payload folder's records (in its bookkeeping folder, which
        no upload takes) are removed once the payload is finished: `xorweights.json` is then the
        record. A rerun after a kill keeps the payload files already in place and the complete
        staged ones."""
        src_dir, base_dir, out_dir = request.src_dir, request.base_dir, request.out_dir
        if not base_dir.is_dir():
            raise MissingFileError(f"base folder not found: {base_dir}", path=base_dir)
        check_out_dir(out_dir, {"fine-tuned": src_dir, "base": base_dir})
        prep = native_encode.prepare_encode(
            src_dir,
            base_dir,
            jobs=request.options.jobs or default_jobs(),
            progress=request.options.progress,
            allow_raw=request.allow_raw,
            compress=request.compress or self.compress_modes[0],  # type: ignore[arg-type]
        )
        steps = tuple(
            replace(s, sink=Sink(hash_written=("sha256",)), hash_inputs=() if s.masked else ("sha256",))
            for s in prep.steps
        )

        def reuse() -> list[FileReport] | None:
            if not os.path.lexists(out_dir / MANIFEST_NAME):
                return None
            found = _recognise_payload(prep, src_dir, base_dir, out_dir)
            if found is None and not request.force:
                raise OutputExistsError(
                    f"{out_dir} already holds {MANIFEST_NAME}, not of a payload made from these "
                    "inputs; refusing to overwrite (use `force=True`)",
                    path=out_dir / MANIFEST_NAME,
                )
            return found

        def manifest(files: Sequence[FileReport], reused: bool) -> dict[str, bytes]:
            old = load_manifest(out_dir / MANIFEST_NAME) if reused else None
            if old is not None and request.base_name in (None, old.base_model):
                return {}
            made = native_encode.build_manifest(
                prep, files, src_dir, base_dir, out_dir, encoder=f"xorweights {request.version}"
            )
            raw_storage.check_frames(made, out_dir)  # the frames are what the manifest says: checked first
            return {MANIFEST_NAME: replace(old or made, base_model=request.base_name).dumps()}

        commit = Staged(sidecars=Sidecars((MANIFEST_NAME,), manifest), reuse=reuse)
        plan = Plan(steps, out_dir, "encode", commit=commit, force=request.force, published=True)

        def report(outcome: Outcome) -> Mapping[str, Any]:
            made = load_manifest(out_dir / MANIFEST_NAME)
            published = None
            if request.with_checksums:
                description = "checksums written by xorweights encode (native payload)"
                published = made.to_checksums(request.release or out_dir.resolve().name, description)
            return {"manifest": published, "format": self.name, "native_manifest": made}

        return Planned(plan, report)


def _recognise_payload(
    prep: native_encode.EncodePlan, src_dir: Path, base_dir: Path, out_dir: Path
) -> list[FileReport] | None:
    """The files of a finished payload in `out_dir` made from these very inputs, or None.

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
    return reports


register(NativeCodec())
