"""Delta frames: the compressed form of a native payload's bytes (format versions 2 and 3).

A compressed payload file is a sequence of frames covering the output file's bytes in order.
Each frame is decodable on its own, given the base bytes of the same span (the base image, which
is zeros where the output holds its header or a tensor stored raw):

    offset  size     field (little-endian)
    0       1        transform: 0 stored, 1 delta, 2 delta grouped by the base's exponent,
                     3 delta with a coding per plane (version 3)
    1       1        element width w in bytes: 1, 2, 4 or 8 (1 for stored)
    2       1        grouping key (else 0): 1 float16's exponent (bits 10-14), 2 the byte after
                     the sign bit (bfloat16's and float32's exponent)
    3       1        reserved, 0
    4       4        n: elements in the frame (bytes, for stored); n * w at most MAX_FRAME_BYTES
    [transform 3: 8, w bytes: each plane's coding: 0 as it is, 1 zstd, 2 zstd of the grouped order]
    then     4 * w   the stored length of each plane, least significant plane first
    then     ...     the planes (transforms 0-2: each one zstd frame that declares its content size, n bytes)

- stored: one plane, the n output bytes as they are.
- delta: element i's value is zigzag(out_i - base_i), the wrapping difference of the bit
  patterns as w-byte unsigned integers (`(d << 1) ^ (d >> (8w - 1))` on the signed view); plane j
  holds byte j of every value. Decoding: un-zigzag, then add the base (wrapping).
- delta grouped: as delta, but the values are in the order of a stable sort of the elements by
  the key of the base's element, which the decoder recomputes from the base (key 1 with w = 2,
  key 2 with w = 2 or 4).
- planes (3): as delta, each plane stored its own way: as it is (n bytes; what zstd shrinks by
  less than 2%, which then costs nothing to decode), one zstd frame, or one zstd frame of the
  plane's bytes in the grouped order (the key in the head; only where that is smaller).

Writers cut frames at tensor boundaries, at most `frame_stream.FRAME_ELEMENTS` elements (stored
frames: `frame_stream.STORED_FRAME_BYTES` bytes), and never make a frame of no element. Readers
refuse a frame of over `MAX_FRAME_BYTES` bytes of output, a reserved field that is not 0, a plane
that is not one zstd frame of exactly n bytes (or, as it is, not n bytes), and any byte after the
last frame's planes that is not another frame; a file's reader (`frame_stream.FrameReader`) also
refuses a frame of no element.
"""

from __future__ import annotations

import bisect
import logging
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError

logger = logging.getLogger(__name__)

STORED, DELTA, GROUPED, PLANES = 0, 1, 2, 3
#: How a plane of a `PLANES` frame is stored: as it is, zstd, zstd of the grouped order.
RAW, ZSTD, ZSTD_GROUPED = 0, 1, 2
#: A plane is stored as it is unless zstd makes it smaller than this fraction (a raw plane costs
#: nothing to decode; the low planes of a fine-tune's deltas shrink by 1% at most).
RAW_ABOVE = 0.98
#: A plane is grouped only when that makes it smaller than this fraction of plain zstd (a grouped
#: plane costs its decoder a sort of the frame's elements by their key).
GROUP_BELOW = 0.99
#: What a reader accepts at most, in bytes of output: bounds the memory one frame takes.
MAX_FRAME_BYTES = 1 << 25
#: zstd level of every plane (levels above 1 were measured no smaller on fine-tuning deltas).
ZSTD_LEVEL = 1

_HEAD = struct.Struct("<BBBBI")
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_INT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
#: The grouping key of each float dtype: 1 float16's exponent, 2 the byte after the sign bit.
GROUP_KEYS = {"F16": 1, "BF16": 2, "F32": 2}


