"""Tiny LLaMA-shaped models and their additive deltas, made with torch for the delta tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

DIM, LAYERS, INTER, VOCAB = 8, 2, 24, 40


def llama_state(vocab: int = VOCAB, seed: int = 0, *, inv_freq: bool = True) -> dict[str, torch.Tensor]:
    """A LlamaForCausalLM state dict (HF names, state-dict order), float32 values of fp16 precision."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.5).half().float()

    sd = {"model.embed_tokens.weight": w(vocab, DIM)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for n in "qkvo":
            sd[f"{p}self_attn.{n}_proj.weight"] = w(DIM, DIM)
        if inv_freq:
            sd[f"{p}self_attn.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, 4, 2).float() / 4))
        sd[f"{p}mlp.gate_proj.weight"] = w(INTER, DIM)
        sd[f"{p}mlp.down_proj.weight"] = w(DIM, INTER)
        sd[f"{p}mlp.up_proj.weight"] = w(INTER, DIM)
        sd[f"{p}input_layernorm.weight"] = w(DIM)
        sd[f"{p}post_attention_layernorm.weight"] = w(DIM)
    sd["model.norm.weight"] = w(DIM)
    sd["lm_head.weight"] = w(vocab, DIM)
    return sd


def config(vocab: int, **extra: object) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": DIM,
        "intermediate_size": INTER,
        "num_attention_heads": 2,
        "num_hidden_layers": LAYERS,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab,
        "torch_dtype": "float16",
        **extra,
    }


def save_model(
    folder: Path,
    sd: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.float16,
    container: str = "bin",
    shards: int = 1,
    **config_extra: object,
) -> Path:
    """Write `sd` as an HF folder: `pytorch_model*.bin` (torch.save, sharded) or `model.safetensors`."""
    folder.mkdir(parents=True, exist_ok=True)
    cast = {k: (v if k.endswith("inv_freq") else v.to(dtype)).contiguous() for k, v in sd.items()}
    embed = sd.get("model.embed_tokens.weight")
    vocab = VOCAB if embed is None else embed.shape[0]
    (folder / "config.json").write_text(json.dumps(config(vocab, **config_extra), indent=2))
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}\n')
    if container == "safetensors":
        save_file(cast, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    names = list(cast)
    per = -(-len(names) // shards)
    groups = [names[i : i + per] for i in range(0, len(names), per)]
    if len(groups) == 1:
        torch.save(cast, folder / "pytorch_model.bin")
        return folder
    weight_map = {}
    for i, g in enumerate(groups, 1):
        fname = f"pytorch_model-{i:05d}-of-{len(groups):05d}.bin"
        torch.save({k: cast[k] for k in g}, folder / fname)
        weight_map.update(dict.fromkeys(g, fname))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return folder


def perturbed(
    base: dict[str, torch.Tensor], vocab: int, seed: int, extra: int = 0
) -> dict[str, torch.Tensor]:
    """A fine-tuned model: the base plus small noise, with `vocab` rows in the grown tensors."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in base.items():
        if k.endswith("inv_freq"):
            out[k] = v.clone()
            continue
        if k in ("model.embed_tokens.weight", "lm_head.weight") and vocab > v.shape[0]:
            v = torch.cat([v, torch.randn(vocab - v.shape[0], v.shape[1], generator=g) * 0.5])
        out[k] = v + torch.randn(v.shape, generator=g) * 0.01
    for i in range(extra):
        out[f"model.mm_projector.{'weight' if i == 0 else 'bias'}"] = torch.randn(
            (DIM, 6) if i == 0 else (DIM,), generator=g
        )
    return out
