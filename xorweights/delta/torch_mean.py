"""Bit-exact numpy port of torch's CPU ``Tensor.mean(dim=0)`` for 2-D float32 arrays.

Stanford Alpaca's ``weight_diff.py`` sets the new ``[PAD]`` embedding row to
``input_embeddings[:-1].mean(dim=0, keepdim=True)``; rebuilding the fine-tuned weights bit for
bit needs that row exactly, without importing torch. numpy's ``mean(axis=0)`` (a plain running
sum) differs from it.

What torch computes (ported from torch 2.x; checked against 2.0.1 and 2.13):

* aten/src/ATen/native/ReduceOps.cpp, ``mean_out``: on the CPU the mean is
  ``at::sum_out(...).div_(n)``: a float32 sum, then IEEE division by ``float(n)``.
* aten/src/ATen/native/cpu/SumKernel.cpp, ``cascade_sum``: summing the rows of a C-contiguous
  ``[n, C]`` array is an "outer" reduction, done column by column (SIMD lanes are independent)
  in one of two ways:

  - path A, ``multi_row_sum``: running sums of blocks of ``s = 2**max(4, ceil(log2 n) // 4)``
    rows; block sums run into a level-1 sum flushed into level 2 every ``s`` blocks, level 2
    into level 3 every ``s**2`` blocks; the result is ``((acc0 + acc1) + acc2) + acc3``;
  - path B, ``row_sum``: the rows are dealt into 4 streams (row ``i`` to stream ``i % 4``,
    ``n // 4`` rows each), path A sums each stream, the ``n % 4`` last rows are added to
    stream 0, then ``((s0 + s1) + s2) + s3``.

  ``vectorized_outer_sum`` takes path A for each run of 4 vectors (32 columns, the vector
  being 8 floats: AVX2, NEON or the default build) and path B for the rest; below 8 columns
  ``scalar_outer_sum`` takes path A for groups of 4 columns. Since torch 2.1 sum has no AVX512
  kernel; 1.12-2.0 ran AVX2 kernels unless ``ATEN_CPU_CAPABILITY=avx512`` (16-float vectors).
* aten/src/ATen/TensorIteratorReduce.cpp, ``parallel_dim_reduction``: with ``T > 1`` threads
  and ``n * C >= 32768``, the columns (never the rows) are split into ``ceil(C / T)``-column
  chunks whose bounds are rounded down to multiples of 32 (the last end stays ``C``), and each
  chunk is summed as above. With 8-float vectors the thread count matters only when ``C`` is
  not a multiple of 32 (LLaMA's 4096, 5120 and 6656 are), and then only from 5 threads on.
* A single column is a contiguous "inner" reduction (``vectorized_inner_sum``); with threads
  and ``n >= 32768`` it is a ``two_pass_reduction`` over row ranges.
"""

from __future__ import annotations

import numpy as np

_GRAIN = 32768  # at::internal::GRAIN_SIZE
_ROUND = 32  # float32 columns in 128 bytes: parallel_dim_reduction's chunk rounding
_BLOCK = 512  # columns per numpy work block (bounds the temporaries)


def _ceil_log2(x: int) -> int:
    """``at::native::utils::CeilLog2`` (1 for x <= 2)."""
    return 1 if x <= 2 else (x - 1).bit_length()


