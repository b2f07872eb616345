"""The pinned conversion, rebuilt without torch: byte-exact against fixtures converted by the real
script (torch 2.0.1 + transformers 4.28.1; see tools/make_golden_fixtures.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from xorweights.checksums import parse_sum_lines
from xorweights.llama.convert import (
    HFCheckpoint,
    MetaCheckpoint,
    hf_tensors,
    inv_freq,
    open_base,
    write_shards,
)
from xorweights.llama.torch_save import save_state_dict
from xorweights.tensors.spec import TensorSpec

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = ["llama-tiny-1shard", "llama-tiny-2shard", "llama-tiny-4shard"]
VERSION = "4.28.1"  # the fixtures' transformers version, written into their config files


def expected(case: str) -> dict[str, str]:
    return parse_sum_lines((GOLDEN / case / "hf.md5").read_text())[1]


def hf_config(layout) -> str:
    """A config.json for an HF copy of `layout` (only the fields a copy needs)."""
    return json.dumps(
        {
            "model_type": "llama",
            "hidden_size": layout.dim,
            "num_hidden_layers": layout.n_layers,
            "num_attention_heads": layout.n_heads,
            "intermediate_size": layout.intermediate,
            "vocab_size": layout.vocab,
            "rms_norm_eps": 1e-6,
        }
    )


def convert(layout, compute, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    write_shards(layout, compute, lambda name: open(out / name, "wb"), str(out))
    (out / "config.json").write_bytes(layout.config_json(VERSION))
    (out / "generation_config.json").write_bytes(layout.generation_config_json(VERSION))
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in out.iterdir()}


@pytest.mark.parametrize("case", CASES)
def test_meta_format_converts_byte_exact(tmp_path: Path, case: str) -> None:
    layout, compute = open_base(GOLDEN / case / "meta")
    assert layout.num_shards == int(case.split("-")[-1][0])
    assert convert(layout, compute, tmp_path / "hf") == expected(case)


@pytest.mark.parametrize("case", CASES)
def test_safetensors_copy_resharded_differently_converts_byte_exact(tmp_path: Path, case: str) -> None:
    """Another copy of the same weights: safetensors, three shards split elsewhere, no inv_freq."""
    meta = MetaCheckpoint.open(GOLDEN / case / "meta")
    layout, compute = open_base(meta.folder)
    names = [n for n, _, _ in layout.tensors() if not n.endswith("inv_freq")]
    copy = tmp_path / "copy"
    copy.mkdir()
    for i, part in enumerate((names[::3], names[1::3], names[2::3])):
        save_file({n: np.ascontiguousarray(compute[n]()) for n in part}, str(copy / f"model-{i}.safetensors"))
    (copy / "config.json").write_text(hf_config(layout))
    layout2, compute2 = open_base(copy)
    assert layout2 == layout.__class__(**{**layout.__dict__, "num_shards": 1})
    got = convert(layout2, compute2, tmp_path / "hf")
    assert got == expected(case)


def test_float32_and_bin_copies_convert_byte_exact(tmp_path: Path) -> None:
    """An upcast float32 copy saved by today's torch in one .bin file gives the same bytes."""
    case = CASES[2]
    layout, compute = open_base(GOLDEN / case / "meta")
    copy = tmp_path / "copy"
    copy.mkdir()
    torch.save(
        {
            n: torch.from_numpy(np.ascontiguousarray(compute[n]()).astype(np.float32))
            for n, _, _ in layout.tensors()
        },
        copy / "pytorch_model.bin",
    )
    (copy / "config.json").write_text(hf_config(layout))
    ck = HFCheckpoint(copy)
    assert convert(ck.layout, hf_tensors(ck), tmp_path / "hf") == expected(case)


def test_inv_freq_matches_torch_for_every_head_size() -> None:
    table = json.loads((GOLDEN / "inv_freq.json").read_text())
    assert "128" in table
    for hd, hexs in table.items():
        assert inv_freq(int(hd)).tobytes().hex() == hexs, hd


def test_written_checkpoint_loads_in_current_torch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"b": rng.standard_normal((3, 5)).astype(np.float16), "a": np.arange(7, dtype=np.float32)}
    specs = [TensorSpec(n, "F16" if a.dtype == np.float16 else "F32", a.shape) for n, a in arrays.items()]
    from xorweights.llama.torch_save import record_order

    with open(tmp_path / "x.bin", "wb") as f:
        save_state_dict(f, "x", specs, ((s.name, [arrays[s.name].tobytes()]) for s in record_order(specs)))
    loaded = torch.load(tmp_path / "x.bin", weights_only=True)
    assert list(loaded) == ["b", "a"]
    for n, a in arrays.items():
        assert np.array_equal(loaded[n].numpy(), a)


def test_meta_folder_defects(tmp_path: Path) -> None:
    from xorweights.errors import FormatError, MissingFileError

    with pytest.raises(MissingFileError, match="no params.json"):
        MetaCheckpoint.open(tmp_path)
    (tmp_path / "params.json").write_text("{}")
    (tmp_path / "consolidated.01.pth").write_bytes(b"")
    with pytest.raises(FormatError, match="in sequence"):
        MetaCheckpoint.open(tmp_path)


def _weights_manifest(case: str, tmp_path: Path) -> Path:
    """The golden md5 of the converted weights as an hf_base manifest (its configs carry 4.28.1,
    the pinned conversion writes 4.29.0.dev0, so only the weights are compared here)."""
    m = tmp_path / "m.json"
    m.write_text(
        json.dumps(
            {
                "format": "xorweights-checksums/1",
                "release": case,
                "stages": {"hf_base": {"pytorch_model.bin": {"md5": expected(case)["pytorch_model.bin"]}}},
            }
        )
    )
    return m


