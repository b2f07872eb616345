"""Pair a delta's tensors with the base's, and refuse a base that cannot be the right one, naming
the likely cause, before anything is written; refuse a delta whose `config.json` (copied into the
recovered model) does not describe its tensors."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _json
from .._display import abridged, quoted
from .._json import MAX_JSON_FILE_BYTES
from ..errors import FormatError, IncompatibleBaseError
from ..outfolder.paths import is_regular, read_bounded
from ..tensors.store import StoredTensor, TensorStore
from .recipes import VOCAB_TENSORS, Recipe

logger = logging.getLogger(__name__)

#: Buffers, not weights: current transformers neither saves nor loads them; 2023 copies differ.
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)
_FLOATS = ("F16", "BF16", "F32", "F64")
#: LLaMA-1 sizes by hidden width, for messages.
_LLAMA_SIZES = {4096: "7B", 5120: "13B", 6656: "30B", 8192: "65B"}


@dataclass(frozen=True)
class Pair:
    """One output tensor: the delta's tensor and the base's (None: taken from the delta as is)."""

    delta: StoredTensor
    base: StoredTensor | None

    @property
    def name(self) -> str:
        return self.delta.name


def skipped(name: str) -> bool:
    return name.endswith(SKIPPED_SUFFIXES)


def pair_tensors(recipe: Recipe, delta: TensorStore, base: TensorStore) -> list[Pair]:
    """The output tensors in the delta's order, each with its base tensor.

    Raises:
        `IncompatibleBaseError`: the base lacks tensors the delta has, holds tensors the recipe's peer
            refused, or has other shapes; the message names the likely cause.
    """
    _refuse_llama2(delta.folder, base.folder)
    pairs: list[Pair] = []
    missing: list[str] = []
    for name, t in delta.tensors.items():
        if skipped(name):
            continue
        b = base.get(name)
        if b is None:
            if name in recipe.delta_only:
                pairs.append(Pair(t, None))
            else:
                missing.append(name)
            continue
        if name in recipe.delta_only and b.shape != t.shape:
            pairs.append(Pair(t, None))  # a projector of another shape in the base: the delta's is kept
            continue
        _check_shape(recipe, t, b, base.folder)
        pairs.append(Pair(t, b))
    if missing:
        raise IncompatibleBaseError(_missing_cause(missing, base), path=base.folder)
    extra = sorted(n for n in base.tensors if n not in delta.tensors and not skipped(n))
    if extra and not recipe.base_extra_ok:
        raise IncompatibleBaseError(
            f"{base.folder} holds {len(extra)} tensors the delta {delta.folder} lacks ({extra[0]}, ...); "
            f"the {recipe.name} recipe adds every base tensor, so the base is another model",
            path=base.folder,
        )
    for p in pairs:
        for t, what in ((p.delta, "a delta"), (p.base, "a base")):
            if t is not None and t.dtype not in _FLOATS:
                raise FormatError(
                    f"{t.source}: tensor {p.name} is {t.dtype}; {what} holds floating-point tensors",
                    path=t.source,
                )
    return pairs


def _check_shape(recipe: Recipe, t: StoredTensor, b: StoredTensor, base_dir: Path) -> None:
    if t.shape == b.shape:
        return
    grown = (
        t.name in VOCAB_TENSORS
        and len(t.shape) == 2
        and len(b.shape) == 2
        and t.shape[1] == b.shape[1]
        and t.shape[0] > b.shape[0]
    )
    if grown and recipe.grown != "refuse":
        return
    raise IncompatibleBaseError(f"{b.source}: {t.name} {_shape_cause(recipe, t, b)}", path=base_dir)


def _shape_cause(recipe: Recipe, t: StoredTensor, b: StoredTensor) -> str:
    """Why the base's tensor has another shape than the delta's, as far as the shapes tell."""
    shapes = f"is {list(b.shape)} in the base, {list(t.shape)} in the delta"
    if t.name in VOCAB_TENSORS and len(t.shape) == len(b.shape) == 2 and t.shape[1] == b.shape[1]:
        rows_t, rows_b = t.shape[0], b.shape[0]
        if rows_t > rows_b:
            hint = {"fastchat": "fastchat-v0 (Vicuna v0) or llava"}.get(recipe.name, "another recipe")
            return (
                f"{shapes}: the delta's vocabulary is {rows_t} = {rows_b} + {rows_t - rows_b} added tokens, "
                f"which the {recipe.name} recipe does not grow into; try `recipe` {hint}"
            )
        return (
            f"{shapes}: the base's vocabulary ({rows_b}) is larger than the delta's ({rows_t}); the base "
            "is not the original LLaMA (a fine-tuned or resized copy?)"
        )
    widths = {len(s) and s[-1] for s in (t.shape, b.shape)}
    if len(widths) == 2 or t.shape[0] != b.shape[0]:
        size_b = _LLAMA_SIZES.get(b.shape[-1]) if len(b.shape) else None
        size_t = _LLAMA_SIZES.get(t.shape[-1]) if len(t.shape) else None
        if size_b and size_t and size_b != size_t:
            return f"{shapes}: the base is LLaMA-{size_b}, the delta is for LLaMA-{size_t}"
    return f"{shapes}: the base is another model, or a conversion that changed this tensor"


def _missing_cause(missing: list[str], base: TensorStore) -> str:
    first = abridged(missing, 2)
    have = list(base.tensors)
    if have and not any(n.startswith("model.") for n in have):
        return (
            f"{base.folder} lacks {len(missing)} of the delta's tensors ({first}); its tensors have other "
            f"names ({have[0]}, ...): a conversion that renamed them, or not an HF LLaMA copy"
        )
    return (
        f"{base.folder} lacks {len(missing)} of the delta's tensors ({first}): a conversion that dropped "
        "them, a partial copy, or another model"
    )


def _refuse_llama2(delta_dir: Path, base_dir: Path) -> None:
    """A LLaMA-2 base has LLaMA-1's shapes (7B, 13B): only its config tells them apart."""
    base = model_config(base_dir)
    delta = model_config(delta_dir)
    if base is None:
        return
    positions = base.get("max_position_embeddings")
    eps = base.get("rms_norm_eps", base.get("norm_eps"))
    # Meta's params.json: LLaMA-2 7B/13B have norm eps 1e-5 (LLaMA-1's 1e-6, but 65B's is 1e-5 too),
    # 70B has grouped keys and values (n_kv_heads).
    meta_2 = "norm_eps" in base and ("n_kv_heads" in base or (eps == 1e-5 and base.get("dim") != 8192))
    looks_2 = positions == 4096 or meta_2
    if looks_2 and (delta is None or delta.get("max_position_embeddings", 2048) == 2048):
        raise IncompatibleBaseError(
            f"{base_dir} looks like LLaMA-2 (max_position_embeddings {positions}, norm eps {eps}); this "
            "delta was made against LLaMA-1 (2048 positions): the output would be wrong with no error",
            path=base_dir,
        )


