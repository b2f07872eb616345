"""Delta frames (compressed native payloads): exact layout, lossless round trips, refusals.

The expected values and planes are computed here independently, with Python integers."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import zstandard

from xorweights.errors import FormatError
from xorweights.formats.delta_frames import (
    DELTA,
    GROUPED,
    MAX_FRAME_BYTES,
    PLANES,
    RAW,
    STORED,
    ZSTD,
    ZSTD_GROUPED,
    compressor,
    decode_frame,
    decompressor,
    encode_frame,
    head_size,
    parse_head,
)

WIDTH = {"F16": 2, "BF16": 2, "F32": 4, "I64": 8, "U8": 1}


def _split(frame: bytes) -> tuple[object, list[bytes]]:
    head = parse_head(frame[: head_size(frame[:2])], "frame")
    planes, at = [], head_size(frame[:2])
    for n in head.planes:
        planes.append(frame[at : at + n])
        at += n
    assert at == len(frame) == head.size
    return head, planes


def _zigzag(out: int, base: int, width: int) -> int:
    """Independent: the wrapping difference as a signed integer, zigzag-encoded."""
    bits = 8 * width
    d = (out - base) % (1 << bits)
    signed = d - (1 << bits) if d >> (bits - 1) else d
    return (signed << 1) % (1 << bits) if signed >= 0 else ((-signed) << 1) - 1


def _special(dtype: str) -> list[int]:
    """Bit patterns of NaNs, infinities, zeros, subnormals and extremes in `dtype`."""
    if dtype == "F16":
        return [0x7E00, 0x7C01, 0xFC00, 0x7C00, 0x0000, 0x8000, 0x0001, 0x8001, 0x7BFF, 0xFBFF, 0x3C00]
    if dtype == "BF16":
        return [0x7FC0, 0x7F81, 0xFF80, 0x7F80, 0x0000, 0x8000, 0x0001, 0x8001, 0x7F7F, 0xFF7F, 0x3F80]
    return [
        0x7FC00000,
        0x7F800001,
        0xFF800000,
        0x7F800000,
        0,
        0x80000000,
        1,
        0x80000001,
        0x7F7FFFFF,
        0x3F800000,
    ]


def _pair(dtype: str, n: int, seed: int) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(seed)
    w = WIDTH[dtype]
    kind = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[w]
    base = rng.integers(0, np.iinfo(kind).max, n, dtype=kind, endpoint=True)
    out = base.copy()
    if n:
        out += rng.integers(0, 3, n, dtype=kind)  # small steps, wrapping at both ends too
        if dtype in ("F16", "BF16", "F32"):
            sp = np.array(_special(dtype), dtype=kind)
            k = min(n, len(sp))
            base[:k], out[-k:] = sp[:k], sp[::-1][:k]
    return out.tobytes(), base.tobytes()


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32", "I64", "U8"])
@pytest.mark.parametrize("n", [0, 1, 3, 4097, (1 << 20) + 1])
def test_round_trip(dtype: str, n: int) -> None:
    out, base = _pair(dtype, n, seed=n)
    transforms = [STORED, DELTA, PLANES] + ([GROUPED] if dtype in ("F16", "BF16", "F32") else [])
    for t in transforms:
        for group in (False, True) if t == PLANES else (False,):
            frame = encode_frame(out, base, t, WIDTH[dtype], dtype, compressor(), group=group)
            head, planes = _split(frame)
            got = decode_frame(head, planes, base if t != STORED else b"", decompressor(), "f")
            assert got.tobytes() == out, (dtype, n, t, group)


def test_exact_layout_of_a_delta_frame() -> None:
    """Head bytes pinned; each plane one zstd frame declaring n bytes, holding byte j of every
    zigzag value (least significant plane first)."""
    base = struct.pack("<4H", 0x3C00, 0x0001, 0xFFFF, 0x8000)
    out = struct.pack("<4H", 0x3C01, 0xFFFF, 0x0000, 0x8000)
    frame = encode_frame(out, base, DELTA, 2, "F16", compressor())
    head, planes = _split(frame)
    assert frame[:8] == bytes.fromhex("01 02 0000 04000000".replace(" ", ""))
    assert frame[8:16] == struct.pack("<2I", *(len(p) for p in planes))
    values = [
        _zigzag(o, b, 2) for o, b in zip(struct.unpack("<4H", out), struct.unpack("<4H", base), strict=True)
    ]
    assert values == [2, 3, 2, 0]  # +1, -2, +1 (wrapping), 0
    for j, plane in enumerate(planes):
        assert zstandard.frame_content_size(plane) == 4
        assert zstandard.ZstdDecompressor().decompress(plane) == bytes((v >> (8 * j)) & 0xFF for v in values)


def test_grouped_frame_orders_values_by_the_base_exponent() -> None:
    base_vals = [0x3C00, 0x0400, 0x3C01, 0x0001]  # exponents 15, 1, 15, 0
    base = struct.pack("<4H", *base_vals)
    out = struct.pack("<4H", 0x3C02, 0x0401, 0x3C01, 0x0003)
    frame = encode_frame(out, base, GROUPED, 2, "F16", compressor())
    head, planes = _split(frame)
    assert frame[:4] == bytes([GROUPED, 2, 1, 0])  # key 1: float16's exponent
    values = [_zigzag(o, b, 2) for o, b in zip(struct.unpack("<4H", out), base_vals, strict=True)]
    order = sorted(range(4), key=lambda i: ((base_vals[i] >> 10) & 0x1F, i))  # stable
    low = zstandard.ZstdDecompressor().decompress(planes[0])
    assert list(low) == [values[i] & 0xFF for i in order]
    assert decode_frame(head, planes, base, decompressor(), "f").tobytes() == out


def _finetune_like(n: int, seed: int) -> tuple[bytes, bytes]:
    """float16 bases over 8 binades, changed by a few percent (noise in the low byte) and by steps
    of one absolute size (as an optimizer makes): the bit patterns move more where the base's
    exponent is small, so grouping by it pays."""
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal(n) * 2.0 ** -rng.integers(0, 8, n)).astype(np.float16)
    b = base.astype(np.float32)
    out = (b * (1 + 0.05 * rng.standard_normal(n)) + rng.choice([-2, -1, 0, 1, 2], n) * 2.0**-9).astype(
        np.float16
    )
    return out.tobytes(), base.tobytes()


def test_exact_layout_of_a_planes_frame() -> None:
    """Transform 3: a coding byte per plane, then the lengths; the low plane (noise) as it is, the
    high plane zstd, or zstd of the stable order of the base's exponents where that is smaller."""
    out, base = _finetune_like(1 << 16, seed=3)
    values = [
        _zigzag(o, b, 2)
        for o, b in zip(struct.unpack(f"<{1 << 16}H", out), struct.unpack(f"<{1 << 16}H", base), strict=True)
    ]
    low, high = bytes(v & 0xFF for v in values), bytes(v >> 8 for v in values)
    keys = [(b >> 10) & 0x1F for b in struct.unpack(f"<{1 << 16}H", base)]
    order = sorted(range(1 << 16), key=lambda i: (keys[i], i))
    for group in (False, True):
        frame = encode_frame(out, base, PLANES, 2, "F16", compressor(), group=group)
        assert frame[:8] == bytes([PLANES, 2, 1 if group else 0, 0]) + struct.pack("<I", 1 << 16)
        assert frame[8:10] == bytes([RAW, ZSTD_GROUPED if group else ZSTD])
        n0, n1 = struct.unpack_from("<2I", frame, 10)
        assert n0 == 1 << 16 and frame[18 : 18 + n0] == low  # the low plane as it is
        plane = zstandard.ZstdDecompressor().decompress(frame[18 + n0 :])
        assert len(frame) == 18 + n0 + n1 and zstandard.frame_content_size(frame[18 + n0 :]) == 1 << 16
        assert plane == (bytes(high[i] for i in order) if group else high)
        head, planes = _split(frame)
        assert head.codings == (RAW, ZSTD_GROUPED if group else ZSTD)
        assert decode_frame(head, planes, base, decompressor(), "f").tobytes() == out
    # Grouping is kept only where it pays: on this pair, the high plane 10% smaller or more.
    sizes = [len(encode_frame(out, base, PLANES, 2, "F16", compressor(), group=g)) for g in (False, True)]
    assert sizes[1] < 0.97 * sizes[0]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: f[:8] + bytes([3]) + f[9:], r"plane codings \[3, 1\]"),
        (lambda f: f[:2] + b"\x01" + f[3:], r"grouping key 1 with plane codings \[0, 1\]"),
        (
            lambda f: f[:8] + bytes([RAW, ZSTD_GROUPED]) + f[10:],
            r"grouping key 0 with plane codings \[0, 2\]",
        ),
        (
            lambda f: f[:10] + struct.pack("<I", 100) + f[14:],
            "a plane stored as it is of 100 bytes, not 4096",
        ),
        (lambda f: f[:8] + bytes([ZSTD]) + f[9:], "not one valid zstd frame"),
        (lambda f: f[:9] + bytes([RAW]) + f[10:], "a plane stored as it is of"),
    ],
)
def test_damaged_planes_frames_are_refused(damage, message: str) -> None:
    out, base = _finetune_like(4096, seed=4)
    frame = encode_frame(out, base, PLANES, 2, "F16", compressor())
    assert frame[8:10] == bytes([RAW, ZSTD])
    with pytest.raises(FormatError, match=message):
        head, planes = _split(damage(frame))
        decode_frame(head, planes, base, decompressor(), "payload.xwz frame 3")


