"""No fine-tuned weights leave in the clear unless named: encode and publish refuse raw tensors and
weight files that no `--allow-raw` pattern names, and record the ones that are."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import xorweights
from tests.conftest import tree
from tests.hubserver import TOKEN
from tests.test_native import base_tensors, finetune, save_bin_shards
from xorweights import publish
from xorweights._units import human_bytes
from xorweights.cli import main
from xorweights.errors import RawStorageError
from xorweights.formats.native_manifest import RawNote, load_manifest
from xorweights.formats.raw_storage import GROWN_ROWS, manifest_items
from xorweights.hub import model_card


def make_pair(
    root: Path, *, drop: tuple[str, ...] = (), rename: dict[str, str] | None = None
) -> tuple[Path, Path]:
    """A safetensors fine-tune with exactly the base's tensors, and a base (.bin) lacking `drop`."""
    base_sd = base_tensors()
    ft_sd = {n: t for n, t in finetune(base_sd).items() if n in base_sd}
    ft = root / "ft"
    ft.mkdir(parents=True)
    save_file({n: t.contiguous() for n, t in ft_sd.items()}, str(ft / "model.safetensors"))
    (ft / "config.json").write_text(json.dumps({"model_type": "llama"}))
    kept = {(rename or {}).get(n, n): t for n, t in base_sd.items() if n not in drop}
    save_bin_shards(kept, root / "base", [list(kept)])
    return ft, root / "base"


def test_partial_base_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    dropped = ("lm_head.weight", "model.norm.weight", "model.layers.0.mask")
    ft, base = make_pair(tmp_path, drop=dropped)
    out = tmp_path / "payload"
    with pytest.raises(RawStorageError) as err:
        xorweights.encode(ft, base=base, out=out)
    e = err.value
    assert sorted(e.items) == sorted(f"model.safetensors:{n}" for n in dropped)
    ft_sd = load_file(str(ft / "model.safetensors"))
    assert e.nbytes == sum(ft_sd[n].numel() * ft_sd[n].element_size() for n in dropped)
    assert "3 fine-tuned tensors" in str(e) and "`allow_raw=PATTERN`" in str(e) and "partial base" in str(e)
    assert "\n" not in str(e)
    assert not out.exists()  # nothing written, not even the folder


def test_refusal_lists_the_first_few_and_a_count(tmp_path: Path) -> None:
    names = list(base_tensors())
    ft, base = make_pair(tmp_path, drop=tuple(names[:7]))
    with pytest.raises(RawStorageError, match=r"and 2 more; likely cause") as err:
        xorweights.encode(ft, base=base, out=tmp_path / "payload")
    assert len(err.value.items) == 7


def test_names_differing_by_a_prefix_get_a_hint(tmp_path: Path) -> None:
    ft, base = make_pair(tmp_path, rename={"lm_head.weight": "model.lm_head.weight"})
    with pytest.raises(
        RawStorageError, match=r"closest base tensor model\.lm_head\.weight \(the names differ by a prefix\)"
    ):
        xorweights.encode(ft, base=base, out=tmp_path / "payload")


