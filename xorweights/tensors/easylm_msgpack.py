"""EasyLM's streaming checkpoints (Koala's diffs), indexed without reading tensor bytes.

A file is a plain sequence of msgpack values, one per tensor: `[key, data]`, where `key` is the
flattened parameter path (an array of strings, e.g. `["transformer", "h", "0", "attention", "wq",
"kernel"]`) and `data` is a bin holding flax's `to_bytes` of the array: an ext value of type 1
whose payload is `[shape, dtype name, raw C-order little-endian bytes]`. Only the headers are
parsed here; each tensor's bytes are left in place, at a known offset, to be memory-mapped. Arrays
above 1 GiB (flax's chunked form) are refused. Nothing is unpickled: msgpack holds data only.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import FormatError
from .dtypes import DTYPE_SIZES, FLAX_DTYPES

_NDARRAY_EXT = 1
_MAX_KEY_PARTS = 16
_MAX_DIMS = 8


@dataclass(frozen=True)
class EasyLMTensor:
    """One tensor of a streaming checkpoint: its key path, dtype, shape and where its bytes are."""

    key: tuple[str, ...]
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class _Reader:
    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f, self.path, self.size = f, path, size

    def fail(self, what: str) -> FormatError:
        return FormatError(
            f"{self.path}: not an EasyLM streaming checkpoint ({what} at byte {self.f.tell()})",
            path=self.path,
        )

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise self.fail("file ends inside a value")
        return data

    def head(self) -> int:
        return self.take(1)[0]

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def array_len(self) -> int:
        b = self.head()
        if 0x90 <= b <= 0x9F:
            return b & 0x0F
        if b == 0xDC:
            return self.uint(2)
        if b == 0xDD:
            return self.uint(4)
        if b in (0xDE, 0xDF) or 0x80 <= b <= 0x8F:
            raise self.fail("a map (flax's chunked form for arrays above 1 GiB, not supported)")
        raise self.fail(f"byte 0x{b:02x} where an array was expected")

    def string(self) -> str:
        b = self.head()
        if 0xA0 <= b <= 0xBF:
            n = b & 0x1F
        elif b in (0xD9, 0xDA, 0xDB):
            n = self.uint({0xD9: 1, 0xDA: 2, 0xDB: 4}[b])
        else:
            raise self.fail(f"byte 0x{b:02x} where a string was expected")
        if n > 256:
            raise self.fail("a string longer than a key part or dtype name can be")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string that is not UTF-8") from None

    def bin_len(self) -> int:
        b = self.head()
        if b in (0xC4, 0xC5, 0xC6):
            return self.uint({0xC4: 1, 0xC5: 2, 0xC6: 4}[b])
        raise self.fail(f"byte 0x{b:02x} where bytes were expected")

    def integer(self) -> int:
        b = self.head()
        if b <= 0x7F:
            return b
        if b in (0xCC, 0xCD, 0xCE, 0xCF):
            return self.uint({0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}[b])
        raise self.fail(f"byte 0x{b:02x} where a dimension was expected")

    def ext(self) -> tuple[int, int]:
        """An ext header: (type, payload length)."""
        b = self.head()
        if b in (0xC7, 0xC8, 0xC9):
            n = self.uint({0xC7: 1, 0xC8: 2, 0xC9: 4}[b])
        elif 0xD4 <= b <= 0xD8:
            n = 1 << (b - 0xD4)
        else:
            raise self.fail(f"byte 0x{b:02x} where an array record was expected")
        kind = struct.unpack("b", self.take(1))[0]
        return kind, n


def read_streaming_checkpoint(path: os.PathLike[str] | str) -> list[EasyLMTensor]:
    """Every tensor of an EasyLM streaming checkpoint, in file order (headers only).

    Raises:
        `FormatError`: the file is not such a checkpoint, or a record does not add up (named with
            the byte offset); a key seen twice.
    """
    p = Path(path)
    size = p.stat().st_size
    out: list[EasyLMTensor] = []
    seen: set[tuple[str, ...]] = set()
    with open(p, "rb") as f:
        r = _Reader(f, p, size)
        while f.tell() < size:
            if r.array_len() != 2:
                raise r.fail("a record that is not [key, data]")
            parts = r.array_len()
            if not 0 < parts <= _MAX_KEY_PARTS:
                raise r.fail(f"a key of {parts} parts")
            key = tuple(r.string() for _ in range(parts))
            outer = r.bin_len()
            end = f.tell() + outer
            kind, length = r.ext()
            if kind != _NDARRAY_EXT or f.tell() + length != end:
                raise r.fail(f"{'/'.join(key)}: not a flax array record")
            if r.array_len() != 3:
                raise r.fail(f"{'/'.join(key)}: an array record without shape, dtype and bytes")
            dims = r.array_len()
            if dims > _MAX_DIMS:
                raise r.fail(f"{'/'.join(key)}: {dims} dimensions")
            shape = tuple(r.integer() for _ in range(dims))
            name = r.string()
            dtype = FLAX_DTYPES.get(name)
            if dtype is None:
                raise r.fail(f"{'/'.join(key)}: dtype {name!r}, expected one of {', '.join(FLAX_DTYPES)}")
            nbytes = r.bin_len()
            offset = f.tell()
            want = DTYPE_SIZES[dtype]
            for d in shape:
                want *= d
            if nbytes != want or offset + nbytes != end or end > size:
                raise r.fail(f"{'/'.join(key)}: {nbytes} bytes for {name}{list(shape)}")
            if key in seen:
                raise r.fail(f"{'/'.join(key)} a second time")
            seen.add(key)
            out.append(EasyLMTensor(key, dtype, shape, offset, nbytes))
            f.seek(end)
    if not out:
        raise FormatError(f"{p}: empty; not an EasyLM streaming checkpoint", path=p)
    return out
