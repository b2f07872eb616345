"""The native format: tensor-level XOR against any container of the base, byte-exact output."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import xorweights
from tests.conftest import tree
from xorweights.errors import UnsafePathError
from xorweights.formats.delta_frames import PLANES, ZSTD, FrameHead, head_size, parse_head
from xorweights.formats.native_manifest import RawNote, load_manifest
from xorweights.formats.raw_storage import GROWN_ROWS


def blake3(b: bytes) -> str:
    import blake3 as b3

    return b3.blake3(b).hexdigest()


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def base_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(100, 16, generator=g).half(),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(32, 16, generator=g),  # fp32
        "model.layers.0.quant.weight": torch.randint(-128, 127, (16, 8), generator=g, dtype=torch.int8),
        "model.layers.0.mask": torch.rand(8, 8, generator=g) > 0.5,
        "model.norm.weight": torch.ones(16).half(),
        "lm_head.weight": torch.randn(100, 16, generator=g).half(),
    }


def finetune(base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = {}
    for name, t in base.items():
        if t.is_floating_point():
            out[name] = (t.float() + 1e-3 * torch.randn(t.shape, generator=g)).to(t.dtype)
        elif t.dtype == torch.bool:
            out[name] = t.clone()
            out[name][0, :3] = ~out[name][0, :3]
        else:
            out[name] = t.clone()
            out[name][0, 0] += 1
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # vocabulary grown by 4 rows
        out[name] = torch.cat([out[name], torch.randn(4, 16, generator=g).half()])
    out["model.layers.0.adapter.weight"] = torch.randn(4, 16, generator=g).half()  # not in the base
    return out


def save_bin_shards(sd: dict[str, torch.Tensor], folder: Path, groups: list[list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, names in enumerate(groups, 1):
        torch.save({n: sd[n] for n in names}, folder / f"pytorch_model-{i:05d}-of-{len(groups):05d}.bin")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("native")
    base_sd = base_tensors()
    ft_sd = finetune(base_sd)
    rng = np.random.default_rng(3)
    tokenizer = rng.bytes(3000)
    config = json.dumps({"model_type": "llama", "hidden_size": 16}).encode()

    base = root / "base-bin"  # three .bin shards, grouped unlike the fine-tune's two safetensors
    names = list(base_sd)
    save_bin_shards(base_sd, base, [names[:2], names[2:5], names[5:]])
    (base / "tokenizer.model").write_bytes(tokenizer)
    (base / "config.json").write_bytes(config)

    ft = root / "finetuned"
    ft.mkdir()
    ft_names = sorted(ft_sd)
    shards = {
        "model-00001-of-00002.safetensors": ft_names[:4],
        "model-00002-of-00002.safetensors": ft_names[4:],
    }
    for fname, group in shards.items():
        save_file({n: ft_sd[n].contiguous() for n in group}, str(ft / fname), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, g in shards.items() for n in g}}
    (ft / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (ft / "config.json").write_bytes(config.replace(b"16", b'16, "vocab_size": 104'))
    tok = bytearray(tokenizer)
    tok[10:20] = b"fine-tuned"
    (ft / "tokenizer.model").write_bytes(bytes(tok))

    report = xorweights.encode(ft, base=base, out=root / "payload", allow_raw=["*.adapter.weight"])
    assert report.format == "xorweights" and report.native_manifest is not None
    assert report.native_manifest.format_version == 3
    xorweights.encode(ft, base=base, out=root / "payload-v1", allow_raw=["*.adapter.weight"], compress="none")
    return {"root": root, "base": base, "ft": ft, "payload": root / "payload", "v1": root / "payload-v1"}


def test_an_uncompressed_payload_is_version_1_and_decodes(release, tmp_path: Path) -> None:
    m = load_manifest(release["v1"])
    assert m.format_version == 1 and not any(f.compression for f in m.files)
    assert b'"compression"' not in (release["v1"] / "xorweights.json").read_bytes()
    xorweights.decode(release["v1"], base=release["base"], out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(release["ft"])
    assert dict(xorweights.iter_tensors(release["v1"], release["base"], framework="pt")).keys() == set(
        finetune(base_tensors())
    )


def test_a_compressed_payload_is_smaller_and_lists_stored_and_output_digests(release) -> None:
    m = load_manifest(release["payload"])
    for f in m.files:
        assert f.compression == ("delta-frames" if f.method == "tensor-xor" else None)
        assert f.sha256 == sha256((release["ft"] / f.name).read_bytes())
        assert f.size == (release["ft"] / f.name).stat().st_size
        assert f.payload_size == (release["payload"] / f.name).stat().st_size
        if f.compression:
            assert f.payload_size < (release["v1"] / f.name).stat().st_size


def test_payload_is_valid_safetensors_with_the_same_header(release) -> None:
    for p in sorted(release["ft"].glob("*.safetensors")):
        payload = release["v1"] / p.name
        n = int.from_bytes(p.read_bytes()[:8], "little")
        assert payload.read_bytes()[: 8 + n] == p.read_bytes()[: 8 + n]
        with safe_open(str(payload), framework="pt") as f, safe_open(str(p), framework="pt") as g:
            assert set(f.keys()) == set(g.keys())
            for k in f.keys():
                assert f.get_slice(k).get_shape() == g.get_slice(k).get_shape()


def test_manifest_records_files_tensors_and_base_tensors(release) -> None:
    m = load_manifest(release["payload"])
    methods = {f.name: f.method for f in m.files}
    assert methods == {
        "config.json": "copy",
        "model.safetensors.index.json": "copy",
        "model-00001-of-00002.safetensors": "tensor-xor",
        "model-00002-of-00002.safetensors": "tensor-xor",
        "tokenizer.model": "file-xor",
    }
    for f in m.files:
        assert f.sha256 == sha256((release["ft"] / f.name).read_bytes())
        assert f.payload_sha256 == sha256((release["payload"] / f.name).read_bytes())
    tensors = {t.name: t for f in m.files for t in f.tensors}
    assert tensors["model.layers.0.adapter.weight"].base is None  # stored raw, as allowed
    assert tensors["model.layers.0.adapter.weight"].raw == RawNote(
        "no base tensor of this name", "*.adapter.weight"
    )
    assert m.allow_raw == ("*.adapter.weight",)
    xored = [t for t in tensors.values() if t.base is not None]
    assert all(t.raw is None or t.raw.allowed_by == GROWN_ROWS for t in xored)
    assert tensors["model.embed_tokens.weight"].base == "model.embed_tokens.weight"
    assert m.base_tensors["model.embed_tokens.weight"].shape == (100, 16)
    want = base_tensors()["model.layers.0.mask"].numpy().tobytes()
    import blake3

    mask = m.base_tensors[
        "model.layers.0.mask"
    ]  # version 3: base tensors by blake3, which only xorweights reads
    assert (mask.algorithm, mask.digest) == ("blake3", blake3.blake3(want).hexdigest())
    assert m.base_tensors["model.layers.0.mask"].dtype == "BOOL"
    assert {m.base_tensors[n].dtype for n in m.base_tensors} == {"F16", "BF16", "F32", "I8", "BOOL"}


def test_raw_tensor_and_grown_rows_are_stored_as_they_are(release) -> None:
    ft = finetune(base_tensors())
    with safe_open(str(release["v1"] / "model-00001-of-00002.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    shard = (
        "model-00001-of-00002.safetensors"
        if "model.layers.0.adapter.weight" in keys
        else ("model-00002-of-00002.safetensors")
    )
    with safe_open(str(release["v1"] / shard), framework="pt") as f:
        assert torch.equal(f.get_tensor("model.layers.0.adapter.weight"), ft["model.layers.0.adapter.weight"])
    for f_name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        with safe_open(str(release["v1"] / f_name), framework="pt") as f:
            if "lm_head.weight" in f.keys():
                grown = f.get_tensor("lm_head.weight")[100:]
                assert torch.equal(grown, ft["lm_head.weight"][100:])  # XOR-ed with zero padding


def test_decode_against_sharded_bin_base_is_byte_exact(release, tmp_path: Path) -> None:
    report = xorweights.decode(release["payload"], base=release["base"], out=tmp_path / "out")
    assert report.format == "xorweights"
    assert tree(tmp_path / "out") == tree(release["ft"])
    assert all(f.verified for f in report.files)


def test_decode_against_a_differently_sharded_safetensors_copy(release, tmp_path: Path) -> None:
    sd = base_tensors()
    copy = tmp_path / "base-st"
    copy.mkdir()
    names = sorted(sd)
    save_file({n: sd[n] for n in names[:1]}, str(copy / "a.safetensors"))
    save_file({n: sd[n] for n in names[1:]}, str(copy / "b.safetensors"))
    shutil.copy(release["base"] / "tokenizer.model", copy / "tokenizer.model")
    xorweights.decode(release["payload"], base=copy, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(release["ft"])


def test_decode_against_a_float32_copy_of_half_precision_weights(release, tmp_path: Path) -> None:
    sd = {n: (t.float() if t.is_floating_point() else t) for n, t in base_tensors().items()}
    copy = tmp_path / "base-fp32"
    save_bin_shards(sd, copy, [list(sd)])
    shutil.copy(release["base"] / "tokenizer.model", copy / "tokenizer.model")
    xorweights.decode(release["payload"], base=copy, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(release["ft"])


def test_a_mismatching_base_tensor_is_named_and_its_output_never_made(release, tmp_path: Path) -> None:
    """The pass that reads the wrong base tensor fails; outputs that do not use it are made
    (each verified by its own sha256), the one that does never takes its name."""
    sd = base_tensors()
    sd["model.layers.0.mlp.up_proj.weight"][3, 3] += 1
    bad = tmp_path / "base-bad"
    save_bin_shards(sd, bad, [list(sd)])
    shutil.copy(release["base"] / "tokenizer.model", bad / "tokenizer.model")
    with pytest.raises(xorweights.BaseMismatchError) as info:
        xorweights.decode(release["payload"], base=bad, out=tmp_path / "out")
    e = info.value
    want = load_manifest(release["payload"]).base_tensors["model.layers.0.mlp.up_proj.weight"].digest
    assert str(e).startswith(
        f"base tensor model.layers.0.mlp.up_proj.weight in {bad / 'pytorch_model-00001-of-00001.bin'}"
    )
    assert e.expected == want and e.actual == blake3(
        sd["model.layers.0.mlp.up_proj.weight"].numpy().tobytes()
    )
    manifest = load_manifest(release["payload"])
    user = next(
        f.name
        for f in manifest.files
        if any(t.base == "model.layers.0.mlp.up_proj.weight" for t in f.tensors)
    )
    made = tree(tmp_path / "out")
    assert user not in made and all(made[n] == tree(release["ft"])[n] for n in made)


def test_load_state_dict_returns_verified_tensors_without_files(release, tmp_path: Path) -> None:
    want = finetune(base_tensors())
    sd = xorweights.load_state_dict(release["payload"], release["base"], framework="pt")
    assert set(sd) == set(want)
    for name, t in want.items():
        assert sd[name].dtype == t.dtype and torch.equal(sd[name], t), name
    arrays = dict(
        xorweights.iter_tensors(
            release["payload"],
            release["base"],
            framework="numpy",
            names=["model.layers.0.mask", "lm_head.weight"],
        )
    )
    assert set(arrays) == {"model.layers.0.mask", "lm_head.weight"}
    assert np.array_equal(arrays["lm_head.weight"], want["lm_head.weight"].numpy())
    assert arrays["model.layers.0.mask"].dtype == np.bool_
    with pytest.raises(xorweights.FormatError, match="numpy has no BF16"):
        list(
            xorweights.iter_tensors(
                release["payload"], release["base"], names=["model.layers.0.self_attn.q_proj.weight"]
            )
        )


def test_iter_tensors_names_a_wrong_base_tensor(release, tmp_path: Path) -> None:
    sd = base_tensors()
    sd["model.norm.weight"][0] = 2
    bad = tmp_path / "bad"
    save_bin_shards(sd, bad, [list(sd)])
    with pytest.raises(
        xorweights.BaseMismatchError, match=r"^base tensor model.norm.weight in .*pytorch_model-00001"
    ):
        xorweights.load_state_dict(release["payload"], bad)


def test_a_corrupt_payload_tensor_is_named(release, tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    shutil.copytree(release["v1"], payload)
    target = payload / "model-00002-of-00002.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # the last tensor's last byte
    target.write_bytes(bytes(data))
    with pytest.raises(
        xorweights.ChecksumMismatchError, match=r"^tensor .* of model-00002-of-00002.safetensors"
    ):
        xorweights.load_state_dict(payload, release["base"])
    with pytest.raises(
        xorweights.ChecksumMismatchError, match="decoded model-00002-of-00002.safetensors: sha256"
    ):
        xorweights.decode(payload, base=release["base"], out=tmp_path / "out")
    assert "model-00002-of-00002.safetensors" not in tree(tmp_path / "out")


def frame_offsets(path: Path) -> list[tuple[int, FrameHead]]:
    """Where each frame of a compressed payload file starts, and its head (an independent walk)."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        head = parse_head(data[pos : pos + head_size(data[pos : pos + 2])], "test")
        out.append((pos, head))
        pos += head.size
    return out


