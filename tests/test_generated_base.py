"""Decode straight from Meta's files or any HF copy: the pinned conversion's bytes are generated
and streamed into the XOR pass, verified against the published hf_base digests, never written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import xorweights
from tests.conftest import tree
from xorweights.checksums import parse_sum_lines
from xorweights.llama.convert import open_base, write_shards

GOLDEN = Path(__file__).resolve().parent / "golden"
CASE = "llama-tiny-2shard"
TOKENIZER = "bpe-1000"


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Meta's folder (with tokenizer.model beside it), the exact base, a fine-tune, its payload
    and a manifest whose hf_base weights digest comes from the real conversion toolchain."""
    root = tmp_path_factory.mktemp("gen")
    meta = root / "LLaMA" / "tiny"
    shutil.copytree(GOLDEN / CASE / "meta", meta)
    shutil.copy(GOLDEN / "tokenizers" / TOKENIZER / "tokenizer.model", root / "LLaMA" / "tokenizer.model")
    layout, compute = open_base(meta)
    exact = root / "exact"
    exact.mkdir()
    write_shards(layout, compute, lambda n: open(exact / n, "wb"))
    for name, data in layout.small_files().items():
        (exact / name).write_bytes(data)
    shutil.copy(root / "LLaMA" / "tokenizer.model", exact / "tokenizer.model")
    shutil.copy(
        GOLDEN / "tokenizers" / TOKENIZER / "tokenizer.json", exact / "tokenizer.json"
    )  # real toolchain's
    golden = parse_sum_lines((GOLDEN / CASE / "hf.md5").read_text())[1]["pytorch_model.bin"]
    assert md5((exact / "pytorch_model.bin").read_bytes()) == golden

    tuned = root / "tuned"
    tuned.mkdir()
    rng = np.random.default_rng(7)
    for p in exact.iterdir():
        data = bytearray(p.read_bytes())
        for i in rng.integers(0, len(data), 50):
            data[i] ^= int(rng.integers(1, 256))
        (tuned / p.name).write_bytes(bytes(data) + (b"grown" * 99 if p.suffix == ".bin" else b""))
    (tuned / "added_tokens.json").write_text('{"<|prompter|>": 32000}\n')
    enc = xorweights.encode(
        tuned, format="oasst", base=exact, out=root / "payload", with_checksums=True, release="tiny"
    )
    manifest = enc.manifest.to_json()
    manifest["stages"]["hf_base"]["pytorch_model.bin"] = {"md5": golden}  # the real toolchain's digest
    assert manifest["stages"]["hf_base"]["tokenizer.json"]["md5"] == md5(
        (GOLDEN / "tokenizers" / TOKENIZER / "tokenizer.json").read_bytes()
    )
    (root / "m.json").write_text(json.dumps(manifest))
    return {
        "meta": meta,
        "exact": exact,
        "tuned": tuned,
        "payload": root / "payload",
        "manifest": root / "m.json",
        "root": root,
    }


def test_decode_from_meta_files_streams_the_base(release, tmp_path: Path) -> None:
    before = set(tree(release["root"] / "LLaMA"))
    report = xorweights.decode(
        release["payload"], base=release["meta"], out=tmp_path / "out", checksums=release["manifest"]
    )
    assert tree(tmp_path / "out") == tree(release["tuned"])
    assert all(f.base_verified for f in report.files if f.action == "xor")
    assert all(f.verified for f in report.files)
    assert set(tree(release["root"] / "LLaMA")) == before  # nothing written beside the source
    assert {p.name for p in (tmp_path / "out").iterdir()} == {*tree(release["tuned"]), ".cache"}


def test_decode_from_a_resharded_safetensors_copy(release, tmp_path: Path) -> None:
    layout, compute = open_base(release["meta"])
    copy = tmp_path / "hf-copy"
    copy.mkdir()
    names = [n for n, _, _ in layout.tensors() if not n.endswith("inv_freq")]
    for i, part in enumerate((names[:5], names[5:])):
        save_file(
            {n: np.ascontiguousarray(compute[n]()) for n in part}, str(copy / f"model-0000{i}.safetensors")
        )
    (copy / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": layout.dim,
                "num_hidden_layers": layout.n_layers,
                "num_attention_heads": layout.n_heads,
                "intermediate_size": layout.intermediate,
            }
        )
    )
    shutil.copy(release["root"] / "LLaMA" / "tokenizer.model", copy / "tokenizer.model")
    xorweights.decode(release["payload"], base=copy, out=tmp_path / "out", checksums=release["manifest"])
    assert tree(tmp_path / "out") == tree(release["tuned"])


