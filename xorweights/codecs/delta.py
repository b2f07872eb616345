"""Additive deltas (Vicuna, LLaVA, Alpaca, Koala, ...) as a codec: one entry whose recipes are a
registry of their own (`delta.recipes`); a delta is never made here, only recovered."""

from __future__ import annotations

from pathlib import Path

from ..delta.decode import DeltaOptions, plan_delta
from ..errors import InputError
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

    def plan_decode(self, request: DecodeRequest) -> Planned:
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


register(DeltaCodec())