def test_a_corrupt_frame_is_named_and_nothing_is_committed(release, tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    shutil.copytree(release["payload"], payload)
    target = payload / "model-00001-of-00002.safetensors"
    frames = frame_offsets(target)
    k, (pos, head) = next(
        (i, f) for i, f in enumerate(frames) if f[1].transform == PLANES and f[1].codings[-1] == ZSTD
    )
    data = bytearray(target.read_bytes())
    data[pos + head.size - 6] ^= 0x55  # inside its last plane
    target.write_bytes(bytes(data))
    # The file differs from the sha256 xorweights.json records for it: a mismatch (exit 1), not a
    # format error, and the frame that failed is named.
    pattern = rf"but xorweights.json records [0-9a-f]{{64}}: .*frame {k} \(tensor [\w.]+\)"
    with pytest.raises(xorweights.ChecksumMismatchError, match=pattern) as e:
        xorweights.decode(payload, base=release["base"], out=tmp_path / "out")
    assert e.value.stage == "payload" and e.value.expected != e.value.actual
    assert "model-00001-of-00002.safetensors" not in tree(tmp_path / "out")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and "00001" in p.name]
    with pytest.raises(xorweights.ChecksumMismatchError, match=pattern):
        xorweights.load_state_dict(payload, release["base"])