def _running_sum(v: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over axis 0, starting from +0."""
    acc = np.zeros(v.shape[1:], np.float32)
    for row in v:
        acc += row
    return acc


def _group_sums(v: np.ndarray, s: int) -> np.ndarray:
    """Running sums of each full group of ``s`` consecutive rows of ``v``."""
    g = v.shape[0] // s
    groups = v[: g * s].reshape(g, s, *v.shape[1:])
    acc = np.zeros((g, *v.shape[1:]), np.float32)
    for j in range(s):
        acc += groups[:, j]
    return acc


def _multi_row_sum(v: np.ndarray) -> np.ndarray:
    """Path A: torch's 4-level cascade sum over axis 0."""
    s = 1 << max(4, _ceil_log2(v.shape[0]) // 4)
    leftovers = []
    for _ in range(3):
        leftovers.append(_running_sum(v[v.shape[0] // s * s :]))
        v = _group_sums(v, s)
    acc = leftovers[0]
    acc += leftovers[1]
    acc += leftovers[2]
    acc += _running_sum(v)
    return acc


def _row_sum(v: np.ndarray) -> np.ndarray:
    """Path B: four interleaved cascade sums over axis 0, then combined."""
    q = v.shape[0] // 4
    parts = _multi_row_sum(v[: 4 * q].reshape(q, 4, *v.shape[1:]))
    acc = parts[0].copy()
    for row in v[4 * q :]:
        acc += row
    acc += parts[1]
    acc += parts[2]
    acc += parts[3]
    return acc


def _inner_sum(x: np.ndarray, vec: int) -> np.float32:
    """Sum of one contiguous float32 vector (``vectorized_inner_sum``)."""
    n = x.shape[0]
    if n < vec:
        return _row_sum(x[:, None])[0]
    m = n // vec
    lanes = _row_sum(x[: m * vec].reshape(m, vec))
    acc = np.float32(0)
    for value in (*x[m * vec :], *lanes):
        acc = np.float32(acc + value)
    return acc


def _single_column_sum(x: np.ndarray, num_threads: int, vec: int) -> np.float32:
    """Sum of an ``[n, 1]`` array's column, two-pass when torch would thread it."""
    n = x.shape[0]
    if num_threads <= 1 or n < _GRAIN:
        return _inner_sum(x, vec)
    used = min(num_threads, -(-n // _GRAIN))
    size = -(-n // used)
    partials = np.zeros(num_threads, np.float32)
    for k in range(used):
        if k * size < n:
            partials[k] += _inner_sum(x[k * size : (k + 1) * size], vec)
    return _inner_sum(partials, vec)


def _thread_chunks(n: int, c: int, num_threads: int) -> list[tuple[int, int]]:
    """The column ranges torch's threads reduce (``parallel_dim_reduction``)."""
    if num_threads <= 1 or c <= 1 or n * c < _GRAIN:
        return [(0, c)]
    used = min(num_threads, c)
    size = -(-c // used)
    chunks = []
    for k in range(used):
        begin, end = k * size, min(c, (k + 1) * size)
        if begin >= c:
            break
        begin -= begin % _ROUND
        if end != c:
            end -= end % _ROUND
        if begin < end:
            chunks.append((begin, end))
    return chunks


def column_paths(n: int, c: int, num_threads: int = 1, vector_width: int = 8) -> list[tuple[int, int, bool]]:
    """``(start, stop, path_a)`` column runs: which columns torch sums by path A or B."""
    runs = []
    for begin, end in _thread_chunks(n, c, num_threads):
        group = 4 * vector_width if end - begin >= vector_width else 4
        mid = begin + (end - begin) // group * group
        runs += [(begin, mid, True), (mid, end, False)]
    return [run for run in runs if run[0] < run[1]]


def torch_column_mean(a: np.ndarray, *, num_threads: int = 1, vector_width: int = 8) -> np.ndarray:
    """Mean over axis 0 of a 2-D C-contiguous float32 array, bit for bit as
    `torch.from_numpy(a).mean(dim=0)` computes it on the CPU.

    ``num_threads`` is ``torch.get_num_threads()`` of the run to match; it matters only for
    some column counts that are not multiples of 32 (with 5+ threads) and for one column of
    32768+ rows. ``vector_width`` is 16 only for an AVX512 sum
    kernel (torch 1.12-2.0 run with ``ATEN_CPU_CAPABILITY=avx512``); the thread count then
    matters for LLaMA widths too. A float16 input is upcast exactly first (the
    result is then that of ``torch.from_numpy(a).float().mean(dim=0)``), one column block at
    a time, so a ``np.memmap`` is never copied whole.
    """
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {a.shape}")
    if a.dtype not in (np.float32, np.float16):
        raise TypeError(f"expected float32 or float16, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError("expected a C-contiguous array (torch sums other layouts differently)")
    n, c = a.shape
    sums = np.zeros(c, np.float32)  # torch fills the output with 0, then adds each sum
    if c == 1:
        sums[0] += _single_column_sum(np.asarray(a[:, 0], dtype=np.float32), num_threads, vector_width)
    else:
        for start, stop, path_a in column_paths(n, c, num_threads, vector_width):
            for lo in range(start, stop, _BLOCK):
                hi = min(stop, lo + _BLOCK)
                block = np.asarray(a[:, lo:hi], dtype=np.float32)
                sums[lo:hi] += _multi_row_sum(block) if path_a else _row_sum(block)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / np.float32(n)
