"""The recipes of additive-delta releases: the arithmetic each peer script performed, exactly.

A recipe is one registry entry (`register`): data saying in which dtype base and delta are added,
what the output is stored as, and what the base contributes where the delta's tensor is larger
(grown vocabulary rows), plus at most one function where its arithmetic (`combine`) or its delta's
layout (`open_delta`: Koala's EasyLM file) differs. Nothing the peer computed is approximated, and
torch is never needed (the CPU's fp16 add and fp32-add-then-round agree bit for bit on every pair).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._registry import Registry
from ..tensors.dtypes import NUMPY_DTYPES
from ..tensors.store import cast

if TYPE_CHECKING:
    from ..tensors.store import TensorStore

Grown = Literal["refuse", "zero", "delta", "mean"]
"""Where the delta's tensor extends past the base's: `refuse` (shapes must match), `zero` (the
base was resized with zero rows, then added), `delta` (the delta's own values, unchanged), `mean`
(the base was resized with rows equal to the mean of its rows, computed as torch computes it)."""

#: The tensors a grown vocabulary changes (rows), in HF LLaMA names.
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


@dataclass(frozen=True)
class Recipe:
    """How one family of releases was made and is recovered."""

    name: str
    peer: str
    """The peer script whose arithmetic this is."""
    compute: str
    """The dtype the addition happens in: `F16` (rounded as torch's fp16 add) or `F32`."""
    output: str
    """The dtype of the recovered tensors."""
    grown: Grown
    delta_only: tuple[str, ...] = ()
    """Tensors that only the delta holds, taken as they are (LLaVA's projector)."""
    base_extra_ok: bool = False
    """Base tensors the delta lacks are ignored (else the peer refused them)."""
    sum_file: str | None = None
    """A file of the delta folder that may hold the published sum of all recovered weights."""
    combine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    """The arithmetic, where it is not `base + delta`: `(base, delta)` in `compute` to the output dtype."""
    open_delta: Callable[[Path, Path], TensorStore] | None = None
    """How the delta is read, where it is not an HF folder: `(delta path, base folder)` to its tensors
    in HF names and layout; the delta may then be one file."""
    from_repo: str | None = None
    """Why a repo id cannot be recovered as it is (None: it can), with what to do instead."""

    def add(self, base: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """`base + delta` as the peer computed it, in the output dtype (both already in `compute`)."""
        if self.combine is not None:
            return self.combine(base, delta)
        if self.compute == "F16":
            return fp16_add(base, delta)
        with np.errstate(invalid="ignore", over="ignore"):
            total = np.add(base, delta, dtype=np.float32)
        return cast(total, "F32", self.output) if self.output != "F32" else total

    def taken(self, delta: np.ndarray) -> np.ndarray:
        """A delta value the base does not touch, in the output dtype."""
        if self.compute == self.output:
            return delta
        return cast(np.ascontiguousarray(delta), self.compute, self.output)

    @property
    def numpy_output(self) -> Any:
        return NUMPY_DTYPES[self.output]


#: Whether fp16 additions run on torch's CPU kernel (5x faster than numpy's casts here, and the
#: peers' own operation): None decides by whether torch imports; tests set False for numpy's path.
USE_TORCH: bool | None = None
_torch_module: Any = None
_torch_lock = threading.Lock()


def torch_or_none() -> Any:
    """torch, imported once (it is optional), or None where it is not installed or not wanted."""
    global _torch_module
    if USE_TORCH is False:
        return None
    with _torch_lock:
        if _torch_module is None:
            try:
                import torch
            except ImportError:
                torch = False  # type: ignore[assignment]
            _torch_module = torch
    return _torch_module or None


def prefetch_torch() -> None:
    """Begin importing torch (about a second) on a thread of its own, so that the plan's checks and
    the first blocks' reads go on meanwhile; `torch_or_none` then waits for it. Not a daemon: a
    process never ends in the middle of an import."""
    if USE_TORCH is False or _torch_module is not None:
        return
    if "torch" in sys.modules:  # imported already: nothing to wait for
        torch_or_none()
        return
    threading.Thread(target=torch_or_none, name="xorweights-import-torch").start()


def fp16_add(base: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The IEEE fp16 sum, element by element: torch's CPU add when torch is there, else exactly
    the same bits from numpy (fp32 sum rounded to fp16: 24 bits are enough for no double rounding)."""
    torch = torch_or_none()
    if torch is not None:
        out = np.empty(base.shape, np.float16)
        a, b = (_tensor_ready(x) for x in (base, delta))
        torch.add(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))
        return out
    wide = base.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, big sums are inf: as in torch
        np.add(wide, delta.astype(np.float32), out=wide)
        return wide.astype(np.float16)


def _tensor_ready(a: np.ndarray) -> np.ndarray:
    """`a` as torch takes it without a warning: contiguous fp16, writable (blocks read from files
    are; a read-only map of a Meta tensor is copied)."""
    a = np.ascontiguousarray(a, dtype=np.float16)
    return a if a.flags.writeable else a.copy()


RECIPES: Registry[Recipe] = Registry("recipe")
"""The recipe registry, by name (`register`)."""


def register(entry: Recipe) -> Recipe:
    """Add a recipe to the registry (the CLI's `--recipe` choices, `decode(recipe=...)`); a name
    registered already is an `InputError`."""
    return RECIPES.add(entry.name, entry)


def recipe(name: str) -> Recipe:
    """The recipe called `name` (`InputError` naming the known ones for another)."""
    return RECIPES.find(name)


for _entry in (
    Recipe("fastchat", "FastChat apply_delta (Vicuna v1.1, gorilla)", "F16", "F16", "refuse"),
    Recipe("fastchat-v0", "FastChat apply_delta, v0 era (Vicuna v0, StableVicuna)", "F16", "F16", "zero"),
    Recipe(
        "llava",
        "LLaVA apply_delta (LLaVA v0, LLaVA-Med)",
        "F16",
        "F16",
        "delta",
        delta_only=("model.mm_projector.weight", "model.mm_projector.bias"),
        base_extra_ok=True,
    ),
    Recipe(
        "alpaca",
        "Stanford Alpaca weight_diff.py (Alpaca, AlpacaFarm, WizardLM v1.0)",
        "F32",
        "F32",
        "mean",
        sum_file="model_sum.txt",
    ),
):
    register(_entry)
