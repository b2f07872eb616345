"""Deltas decoded by repo id from the test Hub server: the recipe comes from the registry, the
weight files are checked against the Hub's sha256, a published sum is checked before commit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import xorweights
from tests.delta_models import VOCAB, llama_state, perturbed, save_model
from tests.hubserver import TOKEN, HubServer
from xorweights.delta.registry import find_delta_release
from xorweights.errors import ChecksumMismatchError, PayloadMismatchError

pytestmark = pytest.mark.hub


def kw(hub: HubServer, tmp_path: Path) -> dict[str, object]:
    return {"endpoint": hub.url, "cache_dir": tmp_path / "hf-cache", "token": TOKEN}


def alpaca_farm_delta(tmp_path: Path, published_sum: float | None) -> tuple[Path, float]:
    """An AlpacaFarm-style fp32 diff (vocabulary + 1, mean [PAD] rows) and its recovered sum."""
    base = llama_state(vocab=VOCAB)
    raw = {k: v.float() for k, v in base.items()}
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        raw[k] = torch.cat([raw[k], raw[k].mean(dim=0, keepdim=True)])
    target = perturbed(base, VOCAB + 1, 9)
    diff = {k: target[k] - raw[k] for k in target}
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", diff, dtype=torch.float32)
    total = float(sum((diff[k] + raw[k]).sum() for k in diff))  # as AlpacaFarm sums: buffers included
    value = total if published_sum is None else published_sum
    (tmp_path / "delta" / "model_sum.txt").write_text(f"{value}\n")
    return tmp_path / "delta", total


def test_a_known_release_by_repo_id_checks_its_published_sum(hub, tmp_path) -> None:
    repo = "tatsu-lab/alpaca-farm-sft10k-wdiff"
    assert find_delta_release(repo).recipe == "alpaca"
    delta, total = alpaca_farm_delta(tmp_path, None)
    hub.state.add_folder(repo, delta)
    report = xorweights.decode(repo, base=tmp_path / "base", out=tmp_path / "out", **kw(hub, tmp_path))
    assert report.format == "delta:alpaca" and report.release == repo
    assert report.model_sum == pytest.approx(total, rel=1e-6)
    assert report.model_sum_expected == pytest.approx(total)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert report.source and report.source.startswith(repo + "@")


def test_a_sum_that_disagrees_commits_nothing(hub, tmp_path) -> None:
    repo = "tatsu-lab/alpaca-farm-ppo-human-wdiff"
    delta, total = alpaca_farm_delta(tmp_path, published_sum=12345.0)
    hub.state.add_folder(repo, delta)
    with pytest.raises(ChecksumMismatchError, match="sum to .* publishes 12345.0"):
        xorweights.decode(repo, base=tmp_path / "base", out=tmp_path / "out", **kw(hub, tmp_path))
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_weight_files_are_checked_against_the_hub_before_use(hub, tmp_path) -> None:
    repo = "lmsys/vicuna-7b-delta-v1.1"
    base = llama_state()
    delta = {k: v.half() for k, v in perturbed(base, VOCAB, 10).items()}
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", delta, shards=2)
    hub.state.add_folder(repo, tmp_path / "delta")
    hub.state.tamper(repo, "pytorch_model-00002-of-00002.bin")
    with pytest.raises(PayloadMismatchError, match="pytorch_model-00002-of-00002.bin"):
        xorweights.decode(repo, base=tmp_path / "base", out=tmp_path / "out", **kw(hub, tmp_path))
    assert not list((tmp_path / "out").glob("*.safetensors"))
