"""A self-contained end-to-end run on a generated LLaMA-shaped model pair, torch not needed.

The native format first: encode, re-save the base in another container and shard layout, decode
against that copy, verify, load one tensor into memory. Then the legacy `oasst` format: encode,
decode with checksums, verify.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from ._sizing import CHUNK_SIZE
from .checksums import VerifyReport, verify
from .decoding import decode
from .encoding import encode
from .formats.native_manifest import MANIFEST_NAME
from .llama.tensors import open_tensors
from .llama.torch_save import record_order, save_state_dict
from .loading import load_state_dict
from .reports import DecodeReport, EncodeReport
from .tensors.spec import TensorSpec
from .tensors.store import TensorStore

logger = logging.getLogger(__name__)

_HIDDEN = 1024
_INTERMEDIATE = 2752
_VOCAB = 8000
_ADDED = 16  # the fine-tune grows the vocabulary, as the OpenAssistant releases did (32000 -> 32016)
_SHARD_BYTES = 48 * 1024 * 1024


#: The tensor step 6 loads: the embeddings, grown by the new vocabulary rows.
LOADED_TENSOR = "model.embed_tokens.weight"


@dataclass(frozen=True)
class BaseCopyReport:
    """The base's tensors re-saved in another container, shard count and tensor order."""

    folder: str
    source_files: tuple[str, ...]
    """The base's weight files (safetensors)."""
    files: tuple[str, ...]
    """The copy's weight files (PyTorch zip checkpoints), in shard order."""
    tensors: int
    bytes_written: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class LoadReport:
    """One tensor rebuilt in memory by `load_state_dict` (numpy) and compared with the fine-tuned one."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    seconds: float
    equal: bool
    """Equal byte for byte to the tensor in `finetuned/`."""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class DemoReport:
    """Every step of the demo and the folder it ran in: native format first, then legacy."""

    workdir: str
    model_bytes: int
    layers: int
    generate_seconds: float
    encode: EncodeReport
    base_copy: BaseCopyReport
    decode: DecodeReport
    verify: VerifyReport
    load: LoadReport
    legacy_encode: EncodeReport
    legacy_decode: DecodeReport
    legacy_verify: VerifyReport

    @property
    def base_tensors(self) -> int:
        """Base tensors the native payload uses; decode proves each against its digest (blake3)."""
        m = self.encode.native_manifest
        return len(m.base_tensors) if m is not None else 0

    @property
    def ok(self) -> bool:
        """Both decodes verified and the loaded tensor equal to the fine-tuned one."""
        return self.verify.ok and self.load.equal and self.legacy_verify.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "workdir": self.workdir,
            "model_bytes": self.model_bytes,
            "layers": self.layers,
            "generate_seconds": round(self.generate_seconds, 3),
            "ok": self.ok,
            "native": {
                "encode": self.encode.to_dict(),
                "base_tensors": self.base_tensors,
                "base_copy": self.base_copy.to_dict(),
                "decode": self.decode.to_dict(),
                "verify": self.verify.to_dict(),
                "load": self.load.to_dict(),
            },
            "legacy": {
                "encode": self.legacy_encode.to_dict(),
                "decode": self.legacy_decode.to_dict(),
                "verify": self.legacy_verify.to_dict(),
            },
        }


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


def _groups(items: list[tuple[str, int]], n: int) -> list[list[str]]:
    """Split named sizes, in order, into at most `n` consecutive groups of about equal bytes."""
    total = sum(size for _, size in items) or 1
    groups: list[list[str]] = [[] for _ in range(n)]
    done = 0
    for name, size in items:
        groups[min(n - 1, done * n // total)].append(name)
        done += size
    return [g for g in groups if g]


def save_base_copy(base_dir: os.PathLike[str] | str, out_dir: os.PathLike[str] | str) -> BaseCopyReport:
    """Re-save the base's tensors as PyTorch zip checkpoints with an index, one shard more than the
    base has and the tensors in reverse order; copy its other files.

    The checkpoints are written by the package's own torch 1.13 format writer: no torch needed.
    """
    t0 = time.perf_counter()
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    store = open_tensors(base_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.bin"):  # shards of an earlier run would hold the same tensors
        stale.unlink()
    names = list(reversed(store.tensors))
    groups = _groups([(n, store.tensors[n].nbytes) for n in names], len(store.files) + 1)
    weight_map: dict[str, str] = {}
    files, written = [], 0
    for i, group in enumerate(groups, 1):
        fname = f"pytorch_model-{i:05d}-of-{len(groups):05d}.bin"
        specs = [TensorSpec(n, store.tensors[n].dtype, store.tensors[n].shape) for n in group]

        def data(specs: list[TensorSpec] = specs) -> Iterator[tuple[str, Iterator[bytes]]]:
            for spec in record_order(specs):
                yield spec.name, _chunks(store, spec.name)

        with open(out_dir / fname, "wb") as f:
            save_state_dict(f, Path(fname).stem, specs, data())
        weight_map.update(dict.fromkeys(group, fname))
        files.append(fname)
        written += (out_dir / fname).stat().st_size
    total = sum(store.tensors[n].nbytes for n in names)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")
    for p in sorted(base_dir.iterdir()):
        if p.is_file() and not p.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copyfile(p, out_dir / p.name)
    return BaseCopyReport(
        folder=str(out_dir),
        source_files=tuple(p.name for p in store.files),
        files=tuple(files),
        tensors=len(names),
        bytes_written=written,
        seconds=time.perf_counter() - t0,
    )


def _chunks(store: TensorStore, name: str) -> Iterator[bytes]:
    with store.reader(name) as r:
        while chunk := r.read(CHUNK_SIZE):
            yield chunk


def _load_one(payload: Path, base: Path, tuned_dir: Path, name: str) -> LoadReport:
    """Load tensor `name` with `load_state_dict` (numpy, no torch) and compare it with `tuned_dir`'s."""
    t0 = time.perf_counter()
    loaded = load_state_dict(payload, base, framework="numpy", names=[name])[name]
    seconds = time.perf_counter() - t0
    expected = None
    for path in sorted(tuned_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            if name in f.keys():
                expected = f.get_tensor(name)
                break
    equal = (
        expected is not None
        and loaded.dtype == expected.dtype
        and loaded.shape == expected.shape
        and loaded.tobytes() == expected.tobytes()
    )
    return LoadReport(name, str(loaded.dtype), tuple(loaded.shape), loaded.nbytes, seconds, equal)


def run_demo(
    workdir: os.PathLike[str] | str, *, size_mb: int = 128, jobs: int | None = None, progress: bool = False
) -> DemoReport:
    """Run the demo's steps in `workdir` (see the module docstring); nothing needs torch.

    Folders: `base/`, `finetuned/`; native `payload/` (with `xorweights.json`), `base-copy/`,
    `decoded/`; legacy `oasst-payload/`, `oasst-checksums.json`, `oasst-decoded/`.

    Raises:
        `XorWeightsError`: any step failed (it would be a bug: the demo's data is consistent).
    """
    workdir = Path(workdir)
    t0 = time.perf_counter()
    base_dir, tuned_dir, layers = make_model_pair(workdir, size_mb=size_mb)
    generated = time.perf_counter() - t0
    model_bytes = sum(f.stat().st_size for f in tuned_dir.iterdir())

    payload, base_copy = workdir / "payload", workdir / "base-copy"
    enc = encode(tuned_dir, base=base_dir, out=payload, format="xorweights", jobs=jobs, progress=progress)
    copy = save_base_copy(base_dir, base_copy)
    dec = decode(
        payload, base=base_copy, out=workdir / "decoded", format="xorweights", jobs=jobs, progress=progress
    )
    ver = verify(workdir / "decoded", payload / MANIFEST_NAME, stage="decoded", jobs=jobs, progress=progress)
    load = _load_one(payload, base_copy, tuned_dir, LOADED_TENSOR)

    legacy_payload = workdir / "oasst-payload"
    legacy_enc = encode(
        tuned_dir,
        format="oasst",
        base=base_dir,
        out=legacy_payload,
        with_checksums=True,
        release="xorweights-demo",
        jobs=jobs,
        progress=progress,
    )
    assert legacy_enc.manifest is not None
    manifest_path = workdir / "oasst-checksums.json"
    manifest_path.write_text(json.dumps(legacy_enc.manifest.to_json(), indent=2) + "\n")
    legacy_dec = decode(
        legacy_payload,
        base=base_dir,
        out=workdir / "oasst-decoded",
        checksums=manifest_path,
        format="oasst",
        jobs=jobs,
        progress=progress,
    )
    legacy_ver = verify(
        workdir / "oasst-decoded", manifest_path, stage="decoded", jobs=jobs, progress=progress
    )
    return DemoReport(
        workdir=str(workdir),
        model_bytes=model_bytes,
        layers=layers,
        generate_seconds=generated,
        encode=enc,
        base_copy=copy,
        decode=dec,
        verify=ver,
        load=load,
        legacy_encode=legacy_enc,
        legacy_decode=legacy_dec,
        legacy_verify=legacy_ver,
    )
