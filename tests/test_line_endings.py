"""A file whose line endings were converted (git autocrlf) is named as such when its digest or size
is wrong: in `verify`, in a decode's checks of copied payload files and base files, and nowhere else."""

from __future__ import annotations

import builtins
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import xorweights
from xorweights import _line_endings
from xorweights._line_endings import LINE_ENDING_CHECK_LIMIT, line_ending_hint
from xorweights.cli import main
from xorweights.errors import BaseMismatchError, ChecksumMismatchError, FormatError
from xorweights.llama.layout import LlamaLayout

TO_CRLF = "line endings were converted (LF -> CRLF), e.g. by git autocrlf; fetch the file again"
TO_LF = "line endings were converted (CRLF -> LF), e.g. by git autocrlf; fetch the file again"


def crlf(data: bytes) -> bytes:
    """What git's autocrlf makes of an LF file on checkout."""
    return data.replace(b"\n", b"\r\n")


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def pygmalion_files() -> dict[str, bytes]:
    """Three small files of pygmalion-7b exactly as published (LF), rebuilt from the architecture."""
    layout = LlamaLayout.preset("llama-7b")
    files = {
        "pytorch_model.bin.index.json": layout.index_json(),
        "generation_config.json": LlamaLayout.generation_config_json("4.28.0.dev0"),
        "special_tokens_map.json": layout.special_tokens_map_json(),
    }
    published = xorweights.load_checksums("pygmalion-7b").stage("decoded")
    assert all(md5(data) == published[name].md5 for name, data in files.items())
    assert all(b"\n" in data and b"\r" not in data for data in files.values())
    return files


# --- the check itself ---------------------------------------------------------------------------


def test_both_directions_and_every_algorithm(tmp_path: Path) -> None:
    lf = pygmalion_files()["special_tokens_map.json"]
    disk = tmp_path / "f.json"
    disk.write_bytes(crlf(lf))
    for algo in ("md5", "sha1", "sha256"):
        assert line_ending_hint(disk, {algo: hashlib.new(algo, lf).hexdigest()}) == TO_CRLF
    assert line_ending_hint(disk, {"md5": md5(lf), "sha256": sha256(lf)}, expected_size=len(lf)) == TO_CRLF
    assert line_ending_hint(disk, expected_size=len(lf)) == TO_CRLF  # the size alone, when that is all
    # Published CRLF, found LF: the other way round.
    disk.write_bytes(lf)
    assert line_ending_hint(disk, {"sha256": sha256(crlf(lf))}, expected_size=len(crlf(lf))) == TO_LF
    assert line_ending_hint(disk, {"md5": md5(crlf(lf)).upper()}) == TO_LF  # hex in capitals


def test_no_hint_when_nothing_explains_it(tmp_path: Path) -> None:
    lf = pygmalion_files()["special_tokens_map.json"]
    disk = tmp_path / "f.json"
    disk.write_bytes(crlf(lf))
    other = lf.replace(b"<s>", b"<S>")
    assert line_ending_hint(disk, {"md5": md5(other)}) is None
    # One digest agrees, the other does not: no hint.
    assert line_ending_hint(disk, {"md5": md5(lf), "sha256": sha256(other)}) is None
    assert line_ending_hint(disk, {"md5": md5(lf)}, expected_size=len(lf) + 1) is None
    assert line_ending_hint(disk, expected_size=len(lf) + 1) is None
    assert line_ending_hint(disk) is None
    assert line_ending_hint(disk, {"crc32": "0" * 8, "size": str(len(lf))}) is None  # not digests it knows
    assert line_ending_hint(tmp_path / "missing", {"md5": md5(lf)}) is None
    # A file with no line ending converts to itself: its size cannot be explained by converting it.
    disk.write_bytes(b'{"a": 1}')
    assert line_ending_hint(disk, expected_size=8) is None


