"""Each recipe recovers, from a delta made in the test, the tensors torch computes the peer's way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import xorweights
from tests.delta_models import VOCAB, llama_state, perturbed, save_model
from xorweights.delta import recipes
from xorweights.errors import IncompatibleBaseError
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
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def weights(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.endswith("inv_freq")}


def check(out_dir: Path, expected: dict[str, torch.Tensor]) -> None:
    got = load_out(out_dir)
    assert list(got) == sorted(expected) or set(got) == set(expected)
    for k, v in expected.items():
        assert same_bits(got[k], v.contiguous()), k
    manifest = load_tensor_manifest(out_dir / TENSORS_NAME)
    assert set(manifest.tensors) == set(expected)


@pytest.mark.parametrize("use_torch", [True, False], ids=["torch-add", "numpy-add"])
@pytest.mark.parametrize("base_dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_fastchat_fp16_add(
    tmp_path: Path, base_dtype: torch.dtype, use_torch: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recipes, "USE_TORCH", use_torch)
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
def test_fastchat_v0_zero_rows(tmp_path: Path, grow: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recipes, "USE_TORCH", grow == 3)  # both fp16 paths see -0 + 0
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
    # Alpaca's own figure: sum(param.sum() for param in state_dict.values()) in float32, over the
    # recovered state dict of 2023, which still held the rotary inv_freq buffers (delta + base).
    recovered = {k: delta[k] + raw[k] for k in delta}
    want_sum = float(sum(v.sum() for v in recovered.values()))
    assert report.model_sum == pytest.approx(want_sum, rel=1e-6)
    assert report.model_sum != pytest.approx(float(sum(v.sum() for v in expected.values())), rel=1e-6)


def test_mismatched_vocabulary_is_named_before_writing(tmp_path: Path) -> None:
    base = llama_state()
    delta = {k: v.half() for k, v in perturbed(base, VOCAB + 1, 5).items()}
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", delta)
    with pytest.raises(IncompatibleBaseError, match=r"vocabulary is 41 = 40 \+ 1 added tokens.*fastchat-v0"):
        xorweights.decode(tmp_path / "delta", base=tmp_path / "base", out=tmp_path / "out", recipe="fastchat")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_llama2_base_is_refused(tmp_path: Path) -> None:
    base = llama_state()
    save_model(tmp_path / "base", base, max_position_embeddings=4096, rms_norm_eps=1e-5)
    save_model(tmp_path / "delta", {k: v.half() for k, v in base.items()})
    with pytest.raises(IncompatibleBaseError, match="looks like LLaMA-2"):
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


def meta_to_hf(folder: Path) -> dict[str, torch.Tensor]:
    """The HF tensors of Meta's model-parallel checkpoint, converted here with torch as
    transformers' convert_llama_weights_to_hf does (concatenation, rotary permutation)."""
    params = json.loads((folder / "params.json").read_text())
    shards = [torch.load(p, weights_only=True) for p in sorted(folder.glob("consolidated.*.pth"))]
    dim, heads = params["dim"], params["n_heads"]

    def cat(name: str, axis: int) -> torch.Tensor:
        return torch.cat([s[name] for s in shards], dim=axis)

    def permute(w: torch.Tensor) -> torch.Tensor:
        return w.view(heads, dim // heads // 2, 2, dim).transpose(1, 2).reshape(dim, dim)

    hf = {"model.embed_tokens.weight": cat("tok_embeddings.weight", 1)}
    for i in range(params["n_layers"]):
        m, h = f"layers.{i}.", f"model.layers.{i}."
        hf[f"{h}self_attn.q_proj.weight"] = permute(cat(f"{m}attention.wq.weight", 0))
        hf[f"{h}self_attn.k_proj.weight"] = permute(cat(f"{m}attention.wk.weight", 0))
        hf[f"{h}self_attn.v_proj.weight"] = cat(f"{m}attention.wv.weight", 0)
        hf[f"{h}self_attn.o_proj.weight"] = cat(f"{m}attention.wo.weight", 1)
        hf[f"{h}mlp.gate_proj.weight"] = cat(f"{m}feed_forward.w1.weight", 0)
        hf[f"{h}mlp.down_proj.weight"] = cat(f"{m}feed_forward.w2.weight", 1)
        hf[f"{h}mlp.up_proj.weight"] = cat(f"{m}feed_forward.w3.weight", 0)
        hf[f"{h}input_layernorm.weight"] = shards[0][f"{m}attention_norm.weight"]
        hf[f"{h}post_attention_layernorm.weight"] = shards[0][f"{m}ffn_norm.weight"]
    hf["model.norm.weight"] = shards[0]["norm.weight"]
    hf["lm_head.weight"] = cat("output.weight", 0)
    return hf


def test_meta_original_base(tmp_path: Path) -> None:
    meta = Path(__file__).parent / "golden" / "llama-tiny-2shard" / "meta"
    hf = meta_to_hf(meta)
    g = torch.Generator().manual_seed(11)
    delta = {k: (torch.randn(v.shape, generator=g) * 0.01).half() for k, v in hf.items()}
    inter = hf["model.layers.0.mlp.gate_proj.weight"].shape[0]
    save_model(tmp_path / "delta", delta, hidden_size=16, intermediate_size=inter)
    xorweights.decode(
        tmp_path / "delta", base=meta, out=tmp_path / "out", recipe="fastchat", output_format="bin"
    )
    got = torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)
    assert set(got) == set(hf)
    for k, v in hf.items():
        assert same_bits(got[k], v.half() + delta[k]), k


