"""The chunked XOR pass: the legacy length rule at every size and chunk boundary, fused hashing."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

from tests.conftest import random_bytes
from xorweights._cancel import Cancelled
from xorweights.pipeline.engine import StreamError, xor_stream


def legacy_rule(data: bytes, base: bytes) -> bytes:
    """Output = data XOR base, base zero-padded or truncated to the data's length."""
    padded = (base + bytes(len(data)))[: len(data)]
    return (np.frombuffer(data, np.uint8) ^ np.frombuffer(padded, np.uint8)).tobytes()


@pytest.mark.parametrize("chunk", [1, 7, 8, 64, 4096])
@pytest.mark.parametrize(
    ("n_data", "n_base"),
    [
        (0, 0),
        (0, 5),
        (5, 0),
        (1, 1),
        (63, 63),
        (64, 64),
        (65, 64),
        (64, 65),
        (1000, 17),
        (17, 1000),
        (4095, 4097),
        (4097, 4095),
        (12_345, 12_345),
    ],
)
def test_xor_follows_the_legacy_length_rule(chunk: int, n_data: int, n_base: int) -> None:
    data, base = random_bytes(n_data, 1), random_bytes(n_base, 2)
    out = io.BytesIO()
    stats = xor_stream(
        io.BytesIO(data),
        io.BytesIO(base),
        out,
        chunk_size=chunk,
        hashes={"data": ["md5"], "base": ["md5", "sha256"], "out": ["sha256"]},
    )
    expected = legacy_rule(data, base)
    assert out.getvalue() == expected
    assert stats.size == n_data
    # The base digest covers the whole base, also past the data's end.
    assert stats.digests["base"]["md5"] == hashlib.md5(base).hexdigest()
    assert stats.digests["base"]["sha256"] == hashlib.sha256(base).hexdigest()
    assert stats.digests["data"]["md5"] == hashlib.md5(data).hexdigest()
    assert stats.digests["out"]["sha256"] == hashlib.sha256(expected).hexdigest()
    assert stats.base_read == n_base


def test_base_tail_is_not_read_when_its_digest_is_not_wanted() -> None:
    base = io.BytesIO(random_bytes(10_000, 3))
    stats = xor_stream(io.BytesIO(random_bytes(100, 4)), base, io.BytesIO(), chunk_size=64)
    assert stats.base_read == 100
    assert base.tell() == 100


def test_no_base_copies_the_data() -> None:
    data = random_bytes(10_001, 5)
    out = io.BytesIO()
    stats = xor_stream(io.BytesIO(data), None, out, chunk_size=4096, hashes={"out": ["md5"]})
    assert out.getvalue() == data
    assert stats.digests["out"]["md5"] == hashlib.md5(data).hexdigest()


def test_xor_is_its_own_inverse() -> None:
    data, base = random_bytes(5000, 6), random_bytes(3000, 7)
    payload = io.BytesIO()
    xor_stream(io.BytesIO(data), io.BytesIO(base), payload, chunk_size=512)
    back = io.BytesIO()
    xor_stream(io.BytesIO(payload.getvalue()), io.BytesIO(base), back, chunk_size=512)
    assert back.getvalue() == data


class _Trickle(io.RawIOBase):
    """A stream that returns at most 3 bytes per read, like a slow pipe or a gzip member edge."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        chunk = self._b.read(min(3, len(b)))
        b[: len(chunk)] = chunk
        return len(chunk)


def test_short_reads_are_filled() -> None:
    data, base = random_bytes(1000, 8), random_bytes(700, 9)
    out = io.BytesIO()
    xor_stream(_Trickle(data), _Trickle(base), out, chunk_size=64)  # type: ignore[arg-type]
    assert out.getvalue() == legacy_rule(data, base)


def test_should_stop_cancels_between_chunks() -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    out = io.BytesIO()
    with pytest.raises(Cancelled):
        xor_stream(io.BytesIO(random_bytes(1000, 1)), None, out, chunk_size=100, should_stop=stop)
    assert len(out.getvalue()) == 200


class _Counting(io.BytesIO):
    """Counts the bytes handed out, to prove each input byte is read once."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.handed = 0

    def readinto(self, b) -> int:  # type: ignore[override]
        n = super().readinto(b)
        self.handed += n
        return n


@pytest.mark.parametrize("depth", [2, 3, 8])
def test_one_pass_reads_each_byte_once(depth: int) -> None:
    data, base = _Counting(random_bytes(10_000, 1)), _Counting(random_bytes(13_000, 2))
    out = io.BytesIO()
    stats = xor_stream(
        data,
        base,
        out,
        chunk_size=256,
        depth=depth,
        hashes={"data": ["sha256"], "base": ["md5", "sha256"], "out": ["md5", "sha256"]},
    )
    assert data.handed == 10_000 and base.handed == 13_000
    assert out.getvalue() == legacy_rule(data.getvalue(), base.getvalue())
    assert stats.digests["out"]["md5"] == hashlib.md5(out.getvalue()).hexdigest()


class _FailingSink(io.BytesIO):
    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.writes = 0
        self.fail_after = fail_after

    def write(self, b) -> int:  # type: ignore[override]
        self.writes += 1
        if self.writes > self.fail_after:
            raise OSError(28, "No space left on device")
        return super().write(b)


def test_a_failing_writer_stops_the_pass_without_hanging() -> None:
    sink = _FailingSink(fail_after=3)
    with pytest.raises(StreamError, match="No space left") as info:
        xor_stream(
            io.BytesIO(random_bytes(100_000, 1)),
            io.BytesIO(random_bytes(100_000, 2)),
            sink,
            chunk_size=1000,
            depth=2,
            hashes={"out": ["md5"]},
        )
    assert sink.writes == 4  # it stopped at the first failure, not after the whole input
    assert info.value.role == "out" and info.value.op == "write" and info.value.cause.errno == 28


def test_progress_counts_every_output_byte() -> None:
    seen: list[int] = []
    xor_stream(
        io.BytesIO(random_bytes(10_001, 1)), None, io.BytesIO(), chunk_size=1000, on_progress=seen.append
    )
    assert sum(seen) == 10_001 and len(seen) == 11
