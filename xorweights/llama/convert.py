"""Rebuild the pinned conversion's checkpoint files from Meta's original LLaMA checkpoint.

Each converted tensor is computed on its own from memory-mapped Meta shards, as the conversion
script computes it: q and k concatenated over model-parallel shards and permuted for rotary,
v/gate/up/lm_head concatenated on dim 0, o/down/embeddings on dim 1, norms from shard 0, and
the rotary `inv_freq` in float32. Shard files are then written byte for byte as torch 1.13.1
`torch.save` wrote them (see `torch_save`). Memory is bounded by the largest single tensor.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .. import _json
from .._json import MAX_JSON_FILE_BYTES
from ..errors import FormatError, MissingFileError
from ..outfolder.paths import check_regular_file, is_regular, read_bounded
from ..tensors.dtypes import NUMPY_DTYPES
from ..tensors.spec import TensorSpec
from ..tensors.store import StoredTensor, index_tensors
from ..tensors.torch_zip import TorchCheckpoint, read_checkpoint
from .layout import LlamaLayout
from .torch_save import record_order, save_state_dict

logger = logging.getLogger(__name__)

#: The dtypes LLaMA weights come in.
_LLAMA_DTYPES = ("F16", "F32", "BF16")


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
        if not is_regular(params_path):
            raise MissingFileError(f"{folder}: no params.json (not a Meta LLaMA folder)", path=params_path)
        raw = read_bounded(params_path, MAX_JSON_FILE_BYTES, "a params.json")
        params = _json.loads(raw, str(params_path))
        names = sorted(p.name for p in folder.iterdir() if re.fullmatch(r"consolidated\.\d\d\.pth", p.name))
        if not names or names != [f"consolidated.{i:02d}.pth" for i in range(len(names))]:
            raise FormatError(
                f"{folder}: expected consolidated.00.pth ... in sequence, found {names}", path=folder
            )
        for n in names:  # a FIFO would block the read
            check_regular_file(folder / n, folder)
        return cls(folder, params, [read_checkpoint(folder / n) for n in names])

    def layout(self) -> LlamaLayout:
        try:
            return LlamaLayout.from_params(self.params, num_shards=len(self.shards))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            where = self.folder / "params.json"
            raise FormatError(f"{where}: not LLaMA params ({type(e).__name__}: {e})", path=where) from None

    def tensor(self, shard: int, name: str) -> np.ndarray:
        """A Meta tensor as a read-only memory map (no copy)."""
        ck = self.shards[shard]
        ref = ck.tensors.get(name)
        if ref is None:
            raise FormatError(f"{ck.path}: missing tensor {name!r}", path=ck.path)
        begin, end = ck.byte_range(name)
        dtype = NUMPY_DTYPES[ref.dtype]
        return np.memmap(ck.path, dtype=dtype, mode="r", offset=begin, shape=ref.shape)


def rotary_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """A q or k weight of Meta's interleaved rotary layout in HF's half-split layout (the
    conversion's `permute`)."""
    d = w.shape[0]
    return np.ascontiguousarray(
        w.reshape(heads, d // heads // 2, 2, w.shape[1]).transpose(0, 2, 1, 3).reshape(d, -1)
    )


def converted_tensors(meta: MetaCheckpoint) -> dict[str, Callable[[], np.ndarray]]:
    """Every converted tensor, by name, as a function computing it (one at a time)."""
    layout = meta.layout()
    n, d, heads = len(meta.shards), layout.dim, layout.n_heads
    hd = d // heads

    def cat(name: str, axis: int) -> np.ndarray:
        parts = [meta.tensor(i, name) for i in range(n)]
        return parts[0] if n == 1 else np.concatenate(parts, axis=axis)

    def permute(w: np.ndarray) -> np.ndarray:
        return rotary_permute(w, heads)

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


class HFCheckpoint:
    """An HF-format copy of LLaMA weights, in any container and shard layout: `*.safetensors`
    files and/or `*.bin` zip checkpoints (read through the allow-list reader), with a
    `config.json` giving the shape. Tensors are memory-mapped, never loaded whole (a
    non-contiguous checkpoint tensor is gathered when it is read)."""

    def __init__(self, folder: os.PathLike[str] | str) -> None:
        self.folder = Path(folder)
        config_path = self.folder / "config.json"
        if not is_regular(config_path):
            raise MissingFileError(
                f"{self.folder}: no config.json (not an HF model folder)", path=config_path
            )
        raw = read_bounded(config_path, MAX_JSON_FILE_BYTES, "a model config")
        self.config = _json.loads(raw, str(config_path))
        try:
            self.layout = LlamaLayout(
                dim=int(self.config["hidden_size"]),
                n_layers=int(self.config["num_hidden_layers"]),
                n_heads=int(self.config["num_attention_heads"]),
                intermediate=int(self.config["intermediate_size"]),
                vocab=int(self.config.get("vocab_size", 32000)),
                norm_eps=float(self.config.get("rms_norm_eps", 1e-6)),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"{config_path}: not a LLaMA config ({e})", path=config_path) from None
        # Every weight file, both containers together (unlike `TensorStore`, which prefers safetensors).
        files = sorted(
            p for p in self.folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()
        )
        if not files:
            raise MissingFileError(f"{self.folder}: no *.safetensors or *.bin weight files", path=self.folder)
        self.tensors: dict[str, StoredTensor] = index_tensors(files)

    def array(self, name: str) -> np.ndarray:
        t = self.tensors.get(name)
        if t is None:
            raise FormatError(f"{self.folder}: missing tensor {name!r}", path=self.folder)
        if t.dtype not in _LLAMA_DTYPES:
            raise FormatError(
                f"{t.source}: tensor {name!r} is {t.dtype}; expected F16, BF16 or F32", path=t.source
            )
        if t.compute is not None:
            return t.compute()
        return np.memmap(t.source, dtype=NUMPY_DTYPES[t.dtype], mode="r", offset=t.begin or 0, shape=t.shape)

    def as_float16(self, name: str) -> np.ndarray:
        """The tensor in float16, as the pinned conversion holds it (exact when the copy was
        float16 or upcast from it)."""
        a = self.array(name)
        if self.tensors[name].dtype == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return a if a.dtype == np.float16 else a.astype(np.float16)


def hf_tensors(ck: HFCheckpoint) -> dict[str, Callable[[], np.ndarray]]:
    """Converted tensors from an HF copy: the same names; float16; `inv_freq` recomputed (copies
    made by other versions lack it or hold other values)."""
    freq = inv_freq(ck.layout.head_dim)
    out: dict[str, Callable[[], np.ndarray]] = {}
    for name, _dtype, _shape in ck.layout.tensors():
        if name.endswith("rotary_emb.inv_freq"):
            out[name] = lambda: freq
        else:
            out[name] = lambda name=name: ck.as_float16(name)
    return out


def open_base(folder: os.PathLike[str] | str) -> tuple[LlamaLayout, dict[str, Callable[[], np.ndarray]]]:
    """The layout and converted tensors of a LLaMA folder: Meta's original, or any HF copy."""
    folder = Path(folder)
    if (folder / "params.json").is_file():
        meta = MetaCheckpoint.open(folder)
        return meta.layout(), converted_tensors(meta)
    ck = HFCheckpoint(folder)
    return ck.layout, hf_tensors(ck)


def write_shard(
    layout: LlamaLayout,
    compute: Mapping[str, Callable[[], np.ndarray]],
    fname: str,
    out: BinaryIO,
    source: str = "",
) -> None:
    """Write one converted shard file (`fname`, one of `layout.shard_names()`) to `out`."""
    dtypes = {name: (dt, shape) for name, dt, shape in layout.tensors()}
    groups = dict(zip(layout.shard_names(), layout.shards(), strict=True))
    specs = [TensorSpec(t, dtypes[t][0], dtypes[t][1]) for t in groups[fname]]

    def data() -> Iterator[tuple[str, list[memoryview]]]:
        for spec in record_order(specs):
            arr = np.ascontiguousarray(compute[spec.name]())
            if arr.shape != spec.shape or arr.dtype != NUMPY_DTYPES[spec.dtype]:
                raise FormatError(
                    f"{source}: {spec.name} came out {arr.dtype}{arr.shape}, "
                    f"expected {spec.dtype}{spec.shape}",
                    path=source,
                )
            yield spec.name, [memoryview(arr).cast("B")]

    save_state_dict(out, Path(fname).stem, specs, data())


def write_shards(
    layout: LlamaLayout,
    compute: Mapping[str, Callable[[], np.ndarray]],
    open_out: Callable[[str], BinaryIO],
    source: str = "",
) -> list[str]:
    """Write every converted shard file through `open_out(file_name)`; returns the names."""
    names = layout.shard_names()
    for fname in names:
        with open_out(fname) as f:
            write_shard(layout, compute, fname, f, source)
    return names
