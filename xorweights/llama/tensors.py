"""Tensors of a model folder in any form, Meta's original included (seen through the pinned
conversion, in HF names and layout)."""

from __future__ import annotations

import os
from pathlib import Path

from ..outfolder.paths import is_regular
from ..tensors.store import StoredTensor, TensorStore
from .convert import open_base


def is_meta(folder: Path) -> bool:
    """Whether `folder` holds Meta's original checkpoint (`params.json`, `consolidated.NN.pth`)."""
    return is_regular(folder / "params.json") and any(folder.glob("consolidated.*.pth"))


def open_tensors(folder: os.PathLike[str] | str) -> TensorStore:
    """`TensorStore.open`, and for Meta's original the converted tensors, computed when read.

    Raises:
        What `TensorStore.open` raises; `FormatError` for an unreadable Meta checkpoint.
    """
    folder = Path(folder)
    if not folder.is_dir() or not is_meta(folder):
        return TensorStore.open(folder)
    layout, compute = open_base(folder)
    shapes = {n: (dt, shape) for n, dt, shape in layout.tensors()}
    found = {
        n: StoredTensor(n, shapes[n][0], tuple(shapes[n][1]), str(folder), compute=fn)
        for n, fn in compute.items()
    }
    files = sorted(folder.glob("consolidated.*.pth")) + [folder / "params.json"]
    return TensorStore(folder, found, "meta", files)
