"""Nothing leaves in the clear unless named: a compressed payload whose frames store a tensor its
manifest masks is refused by publish (before any request), by encode and by decode; a fine-tuned
file not known to hold no weights is refused by encode unless `--allow-raw` names it or a
same-named base file masks it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import xorweights
from tests.conftest import tree
from tests.hubserver import TOKEN
from tests.test_raw_storage import make_pair
from xorweights import publish
from xorweights._units import human_bytes
from xorweights.cli import main
from xorweights.errors import (
    FormatError,
    MissingFileError,
    OutputExistsError,
    RawStorageError,
    UnmaskedFrameError,
)
from xorweights.formats.delta_frames import STORED, compressor, encode_frame, frame_heads
from xorweights.formats.native_manifest import load_manifest
from xorweights.formats.raw_storage import check_frames
from xorweights.tensors.safetensors_header import read_header

# --- stored frames where the manifest masks ------------------------------------------------------


def _store_in_the_clear(payload: Path, ft: Path, names: set[str]) -> int:
    """Rewrite the frames of tensors `names` in `payload/model.safetensors` as stored frames of the
    fine-tuned bytes, and make `xorweights.json` agree with the new file (size and sha256): it still
    says each tensor is masked by its base tensor. Returns the frames rewritten."""
    target = payload / "model.safetensors"
    data = target.read_bytes()
    fine = (ft / "model.safetensors").read_bytes()  # the output, byte for byte
    spans = [
        (t.begin, t.end) for t in read_header(ft / "model.safetensors").tensors.values() if t.name in names
    ]
    out, pos, rewritten = bytearray(), 0, 0
    with open(target, "rb") as f:
        for _, offset, head in frame_heads(f, len(data), str(target)):
            frame = data[pos : pos + head.size]
            pos += head.size
            end = offset + head.out_size
            if head.transform != STORED and any(b <= offset and end <= e for b, e in spans):
                frame = encode_frame(fine[offset:end], b"", STORED, 1, "", compressor())
                rewritten += 1
            out += frame
    assert pos == len(data) and rewritten >= len(names)
    target.write_bytes(bytes(out))
    doc = json.loads((payload / "xorweights.json").read_text())
    entry = next(f for f in doc["files"] if f["name"] == "model.safetensors")
    assert all(t["base"] == t["name"] for t in entry["tensors"] if t["name"] in names)  # still "masked"
    entry.update(payload_size=len(out), payload_sha256=hashlib.sha256(out).hexdigest())
    (payload / "xorweights.json").write_text(json.dumps(doc))
    return rewritten


@pytest.fixture
def tampered(tmp_path: Path) -> dict[str, Path]:
    """An honest compressed payload, and a copy whose lm_head.weight frames are stored in the clear."""
    ft, base = make_pair(tmp_path)
    honest = tmp_path / "honest"
    xorweights.encode(ft, base=base, out=honest)
    assert load_manifest(honest).format_version == 3 and check_frames(load_manifest(honest), honest) > 0
    payload = tmp_path / "tampered"
    shutil.copytree(honest, payload)
    _store_in_the_clear(payload, ft, {"lm_head.weight"})
    return {"ft": ft, "base": base, "honest": honest, "payload": payload}


#: A real sentencepiece model (a BPE tokenizer of the golden fixtures).
SPM_MODEL = Path(__file__).parent / "golden" / "tokenizers" / "bpe-1000" / "tokenizer.model"

_NAMED = r"model\.safetensors:? frame \d+ \(tensor lm_head\.weight\)"


def test_publish_refuses_stored_frames_of_a_masked_tensor_before_any_request(tampered, hub) -> None:
    with pytest.raises(
        UnmaskedFrameError, match=rf"^refusing to publish: .* 1 stored frame .*: {_NAMED}; "
    ) as e:
        publish(tampered["payload"], "me/leak-xor", endpoint=hub.url, token=TOKEN, allow_raw=["*"])
    assert e.value.items == ["model.safetensors:lm_head.weight"] and "\n" not in str(e.value)
    assert hub.state.requests == [] and "me/leak-xor" not in hub.state.repos  # not one request


def test_cli_publish_refusal_is_one_line_exit_2(tampered, hub, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code = main(["publish", str(tampered["payload"]), "me/leak-xor", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("Error: refusing to publish:") and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("Error")]) == 1
    assert "lm_head.weight" in err.splitlines()[0] and hub.state.requests == []


def test_many_stored_frames_are_cut_to_a_few_and_a_count(tmp_path: Path, hub) -> None:
    ft, base = make_pair(tmp_path)
    payload = tmp_path / "p"
    xorweights.encode(ft, base=base, out=payload)
    masked = {t.name for f in load_manifest(payload).files for t in f.tensors if t.base is not None}
    frames = _store_in_the_clear(payload, ft, masked)
    assert frames == len(masked) == 7
    with pytest.raises(UnmaskedFrameError, match=r"holds 7 stored frames .* and 2 more; ") as e:
        publish(payload, "me/leak-xor", endpoint=hub.url, token=TOKEN)
    assert len(e.value.items) == 7 and hub.state.requests == []


def test_decode_refuses_stored_frames_of_a_masked_tensor(tampered, tmp_path: Path, capsys) -> None:
    out = tmp_path / "decoded"
    with pytest.raises(FormatError, match=rf"{_NAMED}: a stored frame \(fine-tuned bytes in the clear\)"):
        xorweights.decode(tampered["payload"], base=tampered["base"], out=out)
    assert not (out / "model.safetensors").exists()
    with pytest.raises(FormatError, match=r"tensor lm_head\.weight, which the manifest masks"):
        xorweights.load_state_dict(tampered["payload"], tampered["base"], framework="pt")
    code = main(
        ["decode", str(tampered["payload"]), "--base", str(tampered["base"]), "--out", str(out), "-q"]
    )
    assert code == 2 and "stored frame" in capsys.readouterr().err
    xorweights.decode(tampered["honest"], base=tampered["base"], out=tmp_path / "ok")  # honest: unchanged
    assert tree(tmp_path / "ok") == tree(tampered["ft"])


def test_encode_rerun_never_keeps_stored_frames(tampered) -> None:
    """A rerun over the tampered payload does not take it as its own work: refused, or remade."""
    ft, base, payload = tampered["ft"], tampered["base"], tampered["payload"]
    with pytest.raises(OutputExistsError):
        xorweights.encode(ft, base=base, out=payload)
    xorweights.encode(ft, base=base, out=payload, force=True)
    assert tree(payload) == tree(tampered["honest"])


# --- files not known to hold no weights ----------------------------------------------------------

#: Weight files under names and first bytes that no list of weight containers knows.
UNKNOWN = (
    "model.onnx_data",
    "yolov4-tiny.weights",
    "lm_head.raw",
    "adapter.f16",
    "embeddings.tensor",
    "pytorch_model.bin-00001",
)


def _floats(seed: int, n: int = 1 << 18) -> bytes:
    """1 MiB of float32 (by default)."""
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32).tobytes()


@pytest.mark.parametrize("name", UNKNOWN)
def test_unknown_file_is_refused_unless_named_or_xored(tmp_path: Path, name: str, capsys) -> None:
    ft, base = make_pair(tmp_path)
    data = _floats(1)
    (ft / name).write_bytes(data)
    with pytest.raises(
        RawStorageError, match=rf"^refusing to store 1 file that may hold weights .*{name} "
    ) as e:
        xorweights.encode(ft, base=base, out=tmp_path / "p1")
    assert e.value.items == [name] and e.value.nbytes == len(data) and "\n" not in str(e.value)
    assert not (tmp_path / "p1").exists()

    out = tmp_path / "p2"  # named: stored raw, recorded, counted by the report
    code = main(["encode", str(ft), "--base", str(base), "--out", str(out), "--allow-raw", name])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"1 items ({human_bytes(len(data))}) stored raw as allowed by --allow-raw" in printed.out
    entry = load_manifest(out).file(name)
    assert entry.method == "copy" and entry.raw is not None and entry.raw.allowed_by == name
    assert (out / name).read_bytes() == data

    (base / name).write_bytes(_floats(2))  # a same-named base file masks it whole
    report = xorweights.encode(ft, base=base, out=tmp_path / "p3")
    entry = report.native_manifest.file(name)
    assert entry.method == "file-xor" and entry.raw is None
    assert (tmp_path / "p3" / name).read_bytes() != data
    xorweights.decode(tmp_path / "p3", base=base, out=tmp_path / "d3")
    assert (tmp_path / "d3" / name).read_bytes() == data


def test_unknown_files_refusal_names_a_few_and_counts(tmp_path: Path, capsys) -> None:
    ft, base = make_pair(tmp_path)
    for i, name in enumerate(UNKNOWN):
        (ft / name).write_bytes(_floats(i, 1024))
    code = main(["encode", str(ft), "--base", str(base), "--out", str(tmp_path / "p"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "p").exists()
    assert err.startswith("Error: refusing to store 6 files that may hold weights") and "and 1 more" in err
    assert sum(name in err for name in UNKNOWN) == 5


def test_publish_refuses_an_unnamed_copy_of_an_unknown_file(tmp_path: Path, hub) -> None:
    """A payload whose manifest copies a weight file with no note (an older encoder, or an edit)."""
    ft, base = make_pair(tmp_path)
    (ft / "adapter.f16").write_bytes(_floats(3))
    payload = tmp_path / "p"
    xorweights.encode(ft, base=base, out=payload, allow_raw=["adapter.f16"])
    doc = json.loads((payload / "xorweights.json").read_text())
    for f in doc["files"]:
        f.pop("raw", None)
    doc.pop("allow_raw")
    (payload / "xorweights.json").write_text(json.dumps(doc))
    with pytest.raises(
        RawStorageError, match=r"refusing to publish: .* adapter\.f16 \(1\.0 MiB: its name is not"
    ):
        publish(payload, "me/old-xor", endpoint=hub.url, token=TOKEN)
    assert hub.state.requests == []


def test_known_files_are_still_copied(tmp_path: Path) -> None:
    ft, base = make_pair(tmp_path)
    (ft / "tokenizer.model").write_bytes(SPM_MODEL.read_bytes())  # a real sentencepiece model
    (ft / "LICENSE").write_text("Apache License\n")
    (ft / "tokenizer.json").write_bytes(b'{"model": "' + b"x" * (20 << 20) + b'"}')  # 20 MiB: a tokenizer may
    report = xorweights.encode(ft, base=base, out=tmp_path / "p")
    m = report.native_manifest
    for name in ("config.json", "tokenizer.model", "LICENSE", "tokenizer.json"):
        assert m.file(name).method == "copy" and m.file(name).raw is None, name
    assert (tmp_path / "p" / "config.json").read_bytes() == (ft / "config.json").read_bytes()


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("embeddings.txt", _floats(4, 4096), r"it is not text \((a NUL byte|not UTF-8) at byte \d+\)"),
        ("notes.json", b"{}" + b" " * (16 << 20), r"it is over 16\.0 MiB"),
        ("tokenizer.model", b"\x00\x01" + _floats(5, 4096), "it is not text"),  # not sentencepiece
        # a sentencepiece start (one piece) with weights after it: every byte must be the model's
        (
            "tokenizer.model",
            b"\n\x0b\n\x05<unk>\x15\x00\x00\x00\x00" + _floats(5, 4096),
            r"it is not a sentencepiece model \(",
        ),
        ("spiece.model", b"\n" + _floats(8, 200_000), r"it is not a sentencepiece model \("),
    ],
)
def test_known_names_with_other_contents_are_refused(
    tmp_path: Path, name: str, data: bytes, why: str
) -> None:
    ft, base = make_pair(tmp_path)
    (ft / name).write_bytes(data)
    with pytest.raises(RawStorageError, match=rf"{name} \(.*no same-named base file, and {why}"):
        xorweights.encode(ft, base=base, out=tmp_path / "p")


def test_legacy_encode_copies_nothing_unknown(model_pair, tmp_path: Path) -> None:
    """The legacy format XORs every file with its base file: one without is refused, and
    added_tokens.json (stored raw when the base lacks it) only as text."""
    base, tuned = model_pair()
    (tuned / "adapter.f16").write_bytes(_floats(6, 1024))
    with pytest.raises(MissingFileError, match=r"adapter\.f16"):
        xorweights.encode(tuned, base=base, out=tmp_path / "p1", format="oasst")
    (tuned / "adapter.f16").unlink()
    (tuned / "added_tokens.json").write_bytes(_floats(7, 1024))
    with pytest.raises(RawStorageError, match=r"refusing to store added_tokens\.json .* it is not text"):
        xorweights.encode(tuned, base=base, out=tmp_path / "p2", format="oasst")
    assert not (tmp_path / "p2").exists()