def _exponent_order(base: np.ndarray, key: int) -> np.ndarray:
    """The stable order of the elements by their key (the base's exponent: recomputable from it)."""
    if key == 1:
        keys = ((base >> 10) & 0x1F).astype(np.uint8)
    else:  # bfloat16 and float32: the exponent is the top byte once the sign bit is shifted out
        keys = np.ascontiguousarray((base << 1).view(np.uint8)[base.itemsize - 1 :: base.itemsize])
    return np.argsort(keys, kind="stable")


@dataclass(frozen=True)
class Transform:
    """One way a frame turns output bytes into planes: the byte in its head, the grouping keys it
    takes, and the order of its values (None: the elements' own)."""

    code: int
    keys: Mapping[int, tuple[int, ...]]
    """Each grouping key the head may give, with the element widths it takes."""
    order: Callable[[np.ndarray, int], np.ndarray] | None = None
    """The order of the values, from the base's elements and the key (`GROUP_KEYS`)."""


TRANSFORMS: dict[int, Transform] = {}
"""The frame transforms a reader accepts and a writer may choose, by code (`register`)."""


def register(transform: Transform) -> Transform:
    """Add a transform (its code must be new)."""
    if transform.code in TRANSFORMS:
        raise ValueError(f"frame transform {transform.code} is registered already")
    TRANSFORMS[transform.code] = transform
    return transform


register(Transform(STORED, {0: (1,)}))
register(Transform(DELTA, {0: (1, 2, 4, 8)}))
register(Transform(GROUPED, {1: (2,), 2: (2, 4)}, order=_exponent_order))
register(Transform(PLANES, {0: (1, 2, 4, 8), 1: (2,), 2: (2, 4)}, order=_exponent_order))

#: The encode modes that write delta frames: the transform, and whether planes may be grouped
#: (by the key of the tensor's dtype, `GROUP_KEYS`). Transforms 1 and 2 are read, no longer written.
MODES: dict[str, tuple[int, bool]] = {"zstd": (PLANES, False), "zstd-grouped": (PLANES, True)}


def _zstd() -> Any:
    import zstandard

    return zstandard


@dataclass(frozen=True)
class FrameHead:
    """A frame's fixed fields, the stored length of each of its planes, and (transform 3) how each
    plane is stored."""

    transform: int
    width: int
    key: int
    count: int
    planes: tuple[int, ...]
    codings: tuple[int, ...] = ()
    """`RAW`, `ZSTD` or `ZSTD_GROUPED` per plane (transform 3; else every plane is zstd)."""

    @property
    def size(self) -> int:
        """Bytes of the frame: its head and its planes."""
        return _HEAD.size + len(self.codings) + 4 * len(self.planes) + sum(self.planes)

    @property
    def out_size(self) -> int:
        """Bytes of output the frame makes."""
        return self.count * self.width


