"""A strict reader of safetensors headers: every field checked before any tensor byte is touched.

Layout: 8 bytes little-endian header length N, N bytes of UTF-8 JSON, then the data section. The
JSON maps tensor names to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to
the data section) plus an optional `"__metadata__"` of string to string. Tensors MUST tile the
data section exactly: sorted by offset, each begins where the previous ends, the last ends at
the end of the file, and each spans `prod(shape) * itemsize` bytes.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _json
from ..errors import FormatError, IOFailure, MissingFileError
from .dtypes import DTYPE_SIZES

logger = logging.getLogger(__name__)

#: The reference implementation refuses headers above 100 MB; so do we, before reading them.
MAX_HEADER_BYTES = 100_000_000
MAX_DIMS = 64


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file; `begin`/`end` are absolute file offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """The validated header of one file."""

    path: str
    data_start: int
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str] | None = field(default=None)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_header(header: bytes, file_size: int, source: str) -> SafetensorsHeader:
    """Validate a header's JSON bytes against the size of the file they came from.

    Raises:
        `FormatError`: naming `source` and the first defect found.
    """
    data_start = 8 + len(header)
    try:
        doc = _json.loads(header, source)
    except FormatError as e:
        reason = e.message.removeprefix(f"{source}: ")
        raise FormatError(f"{source}: safetensors header is not valid JSON ({reason})", path=source) from None
    if not isinstance(doc, dict):
        raise FormatError(f"{source}: safetensors header must be a JSON object", path=source)
    metadata = doc.pop("__metadata__", None)
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise FormatError(f"{source}: __metadata__ must map strings to strings", path=source)
    data_len = file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        where = f"{source}: tensor {name[:80]!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"{where}: needs exactly dtype, shape and data_offsets", path=source)
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str):
            raise FormatError(f"{where}: dtype must be a string, got {type(dtype).__name__}", path=source)
        if dtype not in DTYPE_SIZES:
            raise FormatError(f"{where}: unknown dtype {dtype[:20]!r}", path=source)
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_int(d) and d >= 0 for d in shape):
            raise FormatError(f"{where}: shape must be a list of non-negative integers", path=source)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) for o in offsets)):
            raise FormatError(f"{where}: data_offsets must be [begin, end]", path=source)
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise FormatError(
                f"{where}: data_offsets [{begin}, {end}] outside the data section of {data_len} bytes",
                path=source,
            )
        need = DTYPE_SIZES[dtype]
        for d in shape:
            need *= d
        if need != end - begin:
            raise FormatError(
                f"{where}: {dtype} {shape} needs {need} bytes, offsets give {end - begin}", path=source
            )
        tensors[name] = TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)
    cursor = data_start
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != cursor:
            what = "overlaps another" if t.begin < cursor else "leaves a gap before it"
            raise FormatError(f"{source}: tensor {t.name[:80]!r} {what}", path=source)
        cursor = t.end
    if cursor != file_size:
        raise FormatError(
            f"{source}: tensors cover {cursor - data_start} of the {data_len} data bytes", path=source
        )
    return SafetensorsHeader(path=source, data_start=data_start, tensors=tensors, metadata=metadata)


def read_header(path: os.PathLike[str] | str) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file (the data is not read).

    Raises:
        `MissingFileError`: no such file.
        `IOFailure`: the file cannot be read.
        `FormatError`: a truncated file, a header length beyond the limit or the file, or any
            defect `parse_header` finds.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return read_header_from(f, os.fstat(f.fileno()).st_size, str(path))
    except FileNotFoundError:
        raise MissingFileError(f"safetensors file not found: {path}", path=path) from None
    except OSError as e:
        raise IOFailure("reading", path, e) from None


def read_header_from(stream: Any, size: int, source: str) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file of `size` bytes from the start of
    `stream` (anything with `readinto`, e.g. a compressed payload's decoded bytes)."""
    raw = _read_some(stream, 8)
    if len(raw) < 8:
        raise FormatError(f"{source}: too short for a safetensors file ({len(raw)} bytes)", path=source)
    (n,) = struct.unpack("<Q", raw)
    if n > MAX_HEADER_BYTES or 8 + n > size:
        raise FormatError(
            f"{source}: safetensors header length {n} is beyond "
            f"{'the file' if 8 + n > size else 'the 100 MB limit'}",
            path=source,
        )
    header = _read_some(stream, n)
    if len(header) != n:
        raise FormatError(f"{source}: safetensors header is truncated", path=source)
    return parse_header(header, size, source)


def _read_some(stream: Any, n: int) -> bytes:
    """Up to `n` bytes: fewer only at the stream's end."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            break
        got += k
    return bytes(buf[:got])
