"""Additive deltas (Vicuna, LLaVA, Alpaca, Koala, ...) as a codec: one entry whose recipes are a
registry of their own (`delta.recipes`); a delta is never made here, only recovered."""

from __future__ import annotations

from pathlib import Path

from ..delta.decode import DeltaOptions, plan_delta
from ..delta.recipes import prefetch_torch
from ..errors import InputError, IOFailure, NotAPayloadError
from ..formats import plausible
from ..formats.native_manifest import MANIFEST_NAME, is_native
from ..model_files import TORCH_SUFFIXES
from ..outfolder.paths import is_regular
from .base import BaseWants, DecodeRequest, EncodeRequest, Planned, register


class DeltaCodec:
    """Recover a fine-tuned model from an additive delta and its base, by a recipe."""

    name = "delta"
    compress_modes: tuple[str, ...] = ()

    def detect(self, payload_dir: Path) -> bool:
        return False  # a delta looks like any model: it is recovered only when a recipe is named

    def check(self, request: DecodeRequest) -> None:
        """Refuse the options of XOR payloads (a recipe's own refusals come with its plan)."""
        given = [
            f"`{name}='{value}'`"
            for name, value in (
                ("payload_compression", request.payload_compression),
                ("base_mode", request.base_mode),
            )
            if value != "auto"
        ]
        if given:
            raise InputError(f"{' and '.join(given)} applies to XOR payloads, not to an additive delta")
        refuse_xor_payload(request.payload_dir)

    def plan_decode(self, request: DecodeRequest) -> Planned:
        prefetch_torch()  # the fp16 sums of the 2023 recipes are torch's
        how = DeltaOptions(
            request.recipe,
            request.output_format,
            request.max_shard_bytes,
            request.release,
            request.expect,
        )
        plan, report = plan_delta(
            request.payload_dir,
            request.base_dir,
            request.out_dir,
            how,
            force=request.force,
            verify=request.verify,
        )
        return Planned(plan, report)

    def plan_encode(self, request: EncodeRequest) -> Planned:
        raise InputError("additive deltas are recovered, not made: encode makes XOR payloads")

    def base_wants(self, request: DecodeRequest) -> BaseWants:
        """The whole base model: every tensor is added to, with its config."""
        return BaseWants(tensors=None)


def refuse_xor_payload(payload_dir: Path) -> None:
    """Refuse an XOR payload given as an additive delta: a native one (it has `xorweights.json`), or a
    legacy one (none of its weight files is a valid model file as it is).

    Raises:
        `NotAPayloadError`: saying which, and to decode it without `recipe`.
    """
    if not payload_dir.is_dir():
        return  # a delta in one file (Koala's EasyLM): its reader judges it
    if is_native(payload_dir):
        raise NotAPayloadError(
            f"{payload_dir} is a native XOR payload (it has {MANIFEST_NAME}), not an additive delta: "
            "decode it without `recipe`",
            path=payload_dir,
        )
    weights = sorted(
        p
        for p in payload_dir.iterdir()
        if p.name.endswith((".safetensors", *TORCH_SUFFIXES)) and is_regular(p)
    )
    try:
        why = [plausible.problem(p, p.name) for p in weights]
    except OSError as e:
        raise IOFailure("reading", payload_dir, e) from e
    if weights and all(w is not None for w in why):
        raise NotAPayloadError(
            f"{payload_dir} is not an additive delta: no weight file in it is a valid model file as it is "
            f"({weights[0].name}: {why[0]}); an XOR payload? decode it without `recipe`",
            path=weights[0],
        )


register(DeltaCodec())