def test_stored_frame_layout() -> None:
    frame = encode_frame(b"header bytes", b"", STORED, 1, "", compressor())
    assert frame[:8] == bytes([STORED, 1, 0, 0]) + struct.pack("<I", 12)
    assert zstandard.ZstdDecompressor().decompress(frame[12:]) == b"header bytes"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: bytes([7]) + f[1:], "unknown frame"),
        (lambda f: f[:3] + b"\x01" + f[4:], "unknown frame"),
        (lambda f: f[:2] + b"\x02" + f[3:], "grouping key 2"),
        (lambda f: f[:1] + b"\x03" + f[2:], "element width 3"),
        (lambda f: f[:4] + struct.pack("<I", MAX_FRAME_BYTES // 2 + 1) + f[8:], "more than"),
        (lambda f: f[:4] + struct.pack("<I", 5) + f[8:], "declares 4 bytes, the frame 5"),
        (lambda f: f[:16] + b"\x00" * 4 + f[20:], "not one valid zstd frame"),
    ],
)
def test_damaged_frames_are_refused(damage, message: str) -> None:
    base = struct.pack("<4H", 1, 2, 3, 4)
    frame = damage(encode_frame(struct.pack("<4H", 2, 3, 4, 5), base, DELTA, 2, "F16", compressor()))
    with pytest.raises(FormatError, match=message):
        head, planes = _split(frame)
        span = (base + bytes(64))[: head.out_size]  # the base a reader gives for the span the head says
        decode_frame(head, planes, span, decompressor(), "payload.xwz frame 3")


