"""A tensor to be written: name, dtype and shape (the writers' common description)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .dtypes import DTYPE_SIZES


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to save: name, dtype (safetensors name) and shape; C-contiguous (little-endian bytes)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES[self.dtype]

    @property
    def stride(self) -> tuple[int, ...]:
        out, acc = [], 1
        for d in reversed(self.shape):
            out.append(acc)
            acc *= d
        return tuple(reversed(out))
