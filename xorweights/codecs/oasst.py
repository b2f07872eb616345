"""The legacy format (OpenAssistant's file-level XOR, gzip payloads recognised) as a codec."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..checksum_types import ChecksumManifest, FileDigest
from ..errors import InputError
from ..formats import gzip_stream, oasst, plausible
from ..formats.legacy_source import PayloadSource, refuse_gzip_head
from ..formats.native_manifest import is_native
from ..formats.oasst import INFLATE_SLACK
from ..outfolder.paths import check_out_dir
from ..pipeline import Immediate, Outcome, Plan, Sink, Step
from .base import (
    BaseWants,
    DecodeRequest,
    EncodeRequest,
    Planned,
    check_listed,
    refuse_delta_options,
    register,
)

logger = logging.getLogger(__name__)


class OasstCodec:
    """File by file: each payload file XOR its base file (or a base generated from LLaMA weights)."""

    name = "oasst"
    compress_modes = ("none", "gzip")

    def detect(self, payload_dir: Path) -> bool:
        return not is_native(payload_dir)

    def check(self, request: DecodeRequest) -> None:
        refuse_delta_options(request, "a legacy payload")

    def base_wants(self, request: DecodeRequest) -> BaseWants:
        """The base files named as the payload's (or, to generate them, LLaMA weights in any form)."""
        if request.base_mode == "generate":
            return BaseWants(tensors=None, generate=True)
        names = request.only if request.only is not None else oasst.payload_names(request.payload_dir)
        return BaseWants(files=sorted(names), generate=request.base_mode == "auto")

    def plan_decode(self, request: DecodeRequest) -> Planned:
        """Decode file by file, against the base folder's files or a generated base."""
        payload_dir, base_dir, manifest = request.payload_dir, request.base_dir, request.checksums
        raw = manifest.raw_files if manifest else ()
        remote = dict(request.remote)
        only = request.only
        oasst.refuse_plain_payload(payload_dir, raw, only)
        generated = oasst.generated_base(payload_dir, base_dir, raw, request.base_mode, remote)
        steps = oasst.plan(
            payload_dir, base_dir, raw_patterns=raw, generated=generated, only=only, remote=remote
        )
        check_out_dir(request.out_dir, {"payload": payload_dir, "base": base_dir})
        # A line file names no stage: given to decode, it lists the decoded outputs.
        line_file = manifest is not None and manifest.unstaged is not None
        hf_base = manifest.stage("hf_base") if manifest and not line_file else {}
        decoded = manifest.stage("decoded") if manifest else {}
        release = manifest.release if manifest else ""

        def remake(step: Step) -> Step:
            return _legacy_step(step, hf_base.get(step.name), decoded.get(step.name), request)

        steps = [remake(s) for s in steps]
        if manifest is not None:
            check_listed(manifest, set(hf_base) | set(decoded), decoded, {s.name for s in steps}, payload_dir)
            oasst.check_base_sizes(steps, release)
        steps = [oasst.settle_by_digest(s, raw, request.out_dir, base_dir, release, remake) for s in steps]
        if request.payload_compression == "gzip":
            oasst.require_gzip(steps)
        hub_check = request.hub_check
        plan = Plan(
            tuple(steps),
            request.out_dir,
            "decode",
            release=release,
            force=request.force,
            rehash=request.verify,
            preflight=(lambda todo: hub_check(sorted(s.name for s in todo))) if hub_check else None,
            plausible=plausible.verdict,
        )

        def report(outcome: Outcome) -> Mapping[str, Any]:
            files = outcome.files
            unverified = tuple(f.name for f in files if manifest is not None and not f.verified)
            for name in unverified:
                logger.warning("%s: no published decoded digest, output not verified", name)
            backend = request.gzip_backend if any(f.compressed for f in files) else None
            return {"unverified": unverified, "format": "oasst", "gzip_backend": backend}

        return Planned(plan, report)

    def plan_encode(self, request: EncodeRequest) -> Planned:
        """Encode file by file. The payload folder's records live in a hidden folder inside it; a
        rerun keeps the payload files an earlier run made from the same inputs with the same options
        (and, with checksums, recorded the digests of)."""
        if request.allow_raw:
            raise InputError("`allow_raw` applies to native payloads; a legacy payload needs every base file")
        if request.base_name is not None and not request.with_checksums:
            raise InputError(
                "a legacy (oasst) payload records its base name in the checksum manifest: "
                "pass `with_checksums=True` too, or give the name to publish (`base_name`)"
            )
        src_dir, base_dir, out_dir = request.src_dir, request.base_dir, request.out_dir
        planned = oasst.plan(src_dir, base_dir, encoding=True)
        check_out_dir(out_dir, {"fine-tuned": src_dir, "base": base_dir})
        algos = ("md5", "sha256") if request.with_checksums else ()
        gzip = request.compress == "gzip"
        written = ("sha256",) if algos else ()
        mtime = request.gzip_mtime
        steps = tuple(
            replace(
                s,
                sink=_payload_sink(s, gzip, mtime, written)
                if s.base is not None
                else Sink(hash_written=written),
                hash_inputs=algos,
                options={"gzip": (1, mtime)} if gzip and s.base is not None else {},
            )
            for s in planned
        )
        plan = Plan(steps, out_dir, "encode", commit=Immediate(), force=request.force, published=True)

        def report(outcome: Outcome) -> Mapping[str, Any]:
            _warn_json_payloads(outcome, out_dir)
            manifest = None
            if request.with_checksums:
                name = request.release or out_dir.resolve().name
                manifest = _legacy_checksums(steps, outcome.files, name, request.base_name)
            tails = (
                (s.name, oasst.unmasked_tail(src_dir / s.name, base_dir / s.name)) for s in steps if s.base
            )
            unmasked = tuple((n, t) for n, t in tails if t)
            return {"compress": "gzip" if gzip else None, "manifest": manifest, "unmasked_tails": unmasked}

        return Planned(plan, report)