def test_a_truncated_compressed_file_is_refused_before_the_pass(release, tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    shutil.copytree(release["payload"], payload)
    target = payload / "model-00002-of-00002.safetensors"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(xorweights.FormatError, match=r"model-00002-of-00002.safetensors: .* bytes, but"):
        xorweights.decode(payload, base=release["base"], out=tmp_path / "out")
    assert not (tmp_path / "out" / "model-00002-of-00002.safetensors").exists()


def test_missing_base_tensor_and_short_payload_are_refused_up_front(release, tmp_path: Path) -> None:
    sd = base_tensors()
    del sd["model.layers.0.quant.weight"]
    partial = tmp_path / "partial"
    save_bin_shards(sd, partial, [list(sd)])
    shutil.copy(release["base"] / "tokenizer.model", partial / "tokenizer.model")
    with pytest.raises(
        xorweights.MissingFileError, match="base tensor missing in .*: model.layers.0.quant.weight"
    ):
        xorweights.decode(release["payload"], base=partial, out=tmp_path / "out")
    payload = tmp_path / "payload"
    shutil.copytree(release["payload"], payload)
    with open(payload / "model-00001-of-00002.safetensors", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(xorweights.FormatError, match="1000 bytes, but xorweights.json lists"):
        xorweights.decode(payload, base=release["base"], out=tmp_path / "out2")


def test_bin_only_finetune_is_encoded_per_file_with_a_note(tmp_path: Path) -> None:
    base_sd = base_tensors()
    base, ft = tmp_path / "base", tmp_path / "ft"
    save_bin_shards(base_sd, base, [list(base_sd)])
    ft_sd = {n: t for n, t in finetune(base_sd).items() if n in base_sd}
    save_bin_shards(ft_sd, ft, [list(ft_sd)])
    with pytest.raises(xorweights.RawStorageError, match="its base file is .* bytes shorter"):
        xorweights.encode(ft, base=base, out=tmp_path / "payload")  # the grown rows make it longer
    bin_name = "pytorch_model-00001-of-00001.bin"
    report = xorweights.encode(ft, base=base, out=tmp_path / "payload", allow_raw=[bin_name])
    entry = report.native_manifest.file(bin_name)
    assert entry.method == "file-xor" and "publish safetensors" in (entry.note or "")
    xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(ft)
    with pytest.raises(xorweights.InputError, match="encoded per file"):
        xorweights.load_state_dict(tmp_path / "payload", base)
    (base / "pytorch_model-00001-of-00001.bin").rename(base / "other.bin")
    with pytest.raises(xorweights.RawStorageError, match="convert the fine-tuned model to safetensors"):
        xorweights.encode(ft, base=base, out=tmp_path / "payload2")
    assert not (tmp_path / "payload2").exists()


def test_bin_copies_beside_safetensors_are_left_out(release, tmp_path: Path) -> None:
    ft = tmp_path / "ft"
    shutil.copytree(release["ft"], ft)
    torch.save({"x": torch.zeros(2)}, ft / "pytorch_model.bin")
    report = xorweights.encode(ft, base=release["base"], out=tmp_path / "payload", allow_raw=["*.adapter.*"])
    assert report.native_manifest.omitted == ("pytorch_model.bin",)
    assert not (tmp_path / "payload" / "pytorch_model.bin").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["files"][0].update(name="../evil"), "must stay inside its folder"),
        (lambda d: d["files"][0].update(sha256="abc"), "must be a sha256"),
        (lambda d: d["files"][0].update(method="exec"), "method must be one of"),
        (lambda d: d.update(format_version=4), "format_version 4 is not supported"),
        (lambda d: d["files"][0].update(compression="lz4"), "unknown compression 'lz4'"),
        (
            lambda d: (
                d.update(format_version=1)
                or d["files"][0].update(compression="delta-frames")
                or [b.update(sha256=b.pop("blake3")) for b in d["base_tensors"].values()]
            ),
            "compression applies to tensor-xor files of format_version 2",
        ),
        (  # version 3 gives base tensors by blake3
            lambda d: [b.update(sha256=b.pop("blake3")) for b in d["base_tensors"].values()],
            r"base tensor [\w.]+ blake3 must be a blake3 digest \(64 lowercase hex digits\)",
        ),
        (lambda d: d["base_tensors"].clear(), "not in base_tensors"),
        (lambda d: d.update(base_model="two\nlines"), r"base_model 'two\\nlines': expected a Hub repo id"),
        (lambda d: d.update(base_model=7), "base_model 7: expected"),
    ],
)
def test_hostile_manifests_are_refused(release, tmp_path: Path, edit, message: str) -> None:
    payload = tmp_path / "payload"
    shutil.copytree(release["payload"], payload)
    doc = json.loads((payload / "xorweights.json").read_text())
    edit(doc)
    (payload / "xorweights.json").write_text(json.dumps(doc))
    with pytest.raises(xorweights.XorWeightsError, match=message):
        xorweights.decode(payload, base=release["base"], out=tmp_path / "out")
    assert tree(tmp_path / "out") == {}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["files"][0].update(name="a\x1b[31m.bin"),
            r"files\[0\]: file name .* has control characters",
        ),
        (
            lambda d: d["files"][1].update(name="new\nline.bin"),
            r"files\[1\]: file name .* has control characters",
        ),
        (lambda d: d.update(omitted=["ok.bin", "tab\tname.bin"]), r"omitted\[1\]: file name .* has control"),
        (lambda d: d["files"][0].update(name="../evil"), r"files\[0\]: file name '../evil' must stay inside"),
    ],
)
def test_manifest_file_names_pass_the_one_strict_check(release, tmp_path: Path, edit, message: str) -> None:
    """Every file name in xorweights.json goes through `outfolder.paths.check_name`; a refusal is one
    `UnsafePathError` line naming the manifest and the entry (its `path`: the manifest)."""
    doc = json.loads((release["payload"] / "xorweights.json").read_text())
    edit(doc)
    path = tmp_path / "xorweights.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UnsafePathError, match=message) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert info.value.path == str(path)


