"""Recoveries against digests produced once by the real peer scripts (tests/golden/delta/README.md):
every tensor the peer saved, bit for bit, from Meta's original files as the base."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import xorweights
from xorweights.tensor_manifest import TENSORS_NAME

GOLDEN = Path(__file__).parent / "golden" / "delta"
META = Path(__file__).parent / "golden" / "llama-tiny-1shard" / "meta"
#: Koala's digests are in EasyLM's own layout: test_koala_matches_easylm.
CASES = sorted(p.parent.name for p in GOLDEN.glob("*/expected.json") if p.parent.name != "koala")


def test_every_recipe_has_golden_digests() -> None:
    assert {"fastchat", "fastchat-v0", "llava", "alpaca"} <= set(CASES)
    assert (GOLDEN / "koala" / "expected.json").is_file()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_recovery_matches_the_peer_script(tmp_path: Path, case: str, fmt: str) -> None:
    expected = json.loads((GOLDEN / case / "expected.json").read_text())
    delta = GOLDEN / case / "delta"
    report = xorweights.decode(
        delta, base=META, out=tmp_path / "out", recipe=expected["recipe"], output_format=fmt
    )
    got = json.loads((tmp_path / "out" / TENSORS_NAME).read_text())["tensors"]
    # The peers' transformers 4.28 saved the rotary inv_freq buffers; current transformers do not.
    want = {n: t for n, t in expected["tensors"].items() if not n.endswith("rotary_emb.inv_freq")}
    assert got == want
    if expected.get("model_sum") is not None:
        assert report.model_sum == pytest.approx(expected["model_sum"], rel=1e-6)


def easylm_layout(hf: dict[str, np.ndarray], heads: int) -> dict[str, np.ndarray]:
    """HF tensors back in EasyLM's layout (kernels `[in, out]`, q/k in Meta's interleaved rotary
    order): the inverse of what EasyLM's convert_easylm_to_hf does, written here independently."""

    def unpermute(w: np.ndarray) -> np.ndarray:
        d = w.shape[0]
        return w.reshape(heads, 2, d // heads // 2, w.shape[1]).transpose(0, 2, 1, 3).reshape(d, -1)

    out = {
        "transformer/wte/embedding": hf["model.embed_tokens.weight"],
        "transformer/ln_f/kernel": hf["model.norm.weight"],
        "lm_head/kernel": hf["lm_head.weight"].T,
    }
    parts = {
        "wq": "self_attn.q_proj",
        "wk": "self_attn.k_proj",
        "wv": "self_attn.v_proj",
        "wo": "self_attn.o_proj",
        "w1": "mlp.gate_proj",
        "w2": "mlp.down_proj",
        "w3": "mlp.up_proj",
    }
    layers = {int(n.split(".")[2]) for n in hf if n.startswith("model.layers.")}
    for i in layers:
        for w, name in parts.items():
            group = "attention" if w in ("wq", "wk", "wv", "wo") else "feed_forward"
            kernel = hf[f"model.layers.{i}.{name}.weight"]
            out[f"transformer/h/{i}/{group}/{w}/kernel"] = (
                unpermute(kernel) if w in ("wq", "wk") else kernel
            ).T
        out[f"transformer/h/{i}/attention_norm/kernel"] = hf[f"model.layers.{i}.input_layernorm.weight"]
        out[f"transformer/h/{i}/ffn_norm/kernel"] = hf[f"model.layers.{i}.post_attention_layernorm.weight"]
    return out


def test_koala_matches_easylm(tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open

    expected = json.loads((GOLDEN / "koala" / "expected.json").read_text())
    diff = GOLDEN / "koala" / "delta" / "koala_7b_diff_v2"
    xorweights.decode(diff, base=META, out=tmp_path / "out", recipe="koala")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:  # bf16 as raw 16-bit words
        hf = {k: f.get_tensor(k).view(torch.int16).numpy() for k in f.keys()}  # noqa: SIM118
    heads = json.loads((META / "params.json").read_text())["n_heads"]
    got = {
        k: {
            "dtype": "BF16",
            "shape": list(v.shape),
            "sha256": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest(),
        }
        for k, v in easylm_layout(hf, heads).items()
    }
    assert got == expected["tensors"]
