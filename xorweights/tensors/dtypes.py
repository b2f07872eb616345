"""The one dtype table: every safetensors dtype, its size, and what numpy and torch call it.

Every other table of the package is derived from `DTYPES` below, or kept beside it here (the
safetensors library's enum order, and the names flax records).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DType:
    """A tensor element type, by its safetensors name."""

    name: str
    size: int
    """Bytes per element."""
    numpy: Any
    """The numpy type holding its bytes (bfloat16 as its raw 16 bits, float8 as bytes)."""
    torch: str | None
    """The `torch` attribute of the dtype (None: not mapped)."""
    storage: str | None
    """The typed storage class a torch 1.x checkpoint names (None: such checkpoints have none)."""
    float: bool = False
    """A floating-point type numpy can convert to and from (float8 cannot)."""


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("BOOL", 1, np.bool_, "bool", "BoolStorage"),
        DType("U8", 1, np.uint8, "uint8", "ByteStorage"),
        DType("I8", 1, np.int8, "int8", "CharStorage"),
        DType("F8_E5M2", 1, np.uint8, "float8_e5m2", None),
        DType("F8_E4M3", 1, np.uint8, "float8_e4m3fn", None),
        DType("I16", 2, np.int16, "int16", "ShortStorage"),
        DType("U16", 2, np.uint16, "uint16", None),
        DType("F16", 2, np.float16, "float16", "HalfStorage", float=True),
        DType("BF16", 2, np.uint16, "bfloat16", "BFloat16Storage", float=True),
        DType("I32", 4, np.int32, "int32", "IntStorage"),
        DType("U32", 4, np.uint32, "uint32", None),
        DType("F32", 4, np.float32, "float32", "FloatStorage", float=True),
        DType("I64", 8, np.int64, "int64", "LongStorage"),
        DType("U64", 8, np.uint64, "uint64", None),
        DType("F64", 8, np.float64, "float64", "DoubleStorage", float=True),
    )
}

#: Bytes per element of every dtype safetensors defines.
DTYPE_SIZES: dict[str, int] = {n: d.size for n, d in DTYPES.items()}
#: numpy types holding each dtype's bytes.
NUMPY_DTYPES: dict[str, Any] = {n: d.numpy for n, d in DTYPES.items()}
#: Floating-point dtypes numpy converts between.
FLOAT_DTYPES: tuple[str, ...] = tuple(n for n, d in DTYPES.items() if d.float)
#: Storage class names of torch 1.x checkpoints, by dtype.
STORAGE_TYPES: dict[str, str] = {n: d.storage for n, d in DTYPES.items() if d.storage}
#: Storage classes a torch 1.x state dict may use, with the dtype and element size.
STORAGE_DTYPES: dict[str, tuple[str, int]] = {d.storage: (n, d.size) for n, d in DTYPES.items() if d.storage}
#: torch dtype attribute names, by dtype.
TORCH_DTYPES: dict[str, str] = {n: d.torch for n, d in DTYPES.items() if d.torch}
#: The dtypes flax's `to_bytes` writes (EasyLM checkpoints), by the numpy name it records.
FLAX_DTYPES: dict[str, str] = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}
#: The safetensors library's dtype enum, in its order (a header lists higher ones first); it also
#: names dtypes the table above lacks (sub-byte floats, complex), which are never written here.
SAFETENSORS_ORDER: tuple[str, ...] = (
    "BOOL",
    "F4",
    "F6_E2M3",
    "F6_E3M2",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "F8_E8M0",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "C64",
    "F64",
    "I64",
    "U64",
)
