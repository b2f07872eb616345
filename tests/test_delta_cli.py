"""`xorweights decode --recipe` and `xorweights verify --checksums xorweights-tensors.json` from the
command line: a recovery, a third-party copy in another container checked tensor by tensor, and
bad inputs as one line each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.delta_models import VOCAB, llama_state, perturbed, save_model
from xorweights.cli import main
from xorweights.tensor_manifest import TENSORS_NAME


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def recovered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, dict[str, torch.Tensor]]:
    base = llama_state()
    target = {k: v.half() for k, v in perturbed(base, VOCAB, 7).items()}
    delta = {k: target[k] - base[k].half() for k in target}
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", delta, shards=2)
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys,
        "decode",
        tmp_path / "delta",
        "--base",
        tmp_path / "base",
        "--out",
        out,
        "--recipe",
        "fastchat",
    )
    assert code == 0, err
    assert "recovered with recipe fastchat" in stdout
    assert (out / "model.safetensors").is_file() and (out / TENSORS_NAME).is_file()
    expected = {k: base[k].half() + delta[k] for k in delta if not k.endswith("inv_freq")}
    return out, expected


def test_verify_a_copy_in_another_container(tmp_path, capsys, recovered) -> None:
    out, expected = recovered
    # A third party's merge: fp32 upcast (exact), `.bin`, three shards, extra buffers.
    copy = {**expected, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(2)}
    save_model(tmp_path / "copy", copy, dtype=torch.float32, shards=3)
    code, stdout, _ = run(capsys, "verify", tmp_path / "copy", "--checksums", out / TENSORS_NAME)
    assert code == 0, stdout
    assert f"OK: {len(expected)}/{len(expected)} tensors" in stdout


def test_verify_names_the_tensor_that_differs(tmp_path, capsys, recovered) -> None:
    out, expected = recovered
    bad = dict(expected)
    bad["model.layers.1.mlp.up_proj.weight"] = bad["model.layers.1.mlp.up_proj.weight"].clone()
    bad["model.layers.1.mlp.up_proj.weight"][3, 2] += 1
    del bad["model.norm.weight"]
    save_model(tmp_path / "copy", bad, container="safetensors")
    code, stdout, _ = run(capsys, "verify", tmp_path / "copy", "--checksums", out / TENSORS_NAME)
    assert code == 1
    assert "MISMATCH model.layers.1.mlp.up_proj.weight: sha256" in stdout
    assert "MISSING  model.norm.weight" in stdout
    assert "ok " not in stdout  # tensors that match are counted, not listed


def test_verify_refuses_a_rounded_copy(tmp_path, capsys, recovered) -> None:
    out, expected = recovered
    rounded = {k: v.float() + 1e-6 for k, v in expected.items()}  # fp32 values fp16 cannot hold
    save_model(tmp_path / "copy", rounded, dtype=torch.float32, container="safetensors")
    code, stdout, _ = run(capsys, "verify", tmp_path / "copy", "--checksums", out / TENSORS_NAME)
    assert code == 1
    assert "MISMATCH model.embed_tokens.weight: dtype F32 (values F16 cannot hold), expected F16" in stdout


def test_json_report_and_rerun_keeps_outputs(tmp_path, capsys, recovered) -> None:
    out, _ = recovered
    before = (out / TENSORS_NAME).read_bytes()
    code, stdout, err = run(
        capsys,
        "decode",
        tmp_path / "delta",
        "--base",
        tmp_path / "base",
        "--out",
        out,
        "--recipe",
        "fastchat",
        "--json",
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["format"] == "delta:fastchat"
    assert all(f["kept"] for f in report["files"])
    assert (out / TENSORS_NAME).read_bytes() == before  # digests of the kept files, hashed again


def test_wrong_base_is_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    base = llama_state()
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", {k: v.half() for k, v in perturbed(base, VOCAB + 3, 8).items()})
    code, stdout, err = run(
        capsys,
        "decode",
        tmp_path / "delta",
        "--base",
        tmp_path / "base",
        "--out",
        tmp_path / "out",
        "--recipe",
        "fastchat-v0",
    )
    assert code == 0, err  # v0 grows any number of rows
    code, stdout, err = run(
        capsys,
        "decode",
        tmp_path / "delta",
        "--base",
        tmp_path / "base",
        "--out",
        tmp_path / "out2",
        "--recipe",
        "fastchat",
    )
    assert code == 2  # a wrong recipe is bad input, not a mismatch
    assert len(err.strip().splitlines()) == 1
    assert "model.embed_tokens.weight is [40, 8] in the base, [43, 8] in the delta" in err
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").glob("*.safetensors"))


def test_a_killed_recovery_resumes_and_ends_as_an_uninterrupted_one(tmp_path, capsys) -> None:
    import subprocess
    import sys

    from tests import die_after_rename
    from tests.conftest import tree

    base = llama_state()
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", {k: v.half() for k, v in perturbed(base, VOCAB, 13).items()})
    common = [
        "--base",
        tmp_path / "base",
        "--recipe",
        "fastchat",
        "--max-shard-size",
        "1000",
        "-j",
        "1",
        "-q",
    ]
    code, _, err = run(capsys, "decode", tmp_path / "delta", "--out", tmp_path / "ref", *common)
    assert code == 0, err
    shards = sorted(p.name for p in (tmp_path / "ref").glob("model-*.safetensors"))
    assert len(shards) >= 3
    out = str(tmp_path / "out")
    args = [
        sys.executable,
        "-m",
        "xorweights.cli",
        "decode",
        str(tmp_path / "delta"),
        "--out",
        out,
        *map(str, common),
    ]
    killed = subprocess.run(die_after_rename.command(2, args), capture_output=True)
    assert killed.returncode == 9
    assert not list((tmp_path / "out").glob("model*.safetensors"))  # staged: nothing is in place yet
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr

    def visible(folder: Path) -> dict[str, bytes]:  # the folder's own records differ (times, order)
        return {n: b for n, b in tree(folder).items() if not n.startswith(".")}

    assert visible(tmp_path / "out") == visible(tmp_path / "ref")


def test_checksums_given_as_a_tensor_manifest_are_met_before_commit(tmp_path, capsys, recovered) -> None:
    out, _ = recovered
    args = ["decode", tmp_path / "delta", "--base", tmp_path / "base", "--recipe", "fastchat", "--quiet"]
    code, _, err = run(capsys, *args, "--out", tmp_path / "again", "--checksums", out / TENSORS_NAME)
    assert code == 0, err
    other = json.loads((out / TENSORS_NAME).read_text())
    other["tensors"]["model.norm.weight"]["sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    code, _, err = run(capsys, *args, "--out", tmp_path / "wrong", "--checksums", tmp_path / "other.json")
    assert code == 1 and "1 tensors differ" in err and "model.norm.weight" in err
    assert not list((tmp_path / "wrong").glob("*.safetensors"))
    code, _, err = run(capsys, *args, "--out", tmp_path / "bad", "--checksums", "oasst-sft-6-llama-30b")
    assert code == 2 and "a delta recovery takes" in err


def test_another_base_of_the_same_size_is_not_kept(tmp_path, capsys, recovered) -> None:
    out, _ = recovered
    before = json.loads((out / TENSORS_NAME).read_text())["tensors"]
    other = llama_state(seed=99)  # same shapes and sizes, other values
    save_model(tmp_path / "base2", other)
    code, _, err = run(
        capsys,
        "decode",
        tmp_path / "delta",
        "--base",
        tmp_path / "base2",
        "--out",
        out,
        "--recipe",
        "fastchat",
    )
    assert code == 0, err
    after = json.loads((out / TENSORS_NAME).read_text())
    assert after["base"] == str(tmp_path / "base2")
    assert after["tensors"]["model.norm.weight"] != before["model.norm.weight"]
    code, stdout, _ = run(capsys, "verify", out, "--checksums", out / TENSORS_NAME)
    assert code == 0, stdout


def test_an_output_folder_of_another_layout_is_refused(tmp_path, capsys, recovered) -> None:
    out, _ = recovered
    code, _, err = run(
        capsys,
        "decode",
        tmp_path / "delta",
        "--base",
        tmp_path / "base",
        "--out",
        out,
        "--recipe",
        "fastchat",
        "--max-shard-size",
        "1000",
    )
    assert code == 2 and "model.safetensors" in err and "another layout" in err


def test_the_cli_offers_every_recipe() -> None:
    from xorweights.cli.decode import decode_cmd
    from xorweights.delta.recipes import RECIPES

    (option,) = [p for p in decode_cmd.params if p.name == "recipe"]
    assert list(option.type.choices) == list(RECIPES)  # type: ignore[attr-defined]


def test_an_easylm_diff_under_another_recipe_is_told(tmp_path, capsys) -> None:
    golden = Path(__file__).parent / "golden"
    base = golden / "llama-tiny-1shard" / "meta"
    delta = golden / "delta" / "koala" / "delta"
    code, _, err = run(
        capsys, "decode", delta, "--base", base, "--out", tmp_path / "out", "--recipe", "fastchat"
    )
    assert code == 2 and err.strip().endswith("it holds an EasyLM diff: --recipe koala?")


def test_a_hand_edited_manifest_is_not_trusted_on_a_rerun(tmp_path, capsys, recovered) -> None:
    out, _ = recovered
    good = (out / TENSORS_NAME).read_bytes()
    doc = json.loads(good)
    doc["tensors"]["model.norm.weight"]["sha256"] = "0" * 64
    (out / TENSORS_NAME).write_text(json.dumps(doc, indent=2) + "\n")
    code, _, err = run(
        capsys,
        "decode",
        tmp_path / "delta",
        "--base",
        tmp_path / "base",
        "--out",
        out,
        "--recipe",
        "fastchat",
    )
    assert code == 0, err
    assert json.loads((out / TENSORS_NAME).read_bytes())["tensors"] == json.loads(good)["tensors"]


def test_shards_staged_by_an_interrupted_run_are_hashed_not_taken_from_the_old_manifest(
    tmp_path, capsys
) -> None:
    import subprocess
    import sys

    from tests import die_after_rename

    base = llama_state()
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", {k: v.half() for k, v in perturbed(base, VOCAB, 15).items()})
    common = ["--recipe", "fastchat", "--max-shard-size", "1000", "-j", "1", "-q"]
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "decode", tmp_path / "delta", "--base", tmp_path / "base", "--out", out, *common
    )
    assert code == 0, err
    save_model(tmp_path / "base", llama_state(seed=5))  # the same files, other values, in place
    save_model(tmp_path / "ref-base", llama_state(seed=5))
    code, _, err = run(
        capsys,
        "decode",
        tmp_path / "delta",
        "--base",
        tmp_path / "ref-base",
        "--out",
        tmp_path / "ref",
        *common,
    )
    assert code == 0, err
    args = [
        sys.executable,
        "-m",
        "xorweights.cli",
        "decode",
        str(tmp_path / "delta"),
        "--base",
        str(tmp_path / "base"),
        "--out",
        str(out),
        *common,
    ]
    killed = subprocess.run(die_after_rename.command(3, args), capture_output=True)
    assert killed.returncode == 9
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    got = json.loads((out / TENSORS_NAME).read_text())["tensors"]
    assert got == json.loads((tmp_path / "ref" / TENSORS_NAME).read_text())["tensors"]
    code, stdout, _ = run(capsys, "verify", out, "--checksums", out / TENSORS_NAME)
    assert code == 0, stdout