def test_exact_base_files_are_used_as_they_are(release, tmp_path: Path) -> None:
    report = xorweights.decode(
        release["payload"],
        base=release["exact"],
        out=tmp_path / "out",
        checksums=release["manifest"],
        base_mode="auto",
    )
    assert tree(tmp_path / "out") == tree(release["tuned"])
    assert all(f.base_verified for f in report.files if f.action == "xor")


def test_other_llama_weights_are_named_as_the_cause(release, tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    shutil.copytree(release["meta"], meta)
    (tmp_path / "tokenizer.model").write_bytes((release["root"] / "LLaMA" / "tokenizer.model").read_bytes())
    sd = torch.load(meta / "consolidated.01.pth", weights_only=True)
    sd["layers.0.attention.wv.weight"][3, 3] += 1
    torch.save(sd, meta / "consolidated.01.pth")
    with pytest.raises(xorweights.BaseMismatchError) as info:
        xorweights.decode(
            release["payload"], base=meta, out=tmp_path / "out", checksums=release["manifest"], jobs=1
        )
    msg = str(info.value)
    assert msg.startswith(f"base file pytorch_model.bin generated from {meta}: md5")
    assert (
        f"{meta} is not the LLaMA copy the release was made from (it holds model.embed_tokens.weight" in msg
    )
    assert "lm_head.weight (23 tensors)" in msg
    assert "pytorch_model.bin" not in tree(tmp_path / "out")


def test_generate_mode_needs_llama_weights(release, tmp_path: Path) -> None:
    with pytest.raises(xorweights.InputError, match="no LLaMA weights"):
        xorweights.decode(release["payload"], base=release["tuned"], out=tmp_path / "o", base_mode="generate")


def test_cli_decode_with_generated_base(release, tmp_path: Path, capsys) -> None:
    from xorweights.cli import main

    code = main(
        [
            "decode",
            str(release["payload"]),
            "--base",
            str(release["meta"]),
            "--out",
            str(tmp_path / "o"),
            "--checksums",
            str(release["manifest"]),
            "--base-mode",
            "generate",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "verified against tiny: 8 outputs, 7 base files" in out
    assert tree(tmp_path / "o") == tree(release["tuned"])


def test_tokenizer_json_is_derived_and_verified(release, tmp_path: Path) -> None:
    report = xorweights.decode(
        release["payload"], base=release["meta"], out=tmp_path / "out", checksums=release["manifest"]
    )
    tok = next(f for f in report.files if f.name == "tokenizer.json")
    golden = md5((GOLDEN / "tokenizers" / TOKENIZER / "tokenizer.json").read_bytes())
    assert tok.action == "xor" and tok.base_verified and tok.base_digests["md5"] == golden
    assert not (release["meta"] / "tokenizer.json").exists()


def test_another_tokenizer_model_is_named_as_the_cause(release, tmp_path: Path) -> None:
    root = tmp_path / "LLaMA"
    shutil.copytree(release["meta"], root / "tiny")
    other = GOLDEN / "tokenizers" / "bpe-600-nosplitdigits" / "tokenizer.model"
    shutil.copy(other, root / "tokenizer.model")
    manifest = json.loads(release["manifest"].read_text())
    del manifest["stages"]["hf_base"]["tokenizer.model"]  # only the derived file can catch it now
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with pytest.raises(xorweights.BaseMismatchError) as info:
        xorweights.decode(
            release["payload"],
            base=root / "tiny",
            out=tmp_path / "out",
            checksums=tmp_path / "m.json",
            jobs=1,
        )
    msg = str(info.value)
    assert "tokenizer.json" in msg and f"it is derived from {root / 'tokenizer.model'}" in msg
    assert "tokenizer.json" not in tree(tmp_path / "out")
