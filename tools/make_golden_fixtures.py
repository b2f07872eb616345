"""Make the golden conversion fixtures with the real old toolchain. Never run in CI.

Run it once in a throwaway environment holding the pinned-era toolchain:

    python -m venv /tmp/oldtorch
    /tmp/oldtorch/bin/pip install torch==2.0.1 transformers==4.28.1 sentencepiece protobuf==3.20.3 "numpy<2"
    /tmp/oldtorch/bin/python tools/make_golden_fixtures.py tests/golden [KEEP_CONVERTED_DIR]

(torch 2.0.1 writes the same bytes as the pinned 1.13.1.) For 1, 2 and 4 model-parallel shards it
writes a tiny LLaMA in Meta's format (`meta/consolidated.NN.pth`, `meta/params.json`; seeded
values, fp16), converts it with transformers' own `write_model`, unmodified, and records the md5
of every converted file in `hf.md5`. The converted files themselves are not kept: the md5 lists
are what xorweights must reproduce.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers.models.llama import convert_llama_weights_to_hf as convert

DIM, N_LAYERS, N_HEADS, VOCAB = 16, 2, 4, 32000
SIZES = {1: "7B", 2: "13B", 4: "30B"}  # the script takes its shard count from the size's name


def meta_checkpoint(num_shards: int, seed: int) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    inter = convert.compute_intermediate_size(DIM)

    def w(*shape: int) -> torch.Tensor:
        return torch.from_numpy((rng.standard_normal(shape) * 0.5).astype(np.float16))

    d, f, s = DIM, inter, num_shards
    head_dim = DIM // N_HEADS
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(s)]
    for i, sd in enumerate(shards):
        sd["tok_embeddings.weight"] = w(VOCAB, d // s)
        sd["norm.weight"] = w(d) if i == 0 else shards[0]["norm.weight"].clone()
        sd["output.weight"] = w(VOCAB // s, d)
        for layer in range(N_LAYERS):
            p = f"layers.{layer}."
            for name in ("wq", "wk", "wv"):
                sd[f"{p}attention.{name}.weight"] = w(d // s, d)
            sd[f"{p}attention.wo.weight"] = w(d, d // s)
            sd[f"{p}feed_forward.w1.weight"] = w(f // s, d)
            sd[f"{p}feed_forward.w2.weight"] = w(d, f // s)
            sd[f"{p}feed_forward.w3.weight"] = w(f // s, d)
            sd[f"{p}attention_norm.weight"] = (
                w(d) if i == 0 else shards[0][f"{p}attention_norm.weight"].clone()
            )
            sd[f"{p}ffn_norm.weight"] = w(d) if i == 0 else shards[0][f"{p}ffn_norm.weight"].clone()
        sd["rope.freqs"] = (1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))).half()
    return shards


def inv_freq_table(out_root: Path) -> None:
    """What the conversion stores as `inv_freq` (torch's float32 value, rounded through float16
    on loading) for the head sizes LLaMA-shaped models use."""
    table = {}
    for hd in (4, 8, 16, 32, 64, 80, 96, 100, 128, 160, 256):
        t = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        table[hd] = t.half().float().numpy().tobytes().hex()
    (out_root / "inv_freq.json").write_text(json.dumps(table, indent=1) + "\n")


def main(out_root: Path, keep: Path | None = None) -> None:
    inv_freq_table(out_root)
    for num_shards, size in SIZES.items():
        case = out_root / f"llama-tiny-{num_shards}shard"
        meta = case / "meta"
        shutil.rmtree(case, ignore_errors=True)
        meta.mkdir(parents=True)
        for i, sd in enumerate(meta_checkpoint(num_shards, seed=num_shards)):
            torch.save(sd, meta / f"consolidated.{i:02d}.pth")
        (meta / "params.json").write_text(
            json.dumps(
                {
                    "dim": DIM,
                    "multiple_of": 256,
                    "n_heads": N_HEADS,
                    "n_layers": N_LAYERS,
                    "norm_eps": 1e-06,
                    "vocab_size": -1,
                }
            )
        )
        with tempfile.TemporaryDirectory() as tmp:
            convert.write_model(model_path=tmp, input_base_path=str(meta), model_size=size)
            if keep is not None:  # for developing against; never committed
                shutil.copytree(tmp, keep / case.name, dirs_exist_ok=True)
            lines = [
                f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n"
                for p in sorted(Path(tmp).iterdir())
                if p.is_file()
            ]
        (case / "hf.md5").write_text("".join(lines))
        (case / "toolchain.txt").write_text(
            f"torch {torch.__version__}, transformers {transformers.__version__}, "
            f"python {sys.version.split()[0]}, write_model(model_size={size!r})\n"
        )
        print(case, "".join(lines), sep="\n")


if __name__ == "__main__":
    main(
        Path(sys.argv[1] if len(sys.argv) > 1 else "tests/golden"),
        Path(sys.argv[2]) if len(sys.argv) > 2 else None,
    )