def test_a_plane_of_two_zstd_frames_is_refused() -> None:
    base = struct.pack("<2H", 1, 2)
    frame = encode_frame(struct.pack("<2H", 1, 2), base, DELTA, 2, "F16", compressor())
    head, planes = _split(frame)
    extra = zstandard.ZstdCompressor(write_content_size=True).compress(b"")
    with pytest.raises(FormatError, match="not one (valid )?zstd frame"):
        decode_frame(head, [planes[0] + extra, planes[1]], base, decompressor(), "f")


def test_a_file_of_frames_round_trips_through_the_reader(tmp_path) -> None:
    """Spans as a safetensors file has them: a stored header, a tensor with a base larger than a
    frame, a raw tensor, an empty tensor; the reader yields the output byte for byte."""
    import io

    from xorweights.formats.frame_stream import FrameReader, Span, write_frames

    header = b"H" * 37
    out_t, base_t = _pair("F16", (1 << 20) + 5, seed=1)
    raw = bytes(range(200)) * 3
    out = header + out_t + raw
    base = bytes(len(header)) + base_t + bytes(len(raw))
    spans = [
        Span(len(header), STORED),
        Span(len(out_t), GROUPED, 2, "F16"),
        Span(len(raw), STORED),
        Span(0, DELTA, 4, "F32"),
    ]
    sink = io.BytesIO()
    size = write_frames(io.BytesIO(out), io.BytesIO(base), spans, sink)
    assert size == len(sink.getvalue()) < len(out)
    got, chunk = bytearray(), bytearray(1000)
    with FrameReader(io.BytesIO(sink.getvalue()), io.BytesIO(base), "p.safetensors") as reader:
        while n := reader.readinto(chunk):
            got += chunk[:n]
    assert bytes(got) == out
    cut = sink.getvalue()[:-3]
    with pytest.raises(FormatError, match="p.safetensors: frame 3: truncated"):
        reader = FrameReader(io.BytesIO(cut), io.BytesIO(base), "p.safetensors")
        while reader.readinto(chunk):
            pass


def test_a_plane_longer_than_its_bytes_can_compress_to_is_refused_from_the_head() -> None:
    """A hostile head cannot make a reader allocate gigabytes for a frame of a few bytes."""
    from xorweights.formats.delta_frames import compressed_bound

    head = struct.pack("<BBBBI", DELTA, 2, 0, 0, 4) + struct.pack("<2I", 2**32 - 1, 10)
    with pytest.raises(FormatError, match="more than 4 bytes compress to"):
        parse_head(head, "f")
    assert compressed_bound(4) >= len(compressor().compress(b"abcd"))


def test_files_read_at_once_share_one_pool_of_frame_threads() -> None:
    """Frames are balanced across files: two readers of 2 workers each run on 2 threads, not 4,
    and no frame thread outlives the last reader."""
    import io
    import threading

    from xorweights.formats.frame_stream import FrameReader, Span, write_frames

    out, base = _finetune_like(1 << 22, seed=6)  # 4 frames of 2 MiB
    sink = io.BytesIO()
    write_frames(io.BytesIO(out), io.BytesIO(base), [Span(len(out), PLANES, 2, "F16")], sink, workers=2)

    def frame_threads() -> int:
        return sum(t.name.startswith("frames") for t in threading.enumerate())

    assert frame_threads() == 0
    readers = [
        FrameReader(io.BytesIO(sink.getvalue()), io.BytesIO(base), f"p{i}", workers=2) for i in range(2)
    ]
    got = [bytearray(), bytearray()]
    chunk = bytearray(4 << 20)  # 2 frames a read: each reader has 2 frames in flight at once
    while True:
        sizes = []
        for i, r in enumerate(readers):  # in turns: both readers open at once
            sizes.append(r.readinto(chunk))
            got[i] += chunk[: sizes[-1]]
        assert 0 < frame_threads() <= 2 or not any(sizes)
        if not any(sizes):
            break
    assert got[0] == got[1] == out
    for r in readers:
        r.close()
    assert frame_threads() == 0