def easylm_file(path: Path, params: dict[tuple[str, ...], torch.Tensor]) -> None:
    """An EasyLM streaming checkpoint as EasyLM writes one: msgpack `(key, to_bytes(array))` records,
    `to_bytes` being flax's ext type 1 of `(shape, dtype name, raw bytes)`."""
    import msgpack

    names = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
    packer = msgpack.Packer()
    with open(path, "wb") as f:
        for key, t in params.items():
            raw = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
            record = msgpack.packb((list(t.shape), names[t.dtype], raw), use_bin_type=True)
            f.write(packer.pack((key, msgpack.packb(msgpack.ExtType(1, record)))))


def test_koala_easylm_diff(tmp_path: Path) -> None:
    base = weights(llama_state())
    heads, dim = 2, 8
    g = torch.Generator().manual_seed(12)
    to_hf = {  # EasyLM key -> (HF name, kernel stored transposed, q/k permuted)
        ("transformer", "wte", "embedding"): ("model.embed_tokens.weight", False, False),
        ("transformer", "ln_f", "kernel"): ("model.norm.weight", False, False),
        ("lm_head", "kernel"): ("lm_head.weight", True, False),
    }
    parts = {
        "wq": ("attention", "self_attn.q_proj"),
        "wk": ("attention", "self_attn.k_proj"),
        "wv": ("attention", "self_attn.v_proj"),
        "wo": ("attention", "self_attn.o_proj"),
        "w1": ("feed_forward", "mlp.gate_proj"),
        "w2": ("feed_forward", "mlp.down_proj"),
        "w3": ("feed_forward", "mlp.up_proj"),
    }
    for i in range(2):
        for w, (group, hf) in parts.items():
            to_hf[("transformer", "h", str(i), group, w, "kernel")] = (
                f"model.layers.{i}.{hf}.weight",
                True,
                w in "wqwk",
            )
        to_hf[("transformer", "h", str(i), "attention_norm", "kernel")] = (
            f"model.layers.{i}.input_layernorm.weight",
            False,
            False,
        )
        to_hf[("transformer", "h", str(i), "ffn_norm", "kernel")] = (
            f"model.layers.{i}.post_attention_layernorm.weight",
            False,
            False,
        )

    def permute(w: torch.Tensor) -> torch.Tensor:  # convert_easylm_to_hf's
        return w.view(heads, dim // heads // 2, 2, dim).transpose(1, 2).reshape(dim, dim)

    diff, expected = {}, {}
    for key, (name, transposed, rotary) in sorted(to_hf.items()):  # diff_checkpoint writes sorted keys
        hf_shape = base[name].shape
        meta = (torch.randn(hf_shape, generator=g) * 0.01).bfloat16()  # Meta's layout, bf16 diff
        diff[key] = meta.T.contiguous() if transposed else meta
        hf_diff = permute(meta) if rotary else meta
        # diff_checkpoint: fp16 base + bf16 diff in fp32, saved bf16; the layout change moves values only.
        expected[name] = (base[name].half().float() + hf_diff.float()).bfloat16()
    easylm_file(tmp_path / "koala_7b_diff_v2", diff)
    save_model(tmp_path / "base", base, num_attention_heads=heads)
    xorweights.decode(
        tmp_path / "koala_7b_diff_v2", base=tmp_path / "base", out=tmp_path / "out", recipe="koala"
    )
    check(tmp_path / "out", expected)
    got = load_out(tmp_path / "out")
    assert got["model.embed_tokens.weight"].dtype == torch.bfloat16


def test_fp16_add_numpy_and_torch_agree_on_every_value(monkeypatch: pytest.MonkeyPatch) -> None:
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    partners = (
        np.random.default_rng(0).integers(0, 65536, 256, dtype=np.uint32).astype(np.uint16).view(np.float16)
    )
    a = np.repeat(every, partners.size).reshape(-1, partners.size)
    b = np.broadcast_to(partners, a.shape)
    monkeypatch.setattr(recipes, "USE_TORCH", True)
    with_torch = recipes.fp16_add(a, b)
    monkeypatch.setattr(recipes, "USE_TORCH", False)
    with_numpy = recipes.fp16_add(a, b)
    both_nan = np.isnan(a) & np.isnan(b)  # which payload survives NaN + NaN differs among torch's own kernels
    assert np.array_equal(with_torch.view(np.uint16)[~both_nan], with_numpy.view(np.uint16)[~both_nan])
    assert np.isnan(with_torch[both_nan]).all() and np.isnan(with_numpy[both_nan]).all()


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (
            "drop",
            "lacks 2 of the delta's tensors (model.layers.1.mlp.up_proj.weight, model.norm.weight): "
            "a conversion that dropped them",
        ),
        (
            "rename",
            "its tensors have other names (layers.0.input_layernorm.weight, ...): a conversion that renamed "
            "them",
        ),
        ("13b", "the base is LLaMA-7B, the delta is for LLaMA-13B"),
    ],
)
def test_a_wrong_base_is_named_before_writing(tmp_path: Path, change: str, said: str) -> None:
    base = weights(llama_state())
    delta = {k: v.half() for k, v in base.items()}
    if change == "drop":
        base = {
            k: v
            for k, v in base.items()
            if k not in ("model.norm.weight", "model.layers.1.mlp.up_proj.weight")
        }
    elif change == "rename":
        base = {
            k.replace("model.embed_tokens", "tok_embeddings").replace("model.", ""): v
            for k, v in base.items()
        }
    else:  # widths of real sizes: the cause names them
        base = {"model.norm.weight": torch.zeros(4096)}
        delta = {"model.norm.weight": torch.zeros(5120).half()}
    save_model(tmp_path / "base", base, container="safetensors")
    save_model(tmp_path / "delta", delta)
    with pytest.raises(IncompatibleBaseError, match=re.escape(said)):
        xorweights.decode(tmp_path / "delta", base=tmp_path / "base", out=tmp_path / "out", recipe="fastchat")
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_empty_and_scalar_tensors(tmp_path: Path) -> None:
    base = llama_state()
    base["extra.weight"] = torch.zeros(0, 8)
    base["scale"] = torch.tensor(1.5)
    delta = {k: (v * 0.25).half() for k, v in base.items()}
    save_model(tmp_path / "base", base, container="safetensors")
    save_model(tmp_path / "delta", delta)
    xorweights.decode(tmp_path / "delta", base=tmp_path / "base", out=tmp_path / "out", recipe="fastchat")
    check(tmp_path / "out", {k: base[k].half() + delta[k] for k in weights(delta)})