def test_base_name_is_recorded_and_a_rerun_rewrites_only_the_manifest(release, tmp_path: Path) -> None:
    out = tmp_path / "payload"
    shutil.copytree(release["payload"], out)  # finished, from these very inputs
    old = load_manifest(out)
    assert old.base_model is None and "base_model" not in json.loads((out / "xorweights.json").read_text())
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "xorweights.json"}
    kw = {"base": release["base"], "out": out, "allow_raw": ["*.adapter.weight"]}

    report = xorweights.encode(release["ft"], base_name="huggyllama/llama-7b", **kw)
    assert all(f.kept for f in report.files) and report.native_manifest is not None
    named = load_manifest(out)
    assert named.base_model == "huggyllama/llama-7b" == report.native_manifest.base_model
    assert replace(named, base_model=None) == old  # nothing else changed
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "xorweights.json"}
    checked = xorweights.encode(release["ft"], with_checksums=True, **kw)  # not given: kept as recorded
    assert checked.manifest is not None and checked.manifest.base_model == "huggyllama/llama-7b"
    assert load_manifest(out).base_model == "huggyllama/llama-7b"

    with pytest.raises(xorweights.InputError, match="base model name 'a<b>'"):
        xorweights.encode(release["ft"], base_name="a<b>", **kw)