def test_git_blob_ids_hash_the_converted_size(tmp_path: Path) -> None:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    lf = pygmalion_files()["generation_config.json"]
    (tmp_path / "lf").write_bytes(lf)
    blob = subprocess.run(
        [git, "hash-object", str(tmp_path / "lf")], capture_output=True, text=True, check=True
    )
    disk = tmp_path / "f.json"
    disk.write_bytes(crlf(lf))
    assert line_ending_hint(disk, {"git-sha1": blob.stdout.strip()}, expected_size=len(lf)) == TO_CRLF
    assert line_ending_hint(disk, {"git-sha1": blob.stdout.strip()}) == TO_CRLF
    assert line_ending_hint(disk, {"git-sha1": hashlib.sha1(lf).hexdigest()}) is None  # no blob header


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_pairs_split_across_chunks(tmp_path: Path, chunk: int) -> None:
    """A CR ending one chunk and its LF starting the next are one pair, in both directions."""
    disk = tmp_path / "f"
    # On disk CRLF (checked out with autocrlf) with a lone CR and a CR before a pair: only the
    # pairs become LF.
    published = b"a\nbc\r\rd\r\n\ne\r"
    disk.write_bytes(b"a\r\nbc\r\rd\r\r\n\r\ne\r")
    assert line_ending_hint(disk, {"md5": md5(published)}, _chunk_size=chunk) == TO_CRLF
    assert line_ending_hint(disk, expected_size=len(published), _chunk_size=chunk) == TO_CRLF
    # On disk LF from a CRLF file: only bare LF gets a CR; a pair already there stays one pair.
    disk.write_bytes(b"a\r\nb\nc\r\r\nd\n")
    published = b"a\r\nb\r\nc\r\r\nd\r\n"
    assert line_ending_hint(disk, {"sha256": sha256(published)}, _chunk_size=chunk) == TO_LF
    assert line_ending_hint(disk, expected_size=len(published), _chunk_size=chunk) == TO_LF
    # What treating 2-byte chunks each alone gives (an LF after a split pair taken as bare): no match.
    assert (
        line_ending_hint(disk, {"sha256": sha256(b"a\r\r\nb\r\nc\r\r\r\nd\r\n")}, _chunk_size=chunk) is None
    )


def test_larger_file_across_many_chunks(tmp_path: Path) -> None:
    lf = pygmalion_files()["pytorch_model.bin.index.json"]
    disk = tmp_path / "index.json"
    disk.write_bytes(crlf(lf))
    for chunk in (1, 2, 4093, 1 << 20):
        assert line_ending_hint(disk, {"md5": md5(lf)}, _chunk_size=chunk) == TO_CRLF


def test_binary_files_get_no_hint(tmp_path: Path) -> None:
    disk = tmp_path / "tokenizer.model"
    # git never converts a file with a NUL among its first 8000 bytes, so its conversion is no cause.
    published = b"\x00\x01" + b"x\n" * 100
    disk.write_bytes(crlf(published))
    assert line_ending_hint(disk, {"md5": md5(published)}) is None
    disk.write_bytes(b"x" * 8000 + crlf(published))  # a NUL further on: taken for text
    assert line_ending_hint(disk, {"md5": md5(b"x" * 8000 + published)}) == TO_CRLF
    # Bytes with no NUL, CRs and LFs among them, that are simply other bytes.
    noise = bytes(range(1, 256)) * 40
    disk.write_bytes(noise)
    assert line_ending_hint(disk, {"md5": md5(bytes(range(256)) * 40)}) is None


def test_files_above_the_cap_are_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lf = pygmalion_files()["special_tokens_map.json"]
    disk = tmp_path / "f.json"
    disk.write_bytes(crlf(lf))
    assert line_ending_hint(disk, {"md5": md5(lf)}, limit=len(crlf(lf))) == TO_CRLF
    assert line_ending_hint(disk, {"md5": md5(lf)}, limit=len(crlf(lf)) - 1) is None

    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(LINE_ENDING_CHECK_LIMIT + 1)  # sparse
    opened: list[object] = []

    def spy(file: object, *args: object, **kwargs: object) -> object:
        opened.append(file)
        return builtins.open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(_line_endings, "open", spy, raising=False)
    assert line_ending_hint(big, {"md5": md5(b"")}, expected_size=LINE_ENDING_CHECK_LIMIT) is None
    assert opened == []
    assert line_ending_hint(disk, {"md5": md5(lf)}) == TO_CRLF and opened == [disk]  # the spy works