def test_cli_refuses_with_exit_2_and_one_line(tmp_path: Path, capsys) -> None:
    ft, base = make_pair(tmp_path, drop=("lm_head.weight",))
    code = main(["encode", str(ft), "--base", str(base), "--out", str(tmp_path / "p"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    first = err.splitlines()[0]
    assert first.startswith("Error: refusing to store 1 fine-tuned tensor") and "lm_head.weight" in first
    assert not (tmp_path / "p").exists()


def test_allow_raw_stores_named_tensors_records_them_and_decodes(tmp_path: Path, capsys) -> None:
    ft, base = make_pair(tmp_path, drop=("lm_head.weight", "model.norm.weight"))
    out = tmp_path / "payload"
    with pytest.raises(RawStorageError) as err:  # one pattern is not enough
        xorweights.encode(ft, base=base, out=out, allow_raw=["lm_head.*"])
    assert err.value.items == ["model.safetensors:model.norm.weight"]
    code = main(
        ["encode", str(ft), "--base", str(base), "--out", str(out), "--quiet"]
        + ["--allow-raw", "lm_head.*", "--allow-raw", "*.norm.weight"]
    )
    assert code == 0, capsys.readouterr().err
    m = load_manifest(out)
    assert m.allow_raw == ("lm_head.*", "*.norm.weight")
    tensors = {t.name: t for f in m.files for t in f.tensors}
    assert tensors["lm_head.weight"].base is None
    assert tensors["lm_head.weight"].raw == RawNote("no base tensor of this name", "lm_head.*")
    assert tensors["model.norm.weight"].raw == RawNote("no base tensor of this name", "*.norm.weight")
    assert sum(t.raw is not None and t.raw.allowed_by != GROWN_ROWS for t in tensors.values()) == 2
    assert tensors["model.embed_tokens.weight"].raw == RawNote("4 rows past the base's 100", GROWN_ROWS)
    doc = json.loads((out / "xorweights.json").read_text())
    assert doc["allow_raw"] == ["lm_head.*", "*.norm.weight"]
    xorweights.decode(out, base=base, out=tmp_path / "decoded")
    assert tree(tmp_path / "decoded") == tree(ft)


def test_bin_finetune_without_base_file_is_refused_or_allowed_by_name(tmp_path: Path) -> None:
    base_sd = base_tensors()
    ft_sd = {n: t for n, t in finetune(base_sd).items() if n in base_sd}
    ft, base = tmp_path / "ft", tmp_path / "base"
    save_bin_shards(ft_sd, ft, [list(ft_sd)])
    save_bin_shards(base_sd, base, [list(base_sd)])
    (base / "pytorch_model-00001-of-00001.bin").rename(base / "renamed.bin")
    with pytest.raises(
        RawStorageError, match=r"1 file that may hold weights .* pytorch_model-00001-of-00001\.bin"
    ):
        xorweights.encode(ft, base=base, out=tmp_path / "p1")
    assert not (tmp_path / "p1").exists()
    report = xorweights.encode(ft, base=base, out=tmp_path / "p2", allow_raw=["pytorch_model-*.bin"])
    entry = report.native_manifest.file("pytorch_model-00001-of-00001.bin")
    assert entry.method == "copy"
    assert entry.raw.allowed_by == "pytorch_model-*.bin"
    assert entry.raw.reason.startswith("no same-named base file")
    assert load_manifest(tmp_path / "p2").file(entry.name).raw == entry.raw


@pytest.mark.parametrize("name", ["model.gguf", "flax_model.msgpack", "tf_model.h5", "big.dat"])
def test_other_weight_containers_without_base_file_are_raw(tmp_path: Path, name: str) -> None:
    ft, base = make_pair(tmp_path)
    (ft / "model.safetensors").unlink()  # the container is the only copy of the weights
    size = 64 * 1024 * 1024 + 1 if name == "big.dat" else 1000
    with open(ft / name, "wb") as f:
        f.truncate(size)
    with pytest.raises(RawStorageError, match=f"1 file that may hold weights .*{name}"):
        xorweights.encode(ft, base=base, out=tmp_path / "p1")
    report = xorweights.encode(ft, base=base, out=tmp_path / "p2", allow_raw=[name])
    raw = report.native_manifest.file(name).raw
    assert raw.allowed_by == name and raw.reason.startswith("no same-named base file")
    with open(base / name, "wb") as f:  # with a base file of that name and size it is XOR-ed, not raw
        f.truncate(size)
    report = xorweights.encode(ft, base=base, out=tmp_path / "p3")
    assert report.native_manifest.file(name).method == "file-xor"


@pytest.mark.parametrize("name", ["pytorch_model.BIN", "model.gguf", "tf_model.h5", "flax_model.msgpack"])
def test_other_containers_beside_safetensors_are_left_out(tmp_path: Path, name: str) -> None:
    ft, base = make_pair(tmp_path)
    (ft / name).write_bytes(b"\0" * 100)
    report = xorweights.encode(ft, base=base, out=tmp_path / "p")
    assert report.native_manifest.omitted == (name,) and not (tmp_path / "p" / name).exists()


def test_publish_refuses_raw_tensors_unless_named_and_the_card_counts_them(hub, tmp_path: Path) -> None:
    ft, base = make_pair(tmp_path, drop=("lm_head.weight",))
    payload = tmp_path / "payload"
    xorweights.encode(ft, base=base, out=payload, allow_raw=["lm_head.*"])
    kw = {"endpoint": hub.url, "token": TOKEN}
    with pytest.raises(
        RawStorageError, match=r"refusing to publish: .* 1 fine-tuned tensor .*:lm_head\.weight"
    ):
        publish(payload, "me/leaky-xor", **kw)
    with pytest.raises(RawStorageError):
        publish(payload, "me/leaky-xor", allow_raw=["model.*"], **kw)
    assert "me/leaky-xor" not in hub.state.repos  # nothing uploaded
    report = publish(payload, "me/leaky-xor", allow_raw=["lm_head.*"], **kw)
    nbytes = load_file(str(ft / "model.safetensors"))["lm_head.weight"].numel() * 2
    assert (
        f"- stored raw: 1 tensors and 0 files, {human_bytes(nbytes)}, with no base counterpart" in report.card
    )
    assert "(allowed by name: `lm_head.*`)" in report.card
    assert "except for the 1 fine-tuned items" in report.card
    assert model_card.parse(report.card, "README.md") is not None


def test_publish_treats_a_tensor_without_base_as_raw_even_unnoted(hub, tmp_path: Path) -> None:
    """A hand-edited (or older) manifest that drops the note still cannot publish raw tensors silently."""
    ft, base = make_pair(tmp_path, drop=("lm_head.weight",))
    payload = tmp_path / "payload"
    xorweights.encode(ft, base=base, out=payload, allow_raw=["lm_head.*"])
    doc = json.loads((payload / "xorweights.json").read_text())
    for f in doc["files"]:
        for t in f.get("tensors", []):
            t.pop("raw", None)
    doc.pop("allow_raw")
    (payload / "xorweights.json").write_text(json.dumps(doc))
    with pytest.raises(RawStorageError, match="lm_head.weight"):
        publish(payload, "me/old-xor", endpoint=hub.url, token=TOKEN)
    assert "me/old-xor" not in hub.state.repos


def test_cli_publish_needs_the_patterns(hub, tmp_path: Path) -> None:
    ft, base = make_pair(tmp_path, drop=("lm_head.weight",))
    payload = tmp_path / "payload"
    xorweights.encode(ft, base=base, out=payload, allow_raw=["lm_head.*"])
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf")}

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "xorweights.cli", "publish", str(payload), "me/cli-xor", "-q", *extra]
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)

    refused = run()
    assert refused.returncode == 2 and refused.stderr.startswith("Error: refusing to publish")
    assert "Traceback" not in refused.stderr and "me/cli-xor" not in hub.state.repos
    allowed = run("--allow-raw", "lm_head.*")
    assert allowed.returncode == 0, allowed.stderr


def test_nothing_raw_says_so_on_the_card(hub, tmp_path: Path) -> None:
    ft, base = make_pair(tmp_path)
    payload = tmp_path / "payload"
    report = xorweights.encode(ft, base=base, out=payload)
    assert all(i.grown for i in manifest_items(report.native_manifest, payload))
    card = publish(payload, "me/clean-xor", endpoint=hub.url, token=TOKEN).card
    assert "- stored raw: nothing" in card and "except for" not in card


def test_grown_rows_are_recorded_but_need_no_pattern(tmp_path: Path) -> None:
    """A grown vocabulary XORs the shared rows; its new rows are unmasked, counted and recorded."""
    base_sd = base_tensors()
    ft_sd = {n: t for n, t in finetune(base_sd).items() if n in base_sd}
    assert ft_sd["lm_head.weight"].shape[0] > base_sd["lm_head.weight"].shape[0]
    ft, base = tmp_path / "ft", tmp_path / "base"
    ft.mkdir()
    save_file({n: t.contiguous() for n, t in ft_sd.items()}, str(ft / "model.safetensors"))
    save_bin_shards(base_sd, base, [list(base_sd)])
    report = xorweights.encode(ft, base=base, out=tmp_path / "p")
    items = {i.tensor: i for i in manifest_items(report.native_manifest, tmp_path / "p")}
    assert set(items) == {"lm_head.weight", "model.embed_tokens.weight"} and all(
        i.grown for i in items.values()
    )
    assert items["lm_head.weight"].nbytes == 4 * 16 * 2  # four fp16 rows of 16
    entry = {t.name: t for f in report.native_manifest.files for t in f.tensors}["lm_head.weight"]
    assert entry.raw == RawNote("4 rows past the base's 100", GROWN_ROWS)


def _shapes_pair(tmp_path: Path, base_t: torch.Tensor, ft_t: torch.Tensor) -> tuple[Path, Path]:
    ft, base = tmp_path / "ft", tmp_path / "base"
    ft.mkdir()
    base.mkdir()
    save_file({"model.w": ft_t}, str(ft / "model.safetensors"))
    save_file({"model.w": base_t}, str(base / "model.safetensors"))
    return ft, base


@pytest.mark.parametrize(
    ("base_t", "why"),
    [
        (torch.ones(1, dtype=torch.float16), "short"),  # zero padding masks nothing
        (torch.ones(4096, dtype=torch.int8), "short"),  # an int8 base masks half of fp16 bytes
        (torch.ones(2000, 2, dtype=torch.float16), "short"),  # more than a quarter more rows
    ],
)
def test_a_shorter_base_tensor_is_raw_unless_allowed(tmp_path: Path, base_t: torch.Tensor, why: str) -> None:
    ft_t = torch.randn(4096, 2).half() if base_t.dim() == 2 else torch.randn(4096).half()
    ft, base = _shapes_pair(tmp_path, base_t, ft_t)
    with pytest.raises(RawStorageError, match=f"model.safetensors:model.w .*its base tensor .* bytes {why}"):
        xorweights.encode(ft, base=base, out=tmp_path / "p")
    assert not (tmp_path / "p").exists()
    report = xorweights.encode(ft, base=base, out=tmp_path / "p", allow_raw=["model.w"])
    entry = report.native_manifest.files[-1].tensors[0]
    assert entry.raw is not None and entry.raw.allowed_by == "model.w"
    xorweights.decode(tmp_path / "p", base=base, out=tmp_path / "out")
    assert tree(tmp_path / "out")["model.safetensors"] == (ft / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("Model.SafeTensors.bak", b"\0" * 100),
        ("weights.npy.gz", b"\0" * 100),
        ("variables.data-00000-of-00001", b"\0" * 100),
        ("blob", b"GGUF" + b"\0" * 100),  # no suffix, but the content says what it is
        ("blob2", b"PK\x03\x04" + b"\0" * 100),
        ("blob3", b"\x80\x02" + b"\0" * 100),
        ("blob4", b"\x89HDF\r\n\x1a\n" + b"\0" * 100),
    ],
)
def test_weight_files_are_found_by_any_suffix_or_by_content(tmp_path: Path, name: str, data: bytes) -> None:
    ft, base = make_pair(tmp_path)
    (ft / name).write_bytes(data)
    with pytest.raises(RawStorageError, match="1 file that may hold weights"):
        xorweights.encode(ft, base=base, out=tmp_path / "p")


