"""Every payload format and the additive deltas behind one interface (`base.Codec`), registered
by name: `oasst` (legacy file-level XOR), `xorweights` (native, versions 1 and 2) and `delta`
(whose recipes have a registry of their own, `delta.recipes`)."""

from . import delta, native, oasst
from .base import CODECS, Codec, DecodeRequest, EncodeRequest, Planned, codec, encodable, register

__all__ = [
    "CODECS",
    "Codec",
    "DecodeRequest",
    "EncodeRequest",
    "Planned",
    "codec",
    "delta",
    "encodable",
    "native",
    "oasst",
    "register",
]