def test_base_convert_verifies_as_it_writes(tmp_path: Path) -> None:
    import shutil

    from xorweights.llama.base import convert_base

    case = CASES[1]
    src = tmp_path / "meta"
    shutil.copytree(GOLDEN / case / "meta", src)
    tok = GOLDEN / "tokenizers" / "bpe-1000"
    shutil.copy(tok / "tokenizer.model", tmp_path / "tokenizer.model")  # Meta keeps it one level up
    report = convert_base(src, tmp_path / "out", checksums=_weights_manifest(case, tmp_path))
    by_name = {f.name: f for f in report.files}
    assert by_name["pytorch_model.bin"].verified
    assert set(report.unverified) == {
        "config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "tokenizer.json",
    }
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (tok / "tokenizer.model").read_bytes()
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (tok / "tokenizer.json").read_bytes()
    assert (
        hashlib.md5((tmp_path / "out" / "pytorch_model.bin").read_bytes()).hexdigest()
        == expected(case)["pytorch_model.bin"]
    )


def test_base_convert_names_the_file_and_tensors_of_a_mismatch(tmp_path: Path) -> None:
    import shutil

    from xorweights.errors import BaseMismatchError
    from xorweights.llama.base import convert_base

    case = CASES[0]
    src = tmp_path / "meta"
    shutil.copytree(GOLDEN / case / "meta", src)
    sd = torch.load(src / "consolidated.00.pth", weights_only=True)
    sd["layers.1.feed_forward.w2.weight"][0, 0] += 1  # not the weights the release was made from
    torch.save(sd, src / "consolidated.00.pth")
    with pytest.raises(BaseMismatchError) as info:
        convert_base(src, tmp_path / "out", checksums=_weights_manifest(case, tmp_path))
    msg = str(info.value)
    assert "generated base file pytorch_model.bin: md5" in msg and "model.embed_tokens.weight" in msg
    assert "lm_head.weight" in msg and str(src) in msg
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()
    out = tmp_path / "out"  # (a run that wrote nothing leaves no folder it made)
    assert not out.exists() or not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_base_convert_refuses_the_wrong_layout(tmp_path: Path) -> None:
    from xorweights.errors import InputError
    from xorweights.llama.base import convert_base

    with pytest.raises(InputError, match="not llama-30b"):
        convert_base(GOLDEN / CASES[0] / "meta", tmp_path / "out", layout="llama-30b")


def test_base_convert_cli(tmp_path: Path, capsys) -> None:
    from xorweights.cli import main

    case = CASES[2]
    code = main(
        [
            "base",
            "convert",
            "--from",
            str(GOLDEN / case / "meta"),
            "--out",
            str(tmp_path / "out"),
            "--checksums",
            str(_weights_manifest(case, tmp_path)),
            "--quiet",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)
    assert {f["name"]: f["verified"] for f in doc["files"]}["pytorch_model.bin"] is True


def test_base_convert_keeps_a_file_in_place_that_matches_the_release(tmp_path: Path) -> None:
    """A file not made by xorweights that hashes to its published digest is kept (and recorded),
    not regenerated; one that does not is refused without --force."""
    import shutil

    from xorweights.errors import OutputExistsError
    from xorweights.llama.base import convert_base

    case = CASES[1]
    manifest = _weights_manifest(case, tmp_path)
    convert_base(GOLDEN / case / "meta", tmp_path / "a", checksums=manifest)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "pytorch_model.bin", tmp_path / "b" / "pytorch_model.bin")
    before = (tmp_path / "b" / "pytorch_model.bin").stat().st_mtime_ns
    report = convert_base(GOLDEN / case / "meta", tmp_path / "b", checksums=manifest)
    by_name = {f.name: f for f in report.files}
    assert by_name["pytorch_model.bin"].verified and set(by_name["pytorch_model.bin"].digests) == {
        "md5",
        "sha256",
    }
    assert (tmp_path / "b" / "pytorch_model.bin").stat().st_mtime_ns == before
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="config.json"):
        convert_base(GOLDEN / case / "meta", tmp_path / "c", checksums=manifest)


@pytest.mark.parametrize(
    "field, value", [("dim", -1), ("n_layers", 10**9), ("n_heads", 0), ("n_heads", 3), ("dim", 1.5)]
)
def test_base_convert_refuses_impossible_params_before_writing(
    tmp_path: Path, field: str, value: object
) -> None:
    import shutil

    from xorweights.errors import FormatError
    from xorweights.llama.base import convert_base

    src = tmp_path / "meta"
    shutil.copytree(GOLDEN / CASES[0] / "meta", src)
    params = json.loads((src / "params.json").read_text())
    params[field] = value
    (src / "params.json").write_text(json.dumps(params))
    with pytest.raises(FormatError, match=f"params.json: not LLaMA params .*{field.replace('n_', '')}"):
        convert_base(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_base_convert_refuses_its_source_as_out_and_a_fifo_shard(tmp_path: Path) -> None:
    import os
    import shutil

    from xorweights.errors import InputError, UnsafePathError
    from xorweights.llama.base import convert_base

    src = tmp_path / "meta"
    shutil.copytree(GOLDEN / CASES[0] / "meta", src)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    with pytest.raises(InputError, match="`out` must differ from the source folder"):
        convert_base(src, src, force=True)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    (src / "consolidated.00.pth").unlink()
    os.mkfifo(src / "consolidated.00.pth")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        convert_base(src, tmp_path / "out")