def _zigzag(out: memoryview | bytes, base: memoryview | bytes, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The zigzagged wrapping differences of `out` from `base` as `width`-byte integers, and the base's."""
    if len(out) % width or len(base) != len(out):
        raise ValueError(f"frame of {len(out)} bytes, base {len(base)}, is not whole {width}-byte elements")
    f = np.frombuffer(out, dtype=_UINT[width])
    b = np.frombuffer(base, dtype=_UINT[width])
    d = (f - b).view(_INT[width])
    return ((d << 1) ^ (d >> (8 * width - 1))).view(_UINT[width]), b


def encode_frame(
    out: memoryview | bytes,
    base: memoryview | bytes,
    transform: int,
    width: int,
    dtype: str,
    cctx: Any,
    *,
    group: bool = False,
) -> bytes:
    """One frame making the bytes `out` from the base bytes `base` (as long as `out`).

    `dtype` (a safetensors dtype name) gives grouping its key (`GROUP_KEYS`); a transform 3 frame
    groups a plane only with `group` (and where that pays, `GROUP_BELOW`).
    """
    if transform == STORED:
        planes = [cctx.compress(bytes(out))]
        return _HEAD.pack(STORED, 1, 0, 0, len(out)) + struct.pack("<I", len(planes[0])) + planes[0]
    if transform == PLANES:
        return _encode_planes(out, base, width, GROUP_KEYS.get(dtype, 0) if group else 0, cctx)
    order = TRANSFORMS[transform].order
    key = GROUP_KEYS[dtype] if order is not None else 0
    z, b = _zigzag(out, base, width)
    if order is not None:
        z = z[order(b, key)]
    rows = z.view(np.uint8).reshape(-1, width).T.copy()  # row j: byte j of every value
    planes = [cctx.compress(row.data) for row in rows]
    sizes = struct.pack(f"<{width}I", *(len(p) for p in planes))
    return _HEAD.pack(transform, width, key, 0, len(z)) + sizes + b"".join(planes)


def _encode_planes(
    out: memoryview | bytes, base: memoryview | bytes, width: int, key: int, cctx: Any
) -> bytes:
    """A transform 3 frame: each plane as it is, zstd, or (with a `key`) zstd of the grouped order,
    whichever `RAW_ABOVE` and `GROUP_BELOW` choose."""
    z, b = _zigzag(out, base, width)
    n = len(z)
    order = None
    codings: list[int] = []
    blobs: list[bytes | memoryview] = []
    for j in range(width):
        row = (z >> np.array(8 * j, z.dtype)).astype(np.uint8) if j else z.astype(np.uint8)
        blob: bytes | memoryview = cctx.compress(row.data)
        coding = ZSTD
        if len(blob) > RAW_ABOVE * n:
            coding, blob = RAW, row.data
        elif key:
            order = _exponent_order(b, key) if order is None else order
            grouped = cctx.compress(row[order].data)
            if len(grouped) < GROUP_BELOW * len(blob):
                coding, blob = ZSTD_GROUPED, grouped
        codings.append(coding)
        blobs.append(blob)
    used = key if ZSTD_GROUPED in codings else 0
    head = _HEAD.pack(PLANES, width, used, 0, n) + bytes(codings)
    return head + struct.pack(f"<{width}I", *(len(p) for p in blobs)) + b"".join(blobs)


def parse_head(head: bytes, where: str) -> FrameHead:
    """The fixed fields and plane lengths of a frame, from its first bytes (`head_size` of them).

    Raises:
        `FormatError`: a field out of range, naming `where`.
    """
    if len(head) < _HEAD.size:
        raise FormatError(f"{where}: ends inside a frame head", path=where)
    transform, width, key, reserved, count = _HEAD.unpack_from(head)
    if transform not in TRANSFORMS or reserved:
        raise FormatError(f"{where}: unknown frame (transform {transform}, reserved {reserved})", path=where)
    if width not in _UINT or (transform == STORED and width != 1):
        raise FormatError(f"{where}: frame element width {width}; expected 1, 2, 4 or 8", path=where)
    if width not in TRANSFORMS[transform].keys.get(key, ()):
        raise FormatError(f"{where}: grouping key {key} for {width}-byte elements", path=where)
    if count * width > MAX_FRAME_BYTES:
        raise FormatError(f"{where}: frame of {count * width} bytes, more than {MAX_FRAME_BYTES}", path=where)
    n_planes = 1 if transform == STORED else width
    n_codings = width if transform == PLANES else 0
    if len(head) < _HEAD.size + n_codings + 4 * n_planes:
        raise FormatError(f"{where}: ends inside a frame head", path=where)
    codings = tuple(head[_HEAD.size : _HEAD.size + n_codings])
    if any(c not in (RAW, ZSTD, ZSTD_GROUPED) for c in codings):
        raise FormatError(f"{where}: plane codings {list(codings)}; expected 0, 1 or 2 each", path=where)
    if (ZSTD_GROUPED in codings) != bool(key) and transform == PLANES:
        raise FormatError(f"{where}: grouping key {key} with plane codings {list(codings)}", path=where)
    planes = struct.unpack_from(f"<{n_planes}I", head, _HEAD.size + n_codings)
    for length, coding in zip(planes, codings or (ZSTD,) * n_planes, strict=True):
        if coding == RAW and length != count:
            raise FormatError(f"{where}: a plane stored as it is of {length} bytes, not {count}", path=where)
        if length > compressed_bound(count):
            raise FormatError(
                f"{where}: a plane of {length} bytes, more than {count} bytes compress to", path=where
            )
    return FrameHead(transform, width, key, count, planes, codings)


def compressed_bound(n: int) -> int:
    """The most bytes a zstd frame of `n` bytes takes (zstd's `ZSTD_compressBound`, with room for
    the frame header and checksum)."""
    return n + (n >> 8) + (((128 << 10) - n) >> 11 if n < (128 << 10) else 0) + 64


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def starts_with_frame(first: bytes) -> bool:
    """Whether bytes read from a file's start begin a stored frame, as every compressed payload
    file does (its header): a stored head, then one zstd frame (16 bytes are enough)."""
    return len(first) >= 16 and first[:4] == bytes((STORED, 1, 0, 0)) and first[12:16] == _ZSTD_MAGIC


def head_size(first: bytes) -> int:
    """How long a frame's head is, from its first 2 bytes (transform and width)."""
    if len(first) < 2:
        return _HEAD.size
    transform, width = first[0], first[1]
    if transform == STORED:
        return _HEAD.size + 4
    return _HEAD.size + (5 if transform == PLANES else 4) * max(1, width)


class MaskedSpans:
    """The output bytes a compressed file MUST hold in delta frames: each tensor its manifest masks
    by a base tensor (`(begin, end, tensor)`, absolute offsets). A stored frame there is the
    fine-tuned bytes as they are."""

    def __init__(self, spans: Iterable[tuple[int, int, str]] = ()) -> None:
        self.spans = sorted(s for s in spans if s[1] > s[0])
        self._ends = [s[1] for s in self.spans]

    def hit(self, start: int, end: int) -> str | None:
        """The first masked tensor that output bytes `start:end` overlap, or None."""
        i = bisect.bisect_right(self._ends, start)
        return self.spans[i][2] if end > start and i < len(self.spans) and self.spans[i][0] < end else None


def frame_heads(stream: Any, size: int, where: str) -> Iterator[tuple[int, int, FrameHead]]:
    """Index, output offset and head of each frame of a seekable compressed file of `size` bytes,
    seeking past the planes: nothing is decompressed (a publisher checks every frame this way).

    Raises:
        `FormatError`: a head out of range, or the file ending inside a frame, naming the frame.
    """
    index = offset = 0
    while first := stream.read(2):
        at = f"{where}: frame {index}"
        head = parse_head(first + stream.read(head_size(first) - len(first)), at)
        pos = stream.seek(sum(head.planes), 1)
        if pos > size:
            raise FormatError(f"{at}: the file ends inside its planes ({pos - size} bytes short)", path=where)
        yield index, offset, head
        index += 1
        offset += head.out_size


def decode_frame(
    head: FrameHead,
    planes: Sequence[bytes | memoryview],
    base: memoryview | bytes,
    dctx: Any,
    where: str,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The output bytes of a frame (a uint8 array), from its planes and the base bytes of its span.

    `out` (uint8, at least the frame's output size) is written instead of a new array: reusing
    buffers spares the page faults of fresh ones, which cost as much as the arithmetic.

    Raises:
        `FormatError`: a plane that is not one zstd frame of exactly `count` bytes.
    """
    n = head.count
    if head.transform == STORED:
        return np.frombuffer(_plane(planes[0], n, dctx, where), dtype=np.uint8)
    w = head.width
    if len(base) != n * w:
        raise FormatError(f"{where}: frame spans {n * w} bytes, base gave {len(base)}", path=where)
    z = (out[: n * w] if out is not None else np.empty(n * w, np.uint8)).view(_UINT[w])
    b = np.frombuffer(base, dtype=_UINT[w])
    order = TRANSFORMS[head.transform].order
    if head.transform == GROUPED:
        rows = [np.frombuffer(_plane(blob, n, dctx, where), dtype=np.uint8) for blob in planes]
        u = _scratch("order", n * w).view(_UINT[w])
        _join(rows, u, 0, n)
        z[order(b, head.key)] = u  # type: ignore[misc]
        _undelta(z, b)
        return z.view(np.uint8)
    rows, sort = [], None
    for j, (blob, coding) in enumerate(zip(planes, head.codings or (ZSTD,) * w, strict=True)):
        row = np.frombuffer(blob if coding == RAW else _plane(blob, n, dctx, where), dtype=np.uint8)
        if coding == ZSTD_GROUPED:
            sort = order(b, head.key) if sort is None else sort  # type: ignore[misc]
            into = _scratch(f"plane{j}", n)
            into[sort] = row
            row = into
        rows.append(row)
    for i in range(0, n, _BLOCK):  # every step on one block while it is in the cache
        j = min(i + _BLOCK, n)
        _join(rows, z, i, j)
        _undelta(z[i:j], b[i:j])
    return z.view(np.uint8)


#: Elements the join and un-delta take at a time: their passes stay in the CPU's cache (1.8x
#: faster than whole frames), and each numpy call is long enough that the threads decoding at once
#: rarely wait for the GIL (1.6x faster than 2^16 with 4 threads on 2 cores).
_BLOCK = 1 << 18


def _join(rows: Sequence[np.ndarray], z: np.ndarray, i: int, j: int) -> None:
    """Elements `i:j` of `z` from their byte planes (least significant first), most significant
    first: shift by a byte, or in the next plane."""
    zz = z[i:j]
    top = len(rows) - 1
    np.left_shift(rows[top][i:j], 8 if top else 0, out=zz, dtype=z.dtype)
    for k in range(top - 1, -1, -1):
        if k < top - 1:
            zz <<= 8
        zz |= rows[k][i:j]


def _undelta(z: np.ndarray, b: np.ndarray) -> None:
    """Zigzagged deltas `z` turned in place into output, given the base elements `b`."""
    s = _scratch("sign", z.nbytes).view(z.dtype)
    np.bitwise_and(z, 1, out=s)
    np.negative(s, out=s)
    z >>= 1
    z ^= s
    z += b


_scratches = threading.local()


def _scratch(name: str, nbytes: int) -> np.ndarray:
    """A uint8 buffer of `nbytes` kept per thread (the largest asked for), reused frame after frame."""
    buf = getattr(_scratches, name, None)
    if buf is None or buf.size < nbytes:
        buf = np.empty(nbytes, np.uint8)
        setattr(_scratches, name, buf)
    return buf[:nbytes]


def _plane(blob: bytes, n: int, dctx: Any, where: str) -> bytes:
    zstd = _zstd()
    try:
        size = zstd.frame_content_size(blob)
        if size != n:
            raise FormatError(f"{where}: a plane declares {size} bytes, the frame {n}", path=where)
        data = dctx.decompress(blob, allow_extra_data=False)  # one frame, nothing after it
    except zstd.ZstdError as e:
        raise FormatError(f"{where}: a plane is not one valid zstd frame ({e})", path=where) from None
    if len(data) != n:
        raise FormatError(f"{where}: a plane is not one zstd frame of {n} bytes", path=where)
    return data


def compressor() -> Any:
    """A zstd compressor at `ZSTD_LEVEL` that writes each frame's content size and checksum
    (so a damaged plane is caught in its frame; one compressor per thread)."""
    return _zstd().ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=True)


def decompressor() -> Any:
    """A zstd decompressor (one per thread)."""
    return _zstd().ZstdDecompressor()
