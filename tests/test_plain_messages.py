"""Messages that say what happened and what to do: a damaged gzip payload file, thousands of
missing files, a base file that is a FIFO, a delta whose `config.json` is not JSON or describes
another model. Each is one line, and nothing is written."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import xorweights
from tests.test_paths_output_state import within
from xorweights._display import abridged
from xorweights.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, list[str]]:
    code = within(120, lambda: main([str(a) for a in args]))
    return code, capsys.readouterr().err.splitlines()


def test_abridged_names_a_few_and_counts_the_rest() -> None:
    names = [f"f{i:05d}.bin" for i in range(60_000)]
    assert abridged(names) == "f00000.bin, f00001.bin, f00002.bin, f00003.bin, f00004.bin and 59995 more"
    assert abridged(names[:5]) == "f00000.bin, f00001.bin, f00002.bin, f00003.bin, f00004.bin"
    assert abridged(["a\nb"], 3) == "a\\nb"  # names are shown escaped
    assert abridged(iter(names[:4]), 3) == "f00000.bin, f00001.bin, f00002.bin and 1 more"


# --- a legacy gzip payload file damaged after its start ------------------------------------------


def test_a_damaged_gzip_payload_file_is_named_with_what_to_do(
    tmp_path: Path, model_pair, capsys: pytest.CaptureFixture[str]
) -> None:
    base, tuned = model_pair()
    payload = tmp_path / "payload"
    xorweights.encode(tuned, format="oasst", base=base, out=payload, compress="gzip")
    victim = payload / "pytorch_model-00001-of-00002.bin"
    data = victim.read_bytes()
    # A download resumed from the middle that got other bytes: the start is right, the rest is not.
    other = gzip.compress(os.urandom(len(data)), mtime=0)
    victim.write_bytes(data[: len(data) // 2] + other[len(data) // 2 : len(data)])
    code, err = run(capsys, "decode", payload, "--base", base, "--out", tmp_path / "out", "-q", "--jobs", "1")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"Error: payload {victim}: gzip stream is corrupt or truncated ("), err
    assert err[0].endswith(
        f"; the file changed or is damaged since it was published: download {victim} again"
    )
    assert "--payload-compression" not in err[0]
    assert not (tmp_path / "out" / victim.name).exists()


# --- 60,000 missing payload files -------------------------------------------------------------


def test_sixty_thousand_missing_payload_files_make_one_short_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = hashlib.sha256(b"").hexdigest()
    files = [
        {
            "name": f"f{i:05d}.txt",
            "method": "copy",
            "size": 0,
            "sha256": empty,
            "payload_size": 0,
            "payload_sha256": empty,
        }
        for i in range(60_000)
    ]
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "f00003.txt").write_bytes(b"")  # one is there
    doc = {"format": "xorweights", "format_version": 1, "encoder": "t", "files": files, "base_tensors": {}}
    (payload / "xorweights.json").write_text(json.dumps(doc))
    (tmp_path / "base").mkdir()
    code, err = run(capsys, "decode", payload, "--base", tmp_path / "base", "--out", tmp_path / "out", "-q")
    assert code == 2
    assert err == [
        f"Error: 59999 payload files missing in {payload}: f00000.txt, f00001.txt, f00002.txt, f00004.txt, "
        "f00005.txt and 59994 more; an incomplete download or copy? fetch them and run again"
    ]
    assert not (tmp_path / "out").exists()


# --- a base file that is a FIFO ---------------------------------------------------------------


def fifo_in(folder: Path, name: str) -> Path:
    (folder / name).unlink()
    os.mkfifo(folder / name)
    return folder / name


@pytest.mark.parametrize(
    "where", ["base/pytorch_model.bin", "base/config.json", "delta/tokenizer_config.json"]
)
def test_a_fifo_beside_a_delta_is_not_a_regular_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], delta_pair, where: str
) -> None:
    delta, base = delta_pair
    pipe = fifo_in(tmp_path / where.split("/")[0], where.split("/")[1])
    code, err = run(
        capsys, "decode", delta, "--base", base, "--out", tmp_path / "out", "--recipe", "fastchat", "-q"
    )
    assert (code, err) == (2, [f"Error: {pipe} is a FIFO, not a regular file; refusing to read it"])
    assert not (tmp_path / "out").exists()


def test_a_fifo_base_file_of_a_native_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], native_release
) -> None:
    base = Path(shutil.copytree(native_release["base"], tmp_path / "base"))
    pipe = fifo_in(base, "tokenizer.model")  # XOR-ed by file with the fine-tuned one
    code, err = run(
        capsys, "decode", native_release["payload"], "--base", base, "--out", tmp_path / "out", "-q"
    )
    assert (code, err) == (2, [f"Error: {pipe} is a FIFO, not a regular file; refusing to read it"])
    assert not (tmp_path / "out").exists()


def test_a_fifo_base_file_at_native_encode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], native_release
) -> None:
    base = Path(shutil.copytree(native_release["base"], tmp_path / "base"))
    pipe = fifo_in(base, "tokenizer.model")  # not taken for a missing base file
    out = tmp_path / "payload"
    code, err = run(capsys, "encode", native_release["ft"], "--base", base, "--out", out, "-q")
    assert (code, err) == (2, [f"Error: {pipe} is a FIFO, not a regular file; refusing to read it"])
    assert not out.exists()


def test_a_fifo_base_file_of_a_legacy_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_pair
) -> None:
    base, tuned = model_pair()
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    pipe = fifo_in(base, "tokenizer.model")
    code, err = run(capsys, "decode", tmp_path / "payload", "--base", base, "--out", tmp_path / "out", "-q")
    assert (code, err) == (2, [f"Error: {pipe} is a FIFO, not a regular file; refusing to read it"])
    assert not (tmp_path / "out").exists()


# --- a delta's config.json --------------------------------------------------------------------


def test_a_delta_config_that_is_not_json_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], delta_pair
) -> None:
    delta, base = delta_pair
    (delta / "config.json").write_text("not json {\n")
    code, err = run(
        capsys, "decode", delta, "--base", base, "--out", tmp_path / "out", "--recipe", "fastchat", "-q"
    )
    assert code == 2
    assert err == [
        f"Error: {delta / 'config.json'}: invalid JSON (Expecting value at line 1); download or copy the "
        "model's own file again"
    ]  # and no warnings before it
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (
            {"num_hidden_layers": 80, "hidden_size": 8192},
            "hidden_size 8192 where model.embed_tokens.weight is [40, 8], num_hidden_layers 80 where the "
            "delta's tensors have layers 0 ... 1",
        ),
        ({"vocab_size": 32000}, "vocab_size 32000 where model.embed_tokens.weight has 40 rows"),
        (
            {"intermediate_size": "24"},
            "intermediate_size '24' where model.layers.0.mlp.gate_proj.weight is [24, 8]",
        ),
    ],
)
def test_a_delta_config_of_another_model_is_refused_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], delta_pair, changes: dict[str, object], named: str
) -> None:
    delta, base = delta_pair
    config = json.loads((delta / "config.json").read_text())
    (delta / "config.json").write_text(json.dumps({**config, **changes}))
    code, err = run(
        capsys, "decode", delta, "--base", base, "--out", tmp_path / "out", "--recipe", "fastchat", "-q"
    )
    assert code == 2
    assert err == [
        f"Error: {delta / 'config.json'} describes another model than the delta's tensors ({named}); it "
        "would be copied into the recovered model as it is; download or copy the delta's own "
        "config.json again"
    ]
    assert not (tmp_path / "out").exists()


def test_a_delta_config_without_those_keys_is_copied(tmp_path: Path, delta_pair) -> None:
    delta, base = delta_pair
    (delta / "config.json").write_text('{"model_type": "llama"}\n')
    xorweights.decode(delta, base=base, out=tmp_path / "out", recipe="fastchat")
    assert (tmp_path / "out" / "config.json").read_text() == '{"model_type": "llama"}\n'
