"""The EasyLM streaming-checkpoint reader against hostile and half-made files: a result or one
typed line naming the file, never another exception, never a read past the file."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest

from xorweights.errors import FormatError
from xorweights.tensors.easylm_msgpack import read_streaming_checkpoint


def record(key: list[str], shape: list[int], dtype: str, raw: bytes, ext_type: int = 1) -> bytes:
    inner = msgpack.packb((shape, dtype, raw), use_bin_type=True)
    return msgpack.packb((key, msgpack.packb(msgpack.ExtType(ext_type, inner))), use_bin_type=True)


def good() -> bytes:
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    b = np.ones(5, dtype=np.float32)
    return record(["transformer", "wte", "embedding"], [3, 4], "float16", a.tobytes()) + record(
        ["transformer", "ln_f", "kernel"], [5], "float32", b.tobytes()
    )


def test_a_valid_file_is_indexed_in_place(tmp_path: Path) -> None:
    path = tmp_path / "diff"
    path.write_bytes(good())
    tensors = read_streaming_checkpoint(path)
    assert [(t.key, t.dtype, t.shape) for t in tensors] == [
        (("transformer", "wte", "embedding"), "F16", (3, 4)),
        (("transformer", "ln_f", "kernel"), "F32", (5,)),
    ]
    data = path.read_bytes()
    first = tensors[0]
    got = np.frombuffer(data[first.offset : first.offset + first.nbytes], np.float16)
    assert got.tolist() == list(range(12))


HOSTILE = {
    "empty": b"",
    "truncated": good()[:-3],
    "not an array": msgpack.packb({"a": 1}),
    "three items": msgpack.packb((["k"], b"x", 1), use_bin_type=True),
    "wrong ext type": record(["k"], [2], "float16", b"\0" * 4, ext_type=2),
    "unknown dtype": record(["k"], [2], "int64", b"\0" * 16),
    "short data": record(["k"], [3], "float16", b"\0" * 4),
    "key twice": record(["k"], [1], "float16", b"\0\0") * 2,
    "chunked array": msgpack.packb(
        (["k"], msgpack.packb({"__msgpack_chunked_array__": True, "shape": {}, "chunks": {}})),
        use_bin_type=True,
    ),
    "huge declared bin": b"\x92\x91\xa1k\xc6" + struct.pack(">I", 2**31) + b"\xc9",
    "too many dims": record(["k"], [1] * 9, "float16", b"\0\0"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_are_one_line_format_errors(tmp_path: Path, case: str) -> None:
    path = tmp_path / "diff"
    path.write_bytes(HOSTILE[case])
    with pytest.raises(FormatError) as e:
        read_streaming_checkpoint(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_mutated_files_get_a_result_or_a_format_error(tmp_path: Path) -> None:
    rng = random.Random(0)
    seed = good()
    path = tmp_path / "diff"
    for _ in range(400):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.6:
                data[i] = rng.randrange(256)
            elif choice < 0.8:
                del data[i : i + rng.randint(1, 8)]
            else:
                data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        path.write_bytes(bytes(data))
        try:
            for t in read_streaming_checkpoint(path):
                assert t.offset + t.nbytes <= len(data)
        except FormatError as e:
            assert "\n" not in str(e)
