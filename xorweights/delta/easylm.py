"""A Koala diff (EasyLM streaming checkpoint) seen as HF LLaMA tensors.

EasyLM holds Meta's weights with every linear kernel transposed (`[in, out]`) and q/k in Meta's
interleaved rotary layout; EasyLM's own `convert_easylm_to_hf` transposes them back and applies
the conversion's rotary permutation. The same is done here, per tensor, as it is read: an
element-wise recipe gives the same values whichever layout it runs in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import FormatError
from ..llama.convert import rotary_permute
from ..tensors.dtypes import NUMPY_DTYPES
from ..tensors.easylm_msgpack import EasyLMTensor, read_streaming_checkpoint
from ..tensors.store import StoredTensor, TensorStore

_LAYER = {
    ("attention", "wq"): "self_attn.q_proj.weight",
    ("attention", "wk"): "self_attn.k_proj.weight",
    ("attention", "wv"): "self_attn.v_proj.weight",
    ("attention", "wo"): "self_attn.o_proj.weight",
    ("feed_forward", "w1"): "mlp.gate_proj.weight",
    ("feed_forward", "w2"): "mlp.down_proj.weight",
    ("feed_forward", "w3"): "mlp.up_proj.weight",
    ("attention_norm",): "input_layernorm.weight",
    ("ffn_norm",): "post_attention_layernorm.weight",
}
_ORDER = list(_LAYER.values())


def hf_name(key: tuple[str, ...]) -> tuple[str, bool]:
    """The HF name of an EasyLM key, and whether its kernel is stored transposed.

    Raises:
        `ValueError`: not a LLaMA parameter EasyLM writes.
    """
    k = key[1:] if key and key[0] == "params" else key
    if k == ("transformer", "wte", "embedding"):
        return "model.embed_tokens.weight", False
    if k == ("transformer", "ln_f", "kernel"):
        return "model.norm.weight", False
    if k == ("lm_head", "kernel"):
        return "lm_head.weight", True
    if len(k) >= 5 and k[:2] == ("transformer", "h") and re.fullmatch(r"\d+", k[2]) and k[-1] == "kernel":
        name = _LAYER.get(tuple(k[3:-1]))
        if name is not None:
            return f"model.layers.{int(k[2])}.{name}", not name.endswith("norm.weight")
    raise ValueError("/".join(key))


def open_easylm_delta(path: Path, heads: int) -> TensorStore:
    """The diff's tensors under HF names, in LlamaForCausalLM state-dict order.

    Raises:
        `FormatError`: not a streaming checkpoint, or it holds a parameter LLaMA has not.
    """
    tensors: dict[str, StoredTensor] = {}
    for t in read_streaming_checkpoint(path):
        try:
            name, transposed = hf_name(t.key)
        except ValueError:
            raise FormatError(
                f"{path}: {'/'.join(t.key)} is not a LLaMA parameter of EasyLM", path=path
            ) from None
        if name in tensors:
            raise FormatError(f"{path}: {'/'.join(t.key)} is {name} a second time", path=path)
        if not transposed:
            tensors[name] = StoredTensor(name, t.dtype, t.shape, str(path), begin=t.offset)
            continue
        shape = (t.shape[1], t.shape[0]) if len(t.shape) == 2 else t.shape
        rotary = name.endswith(("q_proj.weight", "k_proj.weight"))
        if rotary and (len(shape) != 2 or shape[0] % (2 * heads)):
            raise FormatError(
                f"{path}: {'/'.join(t.key)} is {list(t.shape)}, which {heads} attention heads do not divide",
                path=path,
            )
        tensors[name] = StoredTensor(
            name, t.dtype, shape, str(path), compute=_hf_layout(path, t, rotary, heads)
        )
    return TensorStore(
        path.parent, dict(sorted(tensors.items(), key=lambda kv: _rank(kv[0]))), "easylm", [path]
    )


def _hf_layout(path: Path, t: EasyLMTensor, rotary: bool, heads: int) -> Callable[[], np.ndarray]:
    def compute() -> np.ndarray:
        if len(t.shape) != 2:
            raise FormatError(
                f"{path}: {'/'.join(t.key)} is {list(t.shape)}, expected a 2-D kernel", path=path
            )
        kernel = np.memmap(path, dtype=NUMPY_DTYPES[t.dtype], mode="r", offset=t.offset, shape=t.shape)
        w = np.ascontiguousarray(kernel.T)
        return rotary_permute(w, heads) if rotary else w

    return compute


def _rank(name: str) -> tuple[int, int, int]:
    if name == "model.embed_tokens.weight":
        return 0, 0, 0
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if m:
        return 1, int(m.group(1)), _ORDER.index(m.group(2))
    return (2, 0, 0) if name == "model.norm.weight" else (3, 0, 0)