# --- verify -------------------------------------------------------------------------------------


def test_verify_names_converted_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = pygmalion_files()
    folder = tmp_path / "pygmalion-7b"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    index = files["pytorch_model.bin.index.json"]
    (folder / "pytorch_model.bin.index.json").write_bytes(crlf(index))  # checked into git, checked out
    (folder / "tokenizer.model").write_bytes(bytes(range(1, 250)) * 10)  # wrong, and not text

    report = xorweights.verify(folder, "pygmalion-7b")
    assert not report.ok
    assert {m.name: m.hint for m in report.mismatches} == {
        "pytorch_model.bin.index.json": TO_CRLF,
        "tokenizer.model": None,
    }
    assert set(report.matched) == {"generation_config.json", "special_tokens_map.json"}
    doc = report.to_dict()
    assert [(m["name"], m["algorithm"], m["hint"]) for m in doc["mismatches"]] == [
        ("pytorch_model.bin.index.json", "md5", TO_CRLF),
        ("tokenizer.model", "md5", None),
    ]

    code = main(["verify", str(folder), "--checksums", "pygmalion-7b", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    assert lines["MISMATCH pytorch_model.bin.index.json"] == (
        f"MISMATCH pytorch_model.bin.index.json: md5 {md5(crlf(index))}, expected {md5(index)}; {TO_CRLF}"
    )
    assert lines["MISMATCH tokenizer.model"].endswith(f"expected {'eeec4125e9c7560836b4873b6f8e3025'}")
    code = main(["verify", str(folder), "--checksums", "pygmalion-7b", "--quiet", "--json"])
    hints = {m["name"]: m["hint"] for m in json.loads(capsys.readouterr().out)["mismatches"]}
    assert code == 1 and hints["pytorch_model.bin.index.json"] == TO_CRLF


def test_verify_with_sizes_and_the_other_direction(tmp_path: Path) -> None:
    """A release published with CRLF files, found with LF: the size differs, and the hint says why."""
    data = crlf(pygmalion_files()["special_tokens_map.json"])
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "special_tokens_map.json").write_bytes(data.replace(b"\r\n", b"\n"))
    (folder / "config.json").write_bytes(b'{"a": 1}\r\n')
    manifest = {
        "format": "xorweights-checksums/1",
        "release": "crlf",
        "stages": {
            "decoded": {
                "special_tokens_map.json": {"sha256": sha256(data), "size": len(data)},
                "config.json": {"md5": md5(b'{"a": 2}\n'), "size": 9},  # the size fits, the digest not
            }
        },
    }
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    report = xorweights.verify(folder, tmp_path / "m.json")
    assert [(m.name, m.algorithm, m.hint) for m in report.mismatches] == [
        ("config.json", "size", None),
        ("special_tokens_map.json", "size", TO_LF),
    ]


# --- decode -------------------------------------------------------------------------------------


def encode_release(tmp_path: Path, model_pair) -> tuple[Path, Path, dict]:
    base, tuned = model_pair()
    rep = xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload", with_checksums=True)
    assert rep.manifest is not None
    return tmp_path / "payload", base, rep.manifest.to_json()


def test_decode_names_a_converted_raw_payload_file(tmp_path: Path, model_pair, capsys) -> None:
    """added_tokens.json travels as it is in a legacy payload; a git checkout converted it."""
    payload, base, doc = encode_release(tmp_path, model_pair)
    (tmp_path / "m.json").write_text(json.dumps(doc))
    stored = (payload / "added_tokens.json").read_bytes()
    (payload / "added_tokens.json").write_bytes(crlf(stored))
    with pytest.raises(ChecksumMismatchError) as e:
        xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=tmp_path / "m.json")
    assert f"Payload file {payload / 'added_tokens.json'}: {TO_CRLF} (nothing written)" in str(e.value)

    code = main(
        ["decode", str(payload), "--base", str(base), "--out", str(tmp_path / "out2")]
        + ["--checksums", str(tmp_path / "m.json"), "--quiet"]
    )
    assert code == 1 and TO_CRLF in capsys.readouterr().err


