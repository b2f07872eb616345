"""One output tensor of a delta recovery, computed block by block from memory-mapped inputs.

A tensor is seen as 2-D (rows, the rest); a block is a run of rows. The base covers the top-left
`rows x cols` of the delta's tensor; outside it, the recipe says what the base contributes. Only a
block (and, for a tensor that has to be computed, such as a Meta shard's permuted weight, that
one base tensor) is ever in memory.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._cancel import check as check_cancelled
from ..errors import FormatError
from ..tensors.dtypes import NUMPY_DTYPES
from ..tensors.spec import TensorSpec
from ..tensors.store import StoredTensor, cast, tensor_array
from .checks import Pair
from .recipes import Recipe

#: Output bytes per block.
BLOCK_BYTES = 8 << 20


def _as_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    if not shape:
        return 1, 1
    return shape[0], math.prod(shape[1:])


class TensorPlan:
    """How one output tensor is made; `block(r0, r1)` gives its rows `r0:r1` in the output dtype."""

    def __init__(
        self, pair: Pair, recipe: Recipe, mean_rows: Callable[[np.ndarray, str], np.ndarray]
    ) -> None:
        self.pair = pair
        self.recipe = recipe
        self.spec = TensorSpec(pair.name, recipe.output, pair.delta.shape)
        self.rows, self.cols = _as_2d(pair.delta.shape)
        self.base_rows, self.base_cols = _as_2d(pair.base.shape) if pair.base is not None else (0, 0)
        self._mean_rows = mean_rows
        self._lock = threading.Lock()
        self._delta = Rows(pair.delta, self.rows, self.cols)
        self._base = Rows(pair.base, self.base_rows, self.base_cols) if pair.base is not None else None
        self._mean: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.pair.name

    def blocks(self) -> list[tuple[int, int]]:
        """Row ranges of about `BLOCK_BYTES` of output each (one, for an empty tensor)."""
        per_row = max(1, self.cols * 4)
        step = max(1, BLOCK_BYTES // per_row)
        return [(r, min(r + step, self.rows)) for r in range(0, self.rows, step)] or [(0, 0)]

    def _grown_base(self) -> np.ndarray:
        """The base's row for the rows it lacks (`mean`: the mean of its rows, as torch computes it)."""
        with self._lock:
            if self._mean is None:
                assert self._base is not None and self.pair.base is not None
                self._mean = self._mean_rows(self._base.whole(), self.pair.base.dtype)
            return self._mean

    def block(self, r0: int, r1: int) -> np.ndarray:
        """Rows `r0:r1` of the output tensor, C-contiguous, in the output dtype."""
        check_cancelled()
        recipe, compute = self.recipe, self.recipe.compute
        d = cast(self._delta.get(r0, r1), self.pair.delta.dtype, compute)
        if self._base is None or self.pair.base is None:
            return np.ascontiguousarray(recipe.taken(d))
        base_dtype = self.pair.base.dtype
        top = max(0, min(r1, self.base_rows) - r0)
        bc = self.base_cols
        if top == r1 - r0 and bc == self.cols:
            return np.ascontiguousarray(recipe.add(cast(self._base.get(r0, r1), base_dtype, compute), d))
        out = np.empty((r1 - r0, self.cols), dtype=recipe.numpy_output)
        if top:
            b = cast(self._base.get(r0, r0 + top), base_dtype, compute)
            out[:top, :bc] = recipe.add(b, np.ascontiguousarray(d[:top, :bc]))
            if bc < self.cols:  # columns only the delta has (top-left recipes)
                out[:top, bc:] = recipe.taken(np.ascontiguousarray(d[:top, bc:]))
        if top < r1 - r0:
            out[top:] = self._grown(d[top:])
        return out

    def _grown(self, d: np.ndarray) -> np.ndarray:
        """Output rows past the base's, as the recipe says."""
        recipe = self.recipe
        d = np.ascontiguousarray(d)
        if recipe.grown == "delta":
            return recipe.taken(d)
        if recipe.grown == "zero":
            return recipe.add(np.zeros_like(d), d)
        if recipe.grown == "mean":
            row = self._grown_base()
            return recipe.add(np.broadcast_to(row.astype(d.dtype), d.shape), d)
        raise AssertionError(f"{self.name}: rows past the base's under recipe {recipe.name}")

    def release(self) -> None:
        """Drop what was computed for the tensor (it is written)."""
        self._delta.release()
        if self._base is not None:
            self._base.release()
        with self._lock:
            self._mean = None


class Rows:
    """Rows of one stored tensor seen as 2-D: read from its file block by block (no mapping stays
    resident), or sliced from the tensor computed once (Meta's permuted or concatenated weights)."""

    def __init__(self, tensor: StoredTensor, rows: int, cols: int) -> None:
        self.tensor, self.rows, self.cols = tensor, rows, cols
        self._lock = threading.Lock()
        self._array: np.ndarray | None = None

    def whole(self) -> np.ndarray:
        """The whole tensor (mapped, or computed)."""
        return tensor_array(self.tensor).reshape(self.rows, self.cols)

    def get(self, r0: int, r1: int) -> np.ndarray:
        t = self.tensor
        if t.begin is None:
            with self._lock:
                if self._array is None:
                    self._array = self.whole()
                return self._array[r0:r1]
        out = np.empty((r1 - r0, self.cols), dtype=NUMPY_DTYPES[t.dtype])
        if not out.size:
            return out
        view = memoryview(out.reshape(-1)).cast("B")
        with open(t.source, "rb", buffering=0) as f:
            f.seek(t.begin + r0 * self.cols * out.itemsize)
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise FormatError(f"{t.source}: file ends inside tensor {t.name}", path=t.source)
                done += n
        return out

    def release(self) -> None:
        with self._lock:
            self._array = None


@dataclass
class TensorResult:
    """What writing one tensor proved: its digest, and its sum when asked."""

    spec: TensorSpec
    sha256: str
    total: float | None = None


def stream_blocks(
    plans: list[TensorPlan], workers: int, *, window: int | None = None
) -> Iterator[tuple[TensorPlan, np.ndarray | None]]:
    """Every block of `plans`, in order, computed up to `window` blocks ahead on `workers` threads;
    after a tensor's last block, `(plan, None)`."""
    tasks = [(p, r0, r1) for p in plans for r0, r1 in p.blocks()]
    ahead = window or 2 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xorweights-delta") as pool:
        pending: list[tuple[TensorPlan, bool, Future[Any]]] = []
        it = iter(enumerate(tasks))
        try:
            while True:
                while len(pending) < ahead:
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    i, (p, r0, r1) = nxt
                    last = i + 1 == len(tasks) or tasks[i + 1][0] is not p
                    pending.append((p, last, pool.submit(p.block, r0, r1)))
                if not pending:
                    return
                p, last, fut = pending.pop(0)
                yield p, fut.result()
                if last:
                    p.release()
                    yield p, None
        finally:
            for _, _, fut in pending:
                fut.cancel()