def _payload_sink(step: Step, gzip: bool, mtime: int, written: tuple[str, ...]) -> Sink:
    """An XOR-ed payload file: a gzip stream (level 9, this header time), or plain bytes that must
    not begin like one."""
    if gzip:
        return Sink(
            wrap=functools.partial(gzip_stream.gzip_writer, name=step.name, mtime=mtime), hash_written=written
        )
    return Sink(
        hash_written=written, check=functools.partial(refuse_gzip_head, name=step.name, data=step.data.path)
    )


def _warn_json_payloads(outcome: Outcome, out_dir: Path) -> None:
    for f in outcome.made:
        if oasst.follows_raw_rule(f.name) and f.action == "xor" and oasst.parses_as_json(out_dir / f.name):
            logger.warning(
                "payload %s parses as JSON although it is XOR-ed: a decoder without its published digest "
                "would take it as stored; publish the decoded checksums (`with_checksums=True`)",
                f.name,
            )


def _legacy_step(
    step: Step, expect_base: FileDigest | None, expect_out: FileDigest | None, request: DecodeRequest
) -> Step:
    """A planned legacy step with its expected digests and, when XOR-ed, its payload file read as
    asked (a copied file is never gzip), capped at what a gzip payload may inflate to: the
    published size, else twice its base plus slack."""
    stored = step.data.stored if isinstance(step.data, PayloadSource) else step.data
    if step.base is None:
        return replace(step, data=stored, expect_base=None, expect_out=expect_out)
    if expect_out is not None and expect_out.size is not None:
        limit = expect_out.size
    else:
        limit = 2 * step.base.identity()[0] + INFLATE_SLACK
    data = PayloadSource(stored, request.payload_compression, request.gzip_backend, limit)
    return replace(step, data=data, expect_base=expect_base, expect_out=expect_out)


def _legacy_checksums(
    steps: Sequence[Step], files: Sequence[Any], release: str, base_name: str | None
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


register(OasstCodec())
