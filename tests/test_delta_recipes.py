"""Each recipe recovers, from a delta made in the test, the tensors torch computes the peer's way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import xorweights
from tests.delta_models import VOCAB, llama_state, perturbed, save_model
from xorweights.errors import BaseMismatchError
from xorweights.tensor_manifest import TENSORS_NAME, load_tensor_manifest

GROWN = ("model.embed_tokens.weight", "lm_head.weight")


def load_out(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as r:
            for k in r.keys():  # noqa: SIM118 (safe_open has no __iter__)
                out[k] = r.get_tensor(k)
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def weights(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.endswith("inv_freq")}


def check(out_dir: Path, expected: dict[str, torch.Tensor]) -> None:
    got = load_out(out_dir)
    assert list(got) == sorted(expected) or set(got) == set(expected)
    for k, v in expected.items():
        assert same_bits(got[k], v.contiguous()), k
    manifest = load_tensor_manifest(out_dir / TENSORS_NAME)
    assert set(manifest.tensors) == set(expected)


@pytest.mark.parametrize("base_dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_fastchat_fp16_add(tmp_path: Path, base_dtype: torch.dtype) -> None:
    base = llama_state()
    target = {k: v.half() for k, v in perturbed(base, VOCAB, 1).items()}
    delta = {k: target[k] - base[k].half() for k in target}  # FastChat make_delta: fp16 subtract
    save_model(tmp_path / "base", base, dtype=base_dtype, container="safetensors")
    save_model(tmp_path / "delta", delta, dtype=torch.float16, shards=3)
    report = xorweights.decode(
        tmp_path / "delta", base=tmp_path / "base", out=tmp_path / "out", recipe="fastchat"
    )
    # The peer: both loaded as fp16 (a bf16/fp32 base cast by torch), `param.data += delta` on the CPU.
    expected = {k: base[k].to(base_dtype).half() + delta[k].half() for k in weights(delta)}
    check(tmp_path / "out", expected)
    assert report.format == "delta:fastchat"
    assert (tmp_path / "out" / "config.json").read_bytes() == (
        tmp_path / "delta" / "config.json"
    ).read_bytes()
    assert not any(n.endswith("inv_freq") for n in load_out(tmp_path / "out"))


@pytest.mark.parametrize("grow", [1, 3])
def test_fastchat_v0_zero_rows(tmp_path: Path, grow: int) -> None:
    base = llama_state()
    target = {k: v.half() for k, v in perturbed(base, VOCAB + grow, 2).items()}
    resized = {k: v.half() for k, v in base.items()}
    for k in GROWN:  # v0: base resized to the tokenizer, new rows zero
        resized[k] = torch.cat([resized[k], torch.zeros(grow, resized[k].shape[1], dtype=torch.float16)])
    delta = {k: target[k] - resized[k] for k in target}
    delta["lm_head.weight"][VOCAB, 0] = -0.0  # x + 0 turns -0 into +0: the recipe must add, not copy
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", delta)
    xorweights.decode(tmp_path / "delta", base=tmp_path / "base", out=tmp_path / "out", recipe="fastchat-v0")
    expected = {k: resized[k] + delta[k] for k in weights(delta)}
    check(tmp_path / "out", expected)


@pytest.mark.parametrize("grow", [1, 3])
def test_llava_top_left(tmp_path: Path, grow: int) -> None:
    base = llama_state()
    target = {k: v.half() for k, v in perturbed(base, VOCAB + grow, 3, extra=2).items()}
    delta = {k: v.clone() for k, v in target.items()}
    for k, b in base.items():
        delta[k][: b.shape[0]] -= b.half()
    delta["lm_head.weight"][VOCAB, 0] = -0.0  # grown rows are the delta's own, untouched
    save_model(tmp_path / "base", base, container="safetensors")
    save_model(tmp_path / "delta", delta)
    xorweights.decode(tmp_path / "delta", base=tmp_path / "base", out=tmp_path / "out", recipe="llava")
    expected = {k: v.clone() for k, v in weights(delta).items()}
    for k, b in weights(base).items():  # LLaVA: param.data[:rows, :cols] += base
        expected[k][: b.shape[0], ...] += b.half()
    check(tmp_path / "out", expected)
    assert torch.equal(
        load_out(tmp_path / "out")["model.mm_projector.weight"], delta["model.mm_projector.weight"]
    )


@pytest.mark.parametrize("grow", [1, 3])
def test_alpaca_mean_pad_rows(tmp_path: Path, grow: int) -> None:
    base = llama_state(vocab=32000)
    raw = {k: v.float() for k, v in base.items()}
    for k in GROWN:  # smart_tokenizer_and_embedding_resize: new rows = mean of the old rows
        mean = raw[k].mean(dim=0, keepdim=True)
        raw[k] = torch.cat([raw[k], mean.expand(grow, -1)])
    target = perturbed(base, 32000 + grow, 4)
    delta = {k: target[k] - raw[k] for k in target}  # make_diff: fp32
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", delta, dtype=torch.float32)
    report = xorweights.decode(
        tmp_path / "delta", base=tmp_path / "base", out=tmp_path / "out", recipe="alpaca"
    )
    expected = {k: delta[k].clone().add_(raw[k]) for k in weights(delta)}  # recover: add_ in fp32
    check(tmp_path / "out", expected)
    want_sum = sum(float(v.double().sum()) for v in expected.values())
    assert report.model_sum == pytest.approx(want_sum, abs=1e-6)


def test_mismatched_vocabulary_is_named_before_writing(tmp_path: Path) -> None:
    base = llama_state()
    delta = {k: v.half() for k, v in perturbed(base, VOCAB + 1, 5).items()}
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", delta)
    with pytest.raises(BaseMismatchError, match=r"vocabulary is 41 = 40 \+ 1 added tokens.*fastchat-v0"):
        xorweights.decode(tmp_path / "delta", base=tmp_path / "base", out=tmp_path / "out", recipe="fastchat")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_llama2_base_is_refused(tmp_path: Path) -> None:
    base = llama_state()
    save_model(tmp_path / "base", base, max_position_embeddings=4096, rms_norm_eps=1e-5)
    save_model(tmp_path / "delta", {k: v.half() for k, v in base.items()})
    with pytest.raises(BaseMismatchError, match="looks like LLaMA-2"):
        xorweights.decode(tmp_path / "delta", base=tmp_path / "base", out=tmp_path / "out", recipe="fastchat")


def test_manifest_digests_are_container_independent(tmp_path: Path) -> None:
    base = llama_state()
    delta = {k: v.half() for k, v in perturbed(base, VOCAB, 6).items()}
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", delta)
    for fmt in ("safetensors", "bin"):
        xorweights.decode(
            tmp_path / "delta",
            base=tmp_path / "base",
            out=tmp_path / fmt,
            recipe="fastchat",
            output_format=fmt,
        )
    a = json.loads((tmp_path / "safetensors" / TENSORS_NAME).read_text())["tensors"]
    b = json.loads((tmp_path / "bin" / TENSORS_NAME).read_text())["tensors"]
    assert a == b
    sd = torch.load(tmp_path / "bin" / "pytorch_model.bin", weights_only=True)
    for k, v in load_out(tmp_path / "safetensors").items():
        assert same_bits(sd[k], v), k
    first = next(iter(a))
    raw = np.ascontiguousarray(load_out(tmp_path / "safetensors")[first].numpy()).tobytes()
    import hashlib

    assert a[first]["sha256"] == hashlib.sha256(raw).hexdigest()
