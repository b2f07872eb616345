"""The layout of a LLaMA checkpoint as the pinned HF conversion wrote it, derived from the shape alone.

The conversion (transformers at d04ec99, 4.29.0.dev0, with torch 1.13.1) loads the converted
layers into `LlamaForCausalLM` and saves them with `save_pretrained`: tensors in the model's
state-dict order (the per-layer rotary `inv_freq` buffers included, in float32; everything else
float16), split greedily into shards of at most 10 GB (10**10 bytes), with an index, a config, a
generation config and the tokenizer files. Everything here depends only on the architecture, so
the small files' published digests are reproduced offline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..tensors.dtypes import DTYPE_SIZES

#: What `save_pretrained` wrote in its `transformers_version` fields at the pinned commit.
PINNED_TRANSFORMERS_VERSION = "4.29.0.dev0"
#: `save_pretrained`'s default `max_shard_size` ("10GB").
MAX_SHARD_BYTES = 10 * 10**9
#: Meta's model-parallel shard count per size, as the conversion script has it.
NUM_SHARDS = {"7B": 1, "13B": 2, "30B": 4, "65B": 8}
#: More layers than any LLaMA has (80): a params.json asking for more is refused, not allocated.
MAX_LAYERS = 1024
#: `model_max_length` the 4.28-era LlamaTokenizer saved (`int(1e30)`).
_MODEL_MAX_LENGTH = int(1e30)


def intermediate_size(dim: int) -> int:
    """The feed-forward width the conversion computes from `dim`: ceil(8 dim / 3), up to a multiple of 256."""
    return (math.ceil(dim * 8 / 3) + 255) // 256 * 256


@dataclass(frozen=True)
class LlamaLayout:
    """The shape of a LLaMA model and how the pinned conversion laid it out."""

    dim: int
    n_layers: int
    n_heads: int
    intermediate: int
    vocab: int = 32000
    norm_eps: float = 1e-6
    max_positions: int = 2048
    num_shards: int = 1
    """Meta's model-parallel shards (`consolidated.NN.pth`)."""

    def __post_init__(self) -> None:
        """Refuse a shape no LLaMA has (from a hostile or broken params.json or config.json).

        Raises:
            `ValueError`: naming the field and its value.
        """
        limits = {
            "dim": 1 << 16,
            "n_layers": MAX_LAYERS,
            "n_heads": 1 << 10,
            "intermediate": 1 << 18,
            "vocab": 1 << 22,
            "num_shards": 1 << 8,
        }
        for name, limit in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 < value <= limit:
                raise ValueError(f"{name} is {value!r}; expected a whole number from 1 to {limit}")
        if self.dim % self.n_heads or self.head_dim % 2:
            raise ValueError(f"dim {self.dim} is not n_heads {self.n_heads} heads of an even width")

    @classmethod
    def preset(cls, name: str) -> LlamaLayout:
        """`llama-7b`, `llama-13b`, `llama-30b` or `llama-65b`."""
        shapes = {"7b": (4096, 32, 32), "13b": (5120, 40, 40), "30b": (6656, 60, 52), "65b": (8192, 80, 64)}
        key = name.lower().removeprefix("llama-")
        if key not in shapes:
            raise ValueError(f"unknown layout {name!r}; expected llama-7b, llama-13b, llama-30b or llama-65b")
        dim, layers, heads = shapes[key]
        return cls(dim, layers, heads, intermediate_size(dim), num_shards=NUM_SHARDS[key.upper()])

    @classmethod
    def from_params(cls, params: dict[str, Any], num_shards: int, vocab: int = 32000) -> LlamaLayout:
        """From Meta's `params.json` (dim, n_layers, n_heads, norm_eps); the vocabulary is the
        conversion's default, 32000, whatever `params.json` says."""
        dim = int(params["dim"])
        return cls(
            dim=dim,
            n_layers=int(params["n_layers"]),
            n_heads=int(params["n_heads"]),
            intermediate=intermediate_size(dim),
            vocab=vocab,
            norm_eps=float(params.get("norm_eps", 1e-6)),
            num_shards=num_shards,
        )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def tensors(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """`(name, dtype, shape)` in `LlamaForCausalLM` state-dict order."""
        d, f, v = self.dim, self.intermediate, self.vocab
        out: list[tuple[str, str, tuple[int, ...]]] = [("model.embed_tokens.weight", "F16", (v, d))]
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            out += [(f"{p}self_attn.{n}_proj.weight", "F16", (d, d)) for n in "qkvo"]
            out.append((f"{p}self_attn.rotary_emb.inv_freq", "F32", (self.head_dim // 2,)))
            out += [
                (f"{p}mlp.gate_proj.weight", "F16", (f, d)),
                (f"{p}mlp.down_proj.weight", "F16", (d, f)),
                (f"{p}mlp.up_proj.weight", "F16", (f, d)),
            ]
            out += [
                (f"{p}input_layernorm.weight", "F16", (d,)),
                (f"{p}post_attention_layernorm.weight", "F16", (d,)),
            ]
        out += [("model.norm.weight", "F16", (d,)), ("lm_head.weight", "F16", (v, d))]
        return out

    def nbytes(self) -> dict[str, int]:
        """Each tensor's size in bytes, by name, in state-dict order."""
        return {name: math.prod(shape) * DTYPE_SIZES[dtype] for name, dtype, shape in self.tensors()}

    def shards(self, max_bytes: int = MAX_SHARD_BYTES) -> list[list[str]]:
        """Tensor names per shard file, split greedily as `save_pretrained` does."""
        blocks: list[list[str]] = [[]]
        size = 0
        for name, n in self.nbytes().items():
            if size + n > max_bytes and blocks[-1]:
                blocks.append([])
                size = 0
            blocks[-1].append(name)
            size += n
        return blocks

    def shard_names(self, max_bytes: int = MAX_SHARD_BYTES) -> list[str]:
        from ..tensors.safetensors_write import shard_file_names

        return shard_file_names(len(self.shards(max_bytes)), stem="pytorch_model", suffix=".bin")

    def total_size(self) -> int:
        return sum(self.nbytes().values())

    # --- the small files ---------------------------------------------------------------------

    def index_json(self, max_bytes: int = MAX_SHARD_BYTES) -> bytes:
        files = self.shard_names(max_bytes)
        weight_map = {n: f for f, names in zip(files, self.shards(max_bytes), strict=True) for n in names}
        return _dump({"metadata": {"total_size": self.total_size()}, "weight_map": weight_map})

    def config_json(self, transformers_version: str = PINNED_TRANSFORMERS_VERSION) -> bytes:
        return _dump(
            {
                "architectures": ["LlamaForCausalLM"],
                "bos_token_id": 1,
                "eos_token_id": 2,
                "hidden_act": "silu",
                "hidden_size": self.dim,
                "initializer_range": 0.02,
                "intermediate_size": self.intermediate,
                "max_position_embeddings": self.max_positions,
                "model_type": "llama",
                "num_attention_heads": self.n_heads,
                "num_hidden_layers": self.n_layers,
                "pad_token_id": 0,
                "rms_norm_eps": self.norm_eps,
                "tie_word_embeddings": False,
                "torch_dtype": "float16",
                "transformers_version": transformers_version,
                "use_cache": True,
                "vocab_size": self.vocab,
            }
        )

    @staticmethod
    def generation_config_json(transformers_version: str = PINNED_TRANSFORMERS_VERSION) -> bytes:
        return _dump(
            {
                "_from_model_config": True,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": 0,
                "transformers_version": transformers_version,
            }
        )

    @staticmethod
    def special_tokens_map_json() -> bytes:
        return _dump({k: _token(c, typed=False) for k, c in _SPECIAL.items()})

    @staticmethod
    def tokenizer_config_json() -> bytes:
        return _dump(
            {
                "add_bos_token": True,
                "add_eos_token": False,
                "clean_up_tokenization_spaces": False,
                "model_max_length": _MODEL_MAX_LENGTH,
                "pad_token": None,
                "sp_model_kwargs": {},
                "tokenizer_class": "LlamaTokenizer",
                **{k: _token(c, typed=True) for k, c in _SPECIAL.items()},
            }
        )

    def small_files(self) -> dict[str, bytes]:
        """Every JSON file of the converted folder, as the pinned conversion wrote it."""
        files = {
            "config.json": self.config_json(),
            "generation_config.json": self.generation_config_json(),
            "special_tokens_map.json": self.special_tokens_map_json(),
            "tokenizer_config.json": self.tokenizer_config_json(),
        }
        if len(self.shards()) > 1:
            files["pytorch_model.bin.index.json"] = self.index_json()
        return files


_SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _token(content: str, *, typed: bool) -> dict[str, Any]:
    tok: dict[str, Any] = {"__type": "AddedToken"} if typed else {}
    tok.update(content=content, lstrip=False, normalized=True, rstrip=False, single_word=False)
    return tok


def _dump(doc: Any) -> bytes:
    """`json.dumps(doc, indent=2, sort_keys=True) + "\\n"`, the way transformers saved its JSON."""
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
