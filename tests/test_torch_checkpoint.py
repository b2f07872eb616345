"""Real PyTorch checkpoints (`torch.save` zip files) through encode and decode."""

from __future__ import annotations

from pathlib import Path

import torch

import xorweights


def _save(folder: Path, state: dict[str, torch.Tensor], name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / name)


def test_decoded_checkpoint_loads_with_the_fine_tuned_tensors(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    base = {
        "model.embed_tokens.weight": torch.randn(320, 64, generator=g).half(),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(64, 64, generator=g).half(),
        "lm_head.weight": torch.randn(320, 64, generator=g).half(),
    }
    tuned = {k: (v.float() + 1e-3 * torch.randn(v.shape, generator=g)).half() for k, v in base.items()}
    for k in ("model.embed_tokens.weight", "lm_head.weight"):  # grown vocabulary
        tuned[k] = torch.cat([tuned[k], torch.randn(16, 64, generator=g).half()])
    _save(tmp_path / "base", base, "pytorch_model.bin")
    _save(tmp_path / "tuned", tuned, "pytorch_model.bin")
    assert (tmp_path / "tuned" / "pytorch_model.bin").stat().st_size > (
        tmp_path / "base" / "pytorch_model.bin"
    ).stat().st_size

    enc = xorweights.encode(
        tmp_path / "tuned",
        format="oasst",
        base=tmp_path / "base",
        out=tmp_path / "payload",
        with_checksums=True,
    )
    payload = (tmp_path / "payload" / "pytorch_model.bin").read_bytes()
    assert payload[:4] == b"\x00\x00\x00\x00"  # "PK\x03\x04" XOR "PK\x03\x04"
    dec = xorweights.decode(
        tmp_path / "payload", base=tmp_path / "base", out=tmp_path / "out", checksums=enc.manifest
    )
    assert dec.files[0].verified and dec.files[0].base_verified

    loaded = torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)
    assert loaded.keys() == tuned.keys()
    for k in tuned:
        assert torch.equal(loaded[k], tuned[k]), k
