"""`torch_column_mean` against torch's own CPU `mean(dim=0)`, bit for bit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from xorweights.delta.torch_mean import column_paths, torch_column_mean


@pytest.fixture
def threads() -> Iterator[None]:
    """Restore torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _fp16_upcast(shape: tuple[int, int], seed: int, scale: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float16).astype(np.float32)


def _wide_range(shape: tuple[int, int], seed: int) -> np.ndarray:
    """fp16 values from subnormals up to ~32768, both signs."""
    rng = np.random.default_rng(seed)
    mag = np.exp2(rng.uniform(-24, 15, shape)).astype(np.float32)
    return np.where(rng.random(shape) < 0.5, -mag, mag).astype(np.float16).astype(np.float32)


def _torch_mean(a: np.ndarray, num_threads: int) -> np.ndarray:
    torch.set_num_threads(num_threads)
    return torch.from_numpy(a).mean(dim=0).numpy()


def _assert_same_bits(a: np.ndarray, num_threads: int) -> None:
    expected = _torch_mean(a, num_threads)
    got = torch_column_mean(a, num_threads=num_threads)
    assert got.dtype == np.float32 and got.shape == expected.shape
    bad = np.flatnonzero(got.view(np.uint32) != expected.view(np.uint32))
    assert bad.size == 0, f"{bad.size} columns differ, first {bad[:5]}"


SHAPES = [(32000, 64), (32001, 48), (7, 5), (1, 3), (100003, 17), (32000, 37), (4099, 95), (2, 9), (33, 1)]


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch_on_fp16_upcast_data(shape: tuple[int, int], num_threads: int, threads: None) -> None:
    _assert_same_bits(_fp16_upcast(shape, seed=shape[0] + shape[1]), num_threads)


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("shape", [(32000, 40), (5003, 7), (70001, 3)])
def test_matches_torch_on_a_wide_dynamic_range(
    shape: tuple[int, int], num_threads: int, threads: None
) -> None:
    _assert_same_bits(_wide_range(shape, seed=7), num_threads)


@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_single_column_is_summed_in_two_passes_when_threaded(num_threads: int, threads: None) -> None:
    _assert_same_bits(_fp16_upcast((100000, 1), seed=3, scale=1.0), num_threads)


def test_thread_count_matters_for_some_column_counts(threads: None) -> None:
    # 8 threads give the 5 last of 37 columns a chunk of their own, summed differently.
    a = _fp16_upcast((1000, 37), seed=11, scale=1.0)
    assert (_torch_mean(a, 8).view(np.uint32) != _torch_mean(a, 1).view(np.uint32)).any()
    _assert_same_bits(a, 8)
    _assert_same_bits(a, 1)


def test_llama_width_is_thread_independent(threads: None) -> None:
    a = _fp16_upcast((4001, 4096), seed=5)
    for n in (1, 2, 5):
        _assert_same_bits(a, n)


def test_avx512_width_makes_llama_widths_thread_dependent() -> None:
    # Only torch <= 2.0 with ATEN_CPU_CAPABILITY=avx512 ran a 16-float sum kernel (checked there).
    assert column_paths(32000, 4096, 3, vector_width=16) == [
        (0, 1344, True),
        (1344, 2688, True),
        (2688, 2720, False),
        (2720, 4064, True),
        (4064, 4096, False),
    ]
    assert all(path_a for _, _, path_a in column_paths(32000, 4096, 3))


def test_float16_and_memmap_inputs(tmp_path: Path, threads: None) -> None:
    a16 = _fp16_upcast((3000, 70), seed=9).astype(np.float16)
    expected = _torch_mean(a16.astype(np.float32), 1).view(np.uint32)
    assert (torch_column_mean(a16).view(np.uint32) == expected).all()
    path = tmp_path / "embed.bin"
    a16.astype(np.float32).tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=a16.shape)
    assert (torch_column_mean(mm).view(np.uint32) == expected).all()


def test_numpy_mean_differs_on_an_embedding_sized_input(threads: None) -> None:
    a = _fp16_upcast((32000, 256), seed=1)
    expected = _torch_mean(a, 1).view(np.uint32)
    assert (a.mean(axis=0).view(np.uint32) != expected).sum() > 10
    assert (torch_column_mean(a).view(np.uint32) == expected).all()


def test_rejects_inputs_torch_would_sum_differently() -> None:
    with pytest.raises(ValueError):
        torch_column_mean(np.zeros((4, 4), np.float32).T)
    with pytest.raises(ValueError):
        torch_column_mean(np.zeros(4, np.float32))
    with pytest.raises(TypeError):
        torch_column_mean(np.zeros((4, 4), np.float64))