def test_large_text_files_count_as_weights(tmp_path: Path) -> None:
    ft, base = make_pair(tmp_path)
    with open(ft / "weights.json", "wb") as f:
        f.truncate(64 * 1024 * 1024 + 1)
    with pytest.raises(RawStorageError, match=r"weights\.json .*over 64"):
        xorweights.encode(ft, base=base, out=tmp_path / "p")


def test_a_shorter_base_file_leaves_the_tail_raw(tmp_path: Path) -> None:
    base_sd = base_tensors()
    ft_sd = {n: t for n, t in finetune(base_sd).items() if n in base_sd}
    ft, base = tmp_path / "ft", tmp_path / "base"
    save_bin_shards(ft_sd, ft, [list(ft_sd)])
    base.mkdir()
    (base / "pytorch_model-00001-of-00001.bin").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(RawStorageError, match="its base file is .* bytes shorter"):
        xorweights.encode(ft, base=base, out=tmp_path / "p")


def test_names_that_are_not_utf8_are_refused_cleanly(tmp_path: Path) -> None:
    ft, base = make_pair(tmp_path)
    (ft / os.fsdecode(b"notes-caf\xe9.json")).write_text("{}")
    with pytest.raises(xorweights.InputError, match=r"caf\\xe9.json is not valid UTF-8"):
        xorweights.encode(ft, base=base, out=tmp_path / "p")
    assert not (tmp_path / "p").exists()