def model_config(folder: Path) -> dict[str, Any] | None:
    """The folder's `config.json` (HF) or `params.json` (Meta), or None (neither there).

    Raises:
        `FormatError`: the file is not a JSON object (or larger than any config).
        `NotRegularFileError`: a FIFO, a device or a folder under that name.
    """
    for name in ("config.json", "params.json"):
        path = folder / name
        if not is_regular(path):
            continue
        raw = read_bounded(path, MAX_JSON_FILE_BYTES, f"a {name}")
        try:
            doc = _json.loads(raw, str(path))
        except FormatError as e:
            raise FormatError(f"{e.message}; {_GET_IT_AGAIN}", path=path) from None
        if not isinstance(doc, dict):
            raise FormatError(f"{path}: not a JSON object but {quoted(doc)}; {_GET_IT_AGAIN}", path=path)
        return doc
    return None


_GET_IT_AGAIN = "download or copy the model's own file again"
_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def _dims(delta: TensorStore) -> dict[str, tuple[int, str]]:
    """What the delta's tensors say of the model, by config key, with the tensors that say it."""
    out: dict[str, tuple[int, str]] = {}
    embed = next((t for n in VOCAB_TENSORS if (t := delta.get(n)) is not None and len(t.shape) == 2), None)
    if embed is not None:
        out["vocab_size"] = (embed.shape[0], f"{embed.name} has {embed.shape[0]} rows")
        out["hidden_size"] = (embed.shape[1], f"{embed.name} is {list(embed.shape)}")
    layers = {int(m.group(1)) for n in delta.tensors if (m := _LAYER.match(n))}
    if layers:
        last = max(layers)
        out["num_hidden_layers"] = (last + 1, f"the delta's tensors have layers 0 ... {last}")
    gate = delta.get("model.layers.0.mlp.gate_proj.weight")
    if gate is not None and len(gate.shape) == 2:
        out["intermediate_size"] = (gate.shape[0], f"{gate.name} is {list(gate.shape)}")
    return out


def check_delta_config(delta: TensorStore, delta_dir: Path) -> None:
    """The delta's `config.json`, which the recovered model gets as it is, describes the delta's
    tensors: its hidden size, number of layers, vocabulary and intermediate sizes, where it gives them.

    Raises:
        `FormatError`: it is not a JSON object, or one of those sizes differs (key, both values, and
            the tensor that tells), before anything is written.
    """
    path = delta_dir / "config.json"
    if not is_regular(path):
        return
    config = model_config(delta_dir) or {}
    wrong = [
        (key, config[key], want, why)
        for key, (want, why) in _dims(delta).items()
        if key in config and (type(config[key]) is not int or config[key] != want)
    ]
    if wrong:
        listed = ", ".join(f"{key} {quoted(got)} where {why}" for key, got, _, why in wrong)
        raise FormatError(
            f"{path} describes another model than the delta's tensors ({listed}); it would be copied "
            "into the recovered model as it is; download or copy the delta's own config.json again",
            path=path,
            expected={k: w for k, _, w, _ in wrong},
            actual={k: g for k, g, _, _ in wrong},
        )
