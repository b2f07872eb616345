"""The pinned conversion's small files, rebuilt offline from the architecture alone, against the
digests published for the real releases."""

from __future__ import annotations

import hashlib
import json

import pytest

from xorweights import load_checksums
from xorweights.llama.layout import LlamaLayout, intermediate_size


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_sft6_hf_base_small_files_match_the_published_md5s() -> None:
    published = load_checksums("oasst-sft-6-llama-30b").stage("hf_base")
    files = LlamaLayout.preset("llama-30b").small_files()
    assert set(files) == {
        "config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "pytorch_model.bin.index.json",
    }
    for name, data in files.items():
        assert md5(data) == published[name].md5, name
    # The two named by the issue, spelled out.
    assert md5(files["pytorch_model.bin.index.json"]) == "fecfda4fba7bfd911e187a85db5fa2ef"
    assert md5(files["generation_config.json"]) == "aee09e21813368c49baaece120125ae3"


def test_30b_layout_shards_like_the_release() -> None:
    layout = LlamaLayout.preset("llama-30b")
    assert layout.total_size() == 65057902592
    assert layout.shard_names() == [f"pytorch_model-0000{i}-of-00007.bin" for i in range(1, 8)]
    index = json.loads(layout.index_json())
    assert (
        index["weight_map"]["model.layers.0.self_attn.rotary_emb.inv_freq"]
        == "pytorch_model-00001-of-00007.bin"
    )
    assert index["weight_map"]["lm_head.weight"] == "pytorch_model-00007-of-00007.bin"
    assert len(index["weight_map"]) == 2 + 60 * 10 + 1


def test_other_published_digests_reproduced() -> None:
    """Pygmalion 7B's decoded index and generation config, and sft-6's decoded generation config."""
    pyg = load_checksums("pygmalion-7b").stage("decoded")
    l7 = LlamaLayout.preset("llama-7b")
    assert md5(l7.index_json()) == pyg["pytorch_model.bin.index.json"].md5
    assert md5(l7.generation_config_json("4.28.0.dev0")) == pyg["generation_config.json"].md5
    assert md5(l7.special_tokens_map_json()) == pyg["special_tokens_map.json"].md5
    sft6 = load_checksums("oasst-sft-6-llama-30b").stage("decoded")
    assert md5(LlamaLayout.generation_config_json("4.28.0.dev0")) == sft6["generation_config.json"].md5


@pytest.mark.parametrize(("dim", "expected"), [(4096, 11008), (5120, 13824), (6656, 17920), (8192, 22016)])
def test_intermediate_size(dim: int, expected: int) -> None:
    assert intermediate_size(dim) == expected


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown layout"):
        LlamaLayout.preset("llama-3b")
