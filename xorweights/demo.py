"""A self-contained end-to-end run: make a small LLaMA-shaped model pair, encode, decode, verify."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checksums import VerifyReport, verify
from .codec import DecodeReport, EncodeReport, decode, encode

logger = logging.getLogger(__name__)

_HIDDEN = 1024
_INTERMEDIATE = 2752
_VOCAB = 8000
_ADDED = 16  # the fine-tune grows the vocabulary, as the OpenAssistant releases did (32000 -> 32016)
_SHARD_BYTES = 48 * 1024 * 1024


@dataclass(frozen=True)
class DemoReport:
    """The three steps of the demo and the folder they ran in."""

    workdir: str
    model_bytes: int
    layers: int
    generate_seconds: float
    encode: EncodeReport
    decode: DecodeReport
    verify: VerifyReport


def _tensors(layers: int, vocab: int, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    yield "model.embed_tokens.weight", w(vocab, _HIDDEN)
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield f"{p}self_attn.{n}.weight", w(_HIDDEN, _HIDDEN)
        yield f"{p}mlp.gate_proj.weight", w(_INTERMEDIATE, _HIDDEN)
        yield f"{p}mlp.down_proj.weight", w(_HIDDEN, _INTERMEDIATE)
        yield f"{p}mlp.up_proj.weight", w(_INTERMEDIATE, _HIDDEN)
        yield f"{p}input_layernorm.weight", np.ones(_HIDDEN, np.float16)
        yield f"{p}post_attention_layernorm.weight", np.ones(_HIDDEN, np.float16)
    yield "model.norm.weight", np.ones(_HIDDEN, np.float16)
    yield "lm_head.weight", w(vocab, _HIDDEN)


def _fine_tune(name: str, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stand-in for training: small updates everywhere, and rows for the added tokens."""
    step = (rng.standard_normal(t.shape, dtype=np.float32) * 1e-3).astype(np.float16)
    tuned = t + step
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        extra = (rng.standard_normal((_ADDED, t.shape[1]), dtype=np.float32) * 0.02).astype(np.float16)
        tuned = np.concatenate([tuned, extra])
    return tuned


def _write_model(folder: Path, tensors: Iterator[tuple[str, np.ndarray]], config: dict) -> int:
    """Save tensors as sharded safetensors with an index, plus config files; returns bytes."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, t in tensors:
        if size + t.nbytes > _SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in shard})
        total += sum(t.nbytes for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2) + "\n"
    )
    return sum(f.stat().st_size for f in folder.iterdir())


def _config(layers: int, vocab: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": _HIDDEN,
        "intermediate_size": _INTERMEDIATE,
        "model_type": "llama",
        "num_attention_heads": 16,
        "num_hidden_layers": layers,
        "torch_dtype": "float16",
        "vocab_size": vocab,
    }


def make_model_pair(
    workdir: os.PathLike[str] | str, *, size_mb: int = 128, seed: int = 0
) -> tuple[Path, Path, int]:
    """Write `base/` and `finetuned/` under `workdir`; returns their paths and the layer count."""
    workdir = Path(workdir)
    per_layer = (4 * _HIDDEN * _HIDDEN + 3 * _HIDDEN * _INTERMEDIATE) * 2
    layers = max(1, (size_mb * 1024 * 1024 - 2 * _VOCAB * _HIDDEN * 2) // per_layer)
    rng = np.random.default_rng(seed)
    tuned_rng = np.random.default_rng(seed + 1)
    base_dir, tuned_dir = workdir / "base", workdir / "finetuned"

    base_tensors: dict[str, np.ndarray] = {}

    def base_iter() -> Iterator[tuple[str, np.ndarray]]:
        for name, t in _tensors(layers, _VOCAB, rng):
            base_tensors[name] = t
            yield name, t

    _write_model(base_dir, base_iter(), _config(layers, _VOCAB))
    (base_dir / "tokenizer.model").write_bytes(np.random.default_rng(seed + 2).bytes(500_000))
    _write_model(
        tuned_dir,
        ((n, _fine_tune(n, t, tuned_rng)) for n, t in base_tensors.items()),
        _config(layers, _VOCAB + _ADDED),
    )
    (tuned_dir / "tokenizer.model").write_bytes((base_dir / "tokenizer.model").read_bytes())
    added = {f"<|extra_{i}|>": _VOCAB + i for i in range(_ADDED)}
    (tuned_dir / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    return base_dir, tuned_dir, int(layers)


def run_demo(
    workdir: os.PathLike[str] | str, *, size_mb: int = 128, jobs: int | None = None, progress: bool = False
) -> DemoReport:
    """Generate a model pair in `workdir`, encode it, decode it with checksums, verify the result.

    Raises:
        `XorWeightsError`: any step failed (it would be a bug: the demo's data is consistent).
    """
    workdir = Path(workdir)
    t0 = time.perf_counter()
    base_dir, tuned_dir, layers = make_model_pair(workdir, size_mb=size_mb)
    generated = time.perf_counter() - t0
    enc = encode(
        tuned_dir,
        format="oasst",
        base=base_dir,
        out=workdir / "payload",
        with_checksums=True,
        release="xorweights-demo",
        jobs=jobs,
        progress=progress,
    )
    assert enc.manifest is not None
    manifest_path = workdir / "checksums.json"
    manifest_path.write_text(json.dumps(enc.manifest.to_json(), indent=2) + "\n")
    dec = decode(
        workdir / "payload",
        base=base_dir,
        out=workdir / "decoded",
        checksums=manifest_path,
        jobs=jobs,
        progress=progress,
    )
    ver = verify(workdir / "decoded", manifest_path, stage="decoded", jobs=jobs, progress=progress)
    model_bytes = sum(f.stat().st_size for f in tuned_dir.iterdir())
    return DemoReport(str(workdir), model_bytes, layers, generated, enc, dec, ver)
