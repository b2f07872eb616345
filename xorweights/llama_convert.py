"""Rebuild the pinned conversion's checkpoint files from Meta's original LLaMA checkpoint.

Each converted tensor is computed on its own from memory-mapped Meta shards, as the conversion
script computes it: q and k concatenated over model-parallel shards and permuted for rotary,
v/gate/up/lm_head concatenated on dim 0, o/down/embeddings on dim 1, norms from shard 0, and
the rotary `inv_freq` in float32. Shard files are then written byte for byte as torch 1.13.1
`torch.save` wrote them (see `torch_save`). Memory is bounded by the largest single tensor.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import FormatError, MissingFileError
from .llama_layout import LlamaLayout
from .torch_save import TensorSpec, record_order, save_state_dict
from .torch_zip import TorchCheckpoint, read_checkpoint

logger = logging.getLogger(__name__)

_NUMPY = {"F16": np.float16, "F32": np.float32, "BF16": np.uint16}


def inv_freq(head_dim: int) -> np.ndarray:
    """The rotary `inv_freq` buffer as the conversion saved it: float32 holding float16-rounded
    values (loading with `torch_dtype=float16` cast the buffer to half, and it was put back into
    its float32 slot). Identical to torch 2.0.1's for head sizes 4 to 256 (tested)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    exact = np.float32(1) / np.power(10000.0, exponent.astype(np.float64)).astype(np.float32)
    return exact.astype(np.float16).astype(np.float32)


@dataclass
class MetaCheckpoint:
    """Meta's original folder: `params.json` and `consolidated.NN.pth` model-parallel shards."""

    folder: Path
    params: dict
    shards: list[TorchCheckpoint]

    @classmethod
    def open(cls, folder: os.PathLike[str] | str) -> MetaCheckpoint:
        folder = Path(folder)
        params_path = folder / "params.json"
        if not params_path.is_file():
            raise MissingFileError(f"{folder}: no params.json (not a Meta LLaMA folder)", path=params_path)
        try:
            params = json.loads(params_path.read_text())
        except ValueError as e:
            raise FormatError(f"{params_path}: invalid JSON ({e})", path=params_path) from None
        names = sorted(p.name for p in folder.iterdir() if re.fullmatch(r"consolidated\.\d\d\.pth", p.name))
        if not names or names != [f"consolidated.{i:02d}.pth" for i in range(len(names))]:
            raise FormatError(
                f"{folder}: expected consolidated.00.pth ... in sequence, found {names}", path=folder
            )
        return cls(folder, params, [read_checkpoint(folder / n) for n in names])

    def layout(self) -> LlamaLayout:
        return LlamaLayout.from_params(self.params, num_shards=len(self.shards))

    def tensor(self, shard: int, name: str) -> np.ndarray:
        """A Meta tensor as a read-only memory map (no copy)."""
        ck = self.shards[shard]
        ref = ck.tensors.get(name)
        if ref is None:
            raise FormatError(f"{ck.path}: missing tensor {name!r}", path=ck.path)
        begin, end = ck.byte_range(name)
        dtype = _NUMPY[ref.dtype]
        return np.memmap(ck.path, dtype=dtype, mode="r", offset=begin, shape=ref.shape)


def converted_tensors(meta: MetaCheckpoint) -> dict[str, Callable[[], np.ndarray]]:
    """Every converted tensor, by name, as a function computing it (one at a time)."""
    layout = meta.layout()
    n, d, heads = len(meta.shards), layout.dim, layout.n_heads
    hd = d // heads

    def cat(name: str, axis: int) -> np.ndarray:
        parts = [meta.tensor(i, name) for i in range(n)]
        return parts[0] if n == 1 else np.concatenate(parts, axis=axis)

    def permute(w: np.ndarray) -> np.ndarray:
        return w.reshape(heads, hd // 2, 2, d).transpose(0, 2, 1, 3).reshape(d, d)

    out: dict[str, Callable[[], np.ndarray]] = {
        "model.embed_tokens.weight": lambda: cat("tok_embeddings.weight", 1),
        "model.norm.weight": lambda: meta.tensor(0, "norm.weight"),
        "lm_head.weight": lambda: cat("output.weight", 0),
    }
    freq = inv_freq(hd)
    for i in range(layout.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."

        def bind(fn: Callable[..., np.ndarray], *args: object) -> Callable[[], np.ndarray]:
            return lambda: fn(*args)

        out[f"{dst}self_attn.q_proj.weight"] = bind(lambda s: permute(cat(s, 0)), f"{src}attention.wq.weight")
        out[f"{dst}self_attn.k_proj.weight"] = bind(lambda s: permute(cat(s, 0)), f"{src}attention.wk.weight")
        out[f"{dst}self_attn.v_proj.weight"] = bind(cat, f"{src}attention.wv.weight", 0)
        out[f"{dst}self_attn.o_proj.weight"] = bind(cat, f"{src}attention.wo.weight", 1)
        out[f"{dst}self_attn.rotary_emb.inv_freq"] = bind(lambda: freq)
        out[f"{dst}mlp.gate_proj.weight"] = bind(cat, f"{src}feed_forward.w1.weight", 0)
        out[f"{dst}mlp.down_proj.weight"] = bind(cat, f"{src}feed_forward.w2.weight", 1)
        out[f"{dst}mlp.up_proj.weight"] = bind(cat, f"{src}feed_forward.w3.weight", 0)
        out[f"{dst}input_layernorm.weight"] = bind(meta.tensor, 0, f"{src}attention_norm.weight")
        out[f"{dst}post_attention_layernorm.weight"] = bind(meta.tensor, 0, f"{src}ffn_norm.weight")
    return out


def write_shards(meta: MetaCheckpoint, open_out: Callable[[str], BinaryIO]) -> list[str]:
    """Write every converted shard file through `open_out(file_name)`; returns the names."""
    layout = meta.layout()
    compute = converted_tensors(meta)
    dtypes = {name: (dt, shape) for name, dt, shape in layout.tensors()}
    names = layout.shard_names()
    for fname, tensor_names in zip(names, layout.shards(), strict=True):
        specs = [TensorSpec(t, dtypes[t][0], dtypes[t][1]) for t in tensor_names]

        def data(specs: list[TensorSpec] = specs) -> Iterator[tuple[str, list[memoryview]]]:
            for spec in record_order(specs):
                arr = np.ascontiguousarray(compute[spec.name]())
                if arr.shape != spec.shape or arr.dtype != _NUMPY[spec.dtype]:
                    raise FormatError(
                        f"{meta.folder}: {spec.name} came out {arr.dtype}{arr.shape}, "
                        f"expected {spec.dtype}{spec.shape}",
                        path=meta.folder,
                    )
                yield spec.name, [memoryview(arr).cast("B")]

        with open_out(fname) as f:
            save_state_dict(f, Path(fname).stem, specs, data())
    return names