def test_cli_encode_decode_verify_native(release, tmp_path: Path, capsys) -> None:
    from xorweights.cli import main

    assert (
        main(
            [
                "encode",
                str(release["ft"]),
                "--base",
                str(release["base"]),
                "--out",
                str(tmp_path / "p"),
                "--allow-raw",
                "*.adapter.weight",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "xorweights.json written: 7 base tensors used, 1 items (128 B) stored raw as allowed" in out
    code = main(
        [
            "decode",
            str(tmp_path / "p"),
            "--base",
            str(release["base"]),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "5 outputs (sha256)" in out
    assert tree(tmp_path / "o") == tree(release["ft"])
    code = main(["verify", str(tmp_path / "o"), "--checksums", str(tmp_path / "p" / "xorweights.json")])
    assert code == 0
    (tmp_path / "o" / "config.json").write_text("{}")
    assert main(["verify", str(tmp_path / "o"), "--checksums", str(tmp_path / "p" / "xorweights.json")]) == 1
    capsys.readouterr()
    sd = base_tensors()
    sd["lm_head.weight"][0, 0] = 9
    save_bin_shards(sd, tmp_path / "bad", [list(sd)])
    code = main(
        ["decode", str(tmp_path / "p"), "--base", str(tmp_path / "bad"), "--out", str(tmp_path / "o2")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "base file missing in" in err and "tokenizer.model" in err
    shutil.copy(release["base"] / "tokenizer.model", tmp_path / "bad")
    code = main(
        [
            "decode",
            str(tmp_path / "p"),
            "--base",
            str(tmp_path / "bad"),
            "--out",
            str(tmp_path / "o2"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert code == 1 and first.startswith("Error: base tensor lm_head.weight in "), err
    assert "but the payload was made against" in first


def test_decode_against_meta_original_llama(tmp_path: Path) -> None:
    from xorweights.llama.convert import open_base

    meta = Path(__file__).resolve().parent / "golden" / "llama-tiny-2shard" / "meta"
    _, compute = open_base(meta)
    rng = np.random.default_rng(5)
    ft = tmp_path / "ft"
    ft.mkdir()
    sd = {}
    for name, fn in compute.items():
        a = np.array(fn())
        if a.dtype == np.float16:
            a = (a.astype(np.float32) + rng.normal(0, 1e-3, a.shape)).astype(np.float16)
        sd[name] = torch.from_numpy(a)
    save_file(sd, str(ft / "model.safetensors"))
    xorweights.encode(ft, base=meta, out=tmp_path / "payload")
    m = load_manifest(tmp_path / "payload")
    assert len(m.base_tensors) == len(sd)
    xorweights.decode(tmp_path / "payload", base=meta, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(ft)


def test_float_casts_match_torch() -> None:
    from xorweights.tensors.store import cast

    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-8, 8, 10_000),
            np.array(
                [np.inf, -np.inf, np.nan, 0.0, -0.0, 1.00390625, 1.01171875, 65504, 70000, 1e-8], np.float32
            ),
        ]
    )
    t = torch.from_numpy(x)
    ours_bf16 = cast(x, "F32", "BF16")
    assert np.array_equal(ours_bf16, t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
    back = cast(ours_bf16, "BF16", "F32")
    assert np.array_equal(back, t.to(torch.bfloat16).float().numpy(), equal_nan=True)
    half = cast(ours_bf16, "BF16", "F16")
    assert np.array_equal(half, t.to(torch.bfloat16).half().numpy(), equal_nan=True)
    assert np.array_equal(cast(x, "F32", "F16"), t.half().numpy(), equal_nan=True)


def test_a_second_decode_keeps_what_the_first_made(release, tmp_path: Path) -> None:
    xorweights.decode(release["payload"], base=release["base"], out=tmp_path / "out")
    (tmp_path / "out" / "config.json").unlink()
    again = xorweights.decode(release["payload"], base=release["base"], out=tmp_path / "out")
    kept = {f.name for f in again.files if f.kept}
    assert kept == set(tree(release["ft"])) - {"config.json"}
    assert tree(tmp_path / "out") == tree(release["ft"])


def test_a_payload_using_no_base_tensor_decodes_without_a_base(tmp_path: Path) -> None:
    """Every tensor stored raw (`allow_raw`): the base image is zeros, no base folder is needed."""
    ft, base = tmp_path / "ft", tmp_path / "base"
    ft.mkdir()
    base.mkdir()
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(ft / "model.safetensors"))
    save_file({"other": torch.arange(8, dtype=torch.float32)}, str(base / "model.safetensors"))
    encoded = xorweights.encode(ft, base=base, out=tmp_path / "pay", allow_raw=["*"])
    assert encoded.files[0].base_digests == {}  # a base image is not a file: nothing to record of it
    assert not load_manifest(tmp_path / "pay" / "xorweights.json").base_tensors
    for b in (base, tmp_path / "no-such-base"):
        out = tmp_path / f"out-{b.name}"
        report = xorweights.decode(tmp_path / "pay", base=b, out=out)
        assert [f.verified for f in report.files] == [True]
        assert tree(out) == tree(ft)


# --- the base proved inside the pass -----------------------------------------------------------


def _read_chars() -> int:
    """Bytes this process has read through system calls so far (page cache included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _big_pair(root: Path) -> tuple[Path, Path, int]:
    """A base of 16 MiB of float16 (two tensors) in safetensors and a fine-tune of it."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(5)
    base = {f"w{i}": rng.standard_normal((2048, 2048)).astype(np.float16) for i in range(2)}
    tuned = {n: (t + 0.01 * rng.standard_normal(t.shape)).astype(np.float16) for n, t in base.items()}
    for name, sd in (("base", base), ("ft", tuned)):
        (root / name).mkdir()
        save_file(sd, str(root / name / "model.safetensors"))
    return root / "base", root / "ft", sum(t.nbytes for t in base.values())


@pytest.mark.parametrize("compress", ["zstd", "none"])
def test_a_decode_reads_the_base_once(tmp_path: Path, compress: str) -> None:
    """The base tensors are hashed as the pass reads them: a decode reads each base byte once
    (with a separate proof it read them twice)."""
    base, ft, base_bytes = _big_pair(tmp_path)
    xorweights.encode(ft, base=base, out=tmp_path / "payload", compress=compress)
    payload_bytes = sum(p.stat().st_size for p in (tmp_path / "payload").iterdir() if p.is_file())
    before = _read_chars()
    report = xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out", jobs=1)
    read = _read_chars() - before
    assert all(f.verified and f.base_verified for f in report.files if f.name == "model.safetensors")
    assert tree(tmp_path / "out") == tree(ft)
    assert base_bytes < read < payload_bytes + 1.2 * base_bytes, (read, payload_bytes, base_bytes)


@pytest.mark.parametrize("compress", ["zstd", "none"])
def test_a_wrong_base_fails_in_the_pass_and_no_output_takes_its_name(tmp_path: Path, compress: str) -> None:
    base, ft, _ = _big_pair(tmp_path)
    xorweights.encode(ft, base=base, out=tmp_path / "payload", compress=compress)
    from safetensors.numpy import load_file, save_file

    sd = load_file(str(base / "model.safetensors"))
    sd["w1"][2047, 2047] += 1  # the very last element: found at the end of the pass
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(sd, str(bad / "model.safetensors"))
    want = load_manifest(tmp_path / "payload").base_tensors["w1"]
    with pytest.raises(xorweights.BaseMismatchError) as info:
        xorweights.decode(tmp_path / "payload", base=bad, out=tmp_path / "out")
    assert want.algorithm == ("sha256" if compress == "none" else "blake3")  # version 1 keeps sha256
    assert str(info.value).startswith(f"base tensor w1 in {bad / 'model.safetensors'}: {want.algorithm} ")
    digest = sha256 if compress == "none" else blake3
    assert info.value.expected == want.digest and info.value.actual == digest(sd["w1"].tobytes())
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.suffix == ".safetensors"]


def test_a_base_tensor_longer_than_its_payload_tensor_is_proved_whole(tmp_path: Path) -> None:
    """A shrunk vocabulary: the pass reads only the rows the fine-tune kept, and hashes the rest
    of the base tensor too, so a change past them is still found."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    b = {"emb": rng.standard_normal((100, 16)).astype(np.float16)}
    for name, sd in (("base", b), ("ft", {"emb": (b["emb"][:96] + 0.01).astype(np.float16)})):
        (tmp_path / name).mkdir()
        save_file(sd, str(tmp_path / name / "model.safetensors"))
    xorweights.encode(tmp_path / "ft", base=tmp_path / "base", out=tmp_path / "p")
    xorweights.decode(tmp_path / "p", base=tmp_path / "base", out=tmp_path / "o")
    assert tree(tmp_path / "o") == tree(tmp_path / "ft")
    b["emb"][99, 0] += 1  # past the 96 rows the payload's tensor has
    (tmp_path / "bad").mkdir()
    save_file(b, str(tmp_path / "bad" / "model.safetensors"))
    with pytest.raises(
        xorweights.BaseMismatchError, match=r"^base tensor emb in .*bad/model.safetensors: blake3"
    ):
        xorweights.decode(tmp_path / "p", base=tmp_path / "bad", out=tmp_path / "o2")
    assert not (tmp_path / "o2" / "model.safetensors").exists()