def _edited(payload: Path, edit) -> None:
    doc = json.loads((payload / "xorweights.json").read_text())
    edit(doc)
    (payload / "xorweights.json").write_text(json.dumps(doc))


def test_publish_recomputes_raw_items_from_an_edited_manifest(hub, tmp_path: Path) -> None:
    ft, base = make_pair(tmp_path, drop=("lm_head.weight",))
    clean = tmp_path / "clean"
    xorweights.encode(ft, base=base, out=clean, allow_raw=["lm_head.*"])
    kw = {"endpoint": hub.url, "token": TOKEN, "allow_raw": ["lm_head.*"]}

    def tensor(doc, name):
        return next(t for f in doc["files"] for t in f.get("tensors", []) if t["name"] == name)

    def fake_base(doc):  # claim a one-element base tensor masks it
        doc["base_tensors"]["fake"] = {"dtype": "F16", "shape": [1], "sha256": "0" * 64}
        t = tensor(doc, "model.norm.weight")
        t["base"] = "fake"

    def as_copy(doc):  # the safetensors payload declared a plain copy
        f = next(f for f in doc["files"] if f["name"] == "model.safetensors")
        f.update(method="copy")
        f.pop("tensors")

    def no_tensors(doc):
        next(f for f in doc["files"] if f["name"] == "model.safetensors")["tensors"] = []

    for i, edit in enumerate((fake_base, as_copy, no_tensors)):
        payload = tmp_path / f"edited{i}"
        shutil.copytree(clean, payload)
        _edited(payload, edit)
        with pytest.raises(xorweights.XorWeightsError):
            publish(payload, f"me/edited{i}-xor", **kw)
        assert f"me/edited{i}-xor" not in hub.state.repos
    with pytest.raises(RawStorageError, match="refusing to publish"):  # a broader pattern is not the same
        publish(clean, "me/broad-xor", endpoint=hub.url, token=TOKEN, allow_raw=["*"])
    assert "me/broad-xor" not in hub.state.repos


def test_legacy_encode_reports_bytes_past_the_base(model_pair, tmp_path: Path) -> None:
    """The legacy format masks only up to the base file's length; encode's report says so for weight files."""
    base, tuned = model_pair()
    report = xorweights.encode(tuned, base=base, out=tmp_path / "p", format="oasst")
    assert report.unmasked_tails == (("pytorch_model-00001-of-00002.bin", 208),)