@pytest.mark.parametrize("sized", [True, False], ids=["size", "md5-only"])
def test_decode_names_a_converted_copied_file(tmp_path: Path, model_pair, sized: bool) -> None:
    """A file the manifest lists as raw is copied: the output is the payload file, converted."""
    payload, base, doc = encode_release(tmp_path, model_pair)
    lf = pygmalion_files()["special_tokens_map.json"]
    (payload / "special_tokens_map.json").write_bytes(crlf(lf))
    doc["raw_files"] = ["special_tokens_map.json"]
    doc["stages"]["decoded"]["special_tokens_map.json"] = {
        "md5": md5(lf),
        **({"size": len(lf)} if sized else {}),
    }
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(ChecksumMismatchError) as e:
        xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=tmp_path / "m.json", jobs=1)
    assert str(e.value).startswith("decoded special_tokens_map.json: ")
    assert f"payload file {payload / 'special_tokens_map.json'}: {TO_CRLF} (output discarded)" in str(e.value)
    assert not (tmp_path / "out" / "special_tokens_map.json").exists()


def test_decode_of_a_wrong_xored_file_gets_no_hint(tmp_path: Path, model_pair) -> None:
    """An XOR-ed output is not the payload file: converting the payload's line endings proves nothing."""
    payload, base, doc = encode_release(tmp_path, model_pair)
    (tmp_path / "m.json").write_text(json.dumps(doc))
    victim = payload / "config.json"
    victim.write_bytes(crlf(victim.read_bytes()) + b"\n")
    with pytest.raises(ChecksumMismatchError) as e:
        xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=tmp_path / "m.json", jobs=1)
    assert "config.json" in str(e.value) and "line endings" not in str(e.value)


@pytest.mark.parametrize("sized", [True, False], ids=["size", "md5-only"])
def test_decode_names_a_converted_base_file(tmp_path: Path, model_pair, sized: bool) -> None:
    payload, base, doc = encode_release(tmp_path, model_pair)
    if not sized:
        del doc["stages"]["hf_base"]["config.json"]["size"]
    (tmp_path / "m.json").write_text(json.dumps(doc))
    (base / "config.json").write_bytes(crlf((base / "config.json").read_bytes()))
    with pytest.raises(BaseMismatchError) as e:
        xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=tmp_path / "m.json", jobs=1)
    assert str(e.value).startswith(f"base file {base / 'config.json'}: ")
    assert str(e.value).endswith(f"; {TO_CRLF}")


def test_native_decode_names_a_converted_copy_entry(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    base_sd = {"w": torch.randn(64, 32, generator=g).half()}
    (tmp_path / "base").mkdir()
    (tmp_path / "ft").mkdir()
    save_file(base_sd, str(tmp_path / "base" / "model.safetensors"))
    save_file({"w": (base_sd["w"].float() + 1e-2).half()}, str(tmp_path / "ft" / "model.safetensors"))
    config = json.dumps({"model_type": "llama", "hidden_size": 32}, indent=2).encode() + b"\n"
    (tmp_path / "ft" / "config.json").write_bytes(config)
    payload = tmp_path / "payload"
    rep = xorweights.encode(tmp_path / "ft", base=tmp_path / "base", out=payload)
    assert rep.native_manifest is not None and rep.native_manifest.file("config.json").method == "copy"

    (payload / "config.json").write_bytes(crlf(config))
    with pytest.raises(FormatError) as e:
        xorweights.decode(payload, base=tmp_path / "base", out=tmp_path / "out")
    assert str(e.value) == (
        f"payload file {payload / 'config.json'}: {len(crlf(config))} bytes, but xorweights.json lists "
        f"{len(config)} ({TO_CRLF})"
    )
    # Another change of size is not explained.
    (payload / "config.json").write_bytes(config + b" ")
    with pytest.raises(FormatError, match=r"\(an incomplete download\?\)"):
        xorweights.decode(payload, base=tmp_path / "base", out=tmp_path / "out")