def test_alpaca_with_a_bf16_base(tmp_path: Path) -> None:
    base = weights(llama_state(vocab=300))
    raw = {k: v.bfloat16().float() for k, v in base.items()}  # the peer loads the bf16 copy as fp32
    for k in GROWN:
        raw[k] = torch.cat([raw[k], raw[k].mean(dim=0, keepdim=True)])
    delta = {k: t - raw[k] for k, t in perturbed(base, 301, 14).items()}
    save_model(tmp_path / "base", base, dtype=torch.bfloat16, container="safetensors")
    save_model(tmp_path / "delta", delta, dtype=torch.float32)
    xorweights.decode(tmp_path / "delta", base=tmp_path / "base", out=tmp_path / "out", recipe="alpaca")
    check(tmp_path / "out", {k: delta[k] + raw[k] for k in delta})


@pytest.mark.parametrize(
    ("params", "llama2"),
    [
        ({"dim": 4096, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-06}, False),  # LLaMA-1 7B
        ({"dim": 8192, "n_heads": 64, "n_layers": 80, "norm_eps": 1e-05}, False),  # LLaMA-1 65B
        ({"dim": 4096, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05}, True),  # LLaMA-2 7B
        ({"dim": 8192, "n_heads": 64, "n_kv_heads": 8, "n_layers": 80, "norm_eps": 1e-05}, True),  # 70B
    ],
)
def test_llama2_is_told_from_meta_params(tmp_path: Path, params: dict[str, object], llama2: bool) -> None:
    from xorweights.delta.checks import _refuse_llama2

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "params.json").write_text(json.dumps(params))
    if llama2:
        with pytest.raises(IncompatibleBaseError, match="looks like LLaMA-2"):
            _refuse_llama2(tmp_path, tmp_path / "base")
    else:
        _refuse_llama2(tmp_path, tmp_path / "base")
