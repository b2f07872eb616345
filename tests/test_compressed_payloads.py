"""Compressed native payloads (format version 2) end to end: every dtype, empty tensors, tensors
cut into many frames and partial ones, both transforms; decode and `iter_tensors` byte-exact."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import xorweights
from tests.conftest import tree
from xorweights.errors import InputChangedError
from xorweights.formats import delta_frames, frame_stream
from xorweights.formats.native_manifest import load_manifest
from xorweights.tensors.dtypes import DTYPE_SIZES


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """A safetensors file written by hand (the format: u64 header length, JSON header, data)."""
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(t[2] for t in tensors.values()))


def pair(root: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """Base and fine-tuned folders: one tensor per dtype in odd lengths, empty ones, and a 1-byte
    tensor of odd length first, so that every wider tensor starts at an unaligned offset."""
    rng = np.random.default_rng(7)
    base: dict[str, tuple[str, tuple[int, ...], bytes]] = {"a.odd": ("U8", (7,), rng.bytes(7))}
    for i, dtype in enumerate(sorted(DTYPE_SIZES)):
        n = 301 + 13 * i
        base[f"t.{dtype}"] = (dtype, (n,), rng.bytes(n * DTYPE_SIZES[dtype]))
    base["z.empty"] = ("F16", (0, 5), b"")
    base["z.empty32"] = ("F32", (0,), b"")
    tuned = {}
    for name, (dtype, shape, data) in base.items():
        arr = np.frombuffer(data, np.uint8).copy()
        flip = rng.random(arr.size) < 0.3  # a fine-tune: some low bits, some whole bytes
        arr[flip] ^= rng.integers(1, 256, int(flip.sum()), dtype=np.uint8)
        tuned[name] = (dtype, shape, arr.tobytes())
    for folder, tensors in (("base", base), ("ft", tuned)):
        (root / folder).mkdir()
        write_safetensors(root / folder / "model.safetensors", tensors)
        (root / folder / "config.json").write_text('{"hidden": 3}\n')
    return root / "base", root / "ft", {n: t[2] for n, t in tuned.items()}


def raw(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("compress", ["zstd", "zstd-grouped"])
@pytest.mark.parametrize("frames", ["whole", "tiny"])
def test_every_dtype_round_trips_compressed(tmp_path: Path, monkeypatch, compress: str, frames: str) -> None:
    if frames == "tiny":  # many frames per tensor, the last one partial; the header over several
        monkeypatch.setattr(frame_stream, "FRAME_ELEMENTS", 64)
        monkeypatch.setattr(frame_stream, "STORED_FRAME_BYTES", 100)
    base, ft, tuned = pair(tmp_path)
    report = xorweights.encode(ft, base=base, out=tmp_path / "payload", compress=compress)
    m = report.native_manifest
    assert m is not None and m.format_version == 3
    assert m.file("model.safetensors").compression == "delta-frames"
    assert m.file("config.json").compression is None
    assert load_manifest(tmp_path / "payload") == m
    if frames == "tiny":
        heads = []
        data = (tmp_path / "payload" / "model.safetensors").read_bytes()
        pos = 0
        while pos < len(data):
            head = delta_frames.parse_head(data[pos : pos + delta_frames.head_size(data[pos : pos + 2])], "t")
            heads.append(head)
            pos += head.size
        assert len(heads) > 100 and {h.transform for h in heads} == {delta_frames.STORED, delta_frames.PLANES}
        codings = {c for h in heads for c in h.codings}
        assert delta_frames.ZSTD in codings and delta_frames.RAW in codings
        if compress == "zstd":  # (frames of 64 elements are too small for grouping to pay)
            assert delta_frames.ZSTD_GROUPED not in codings
    monkeypatch.undo()  # the reader takes frames of any size up to its limit
    xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(ft)
    loaded = xorweights.iter_tensors(tmp_path / "payload", base, framework="pt")
    assert {n: raw(t) for n, t in loaded} == tuned
    some = dict(xorweights.iter_tensors(tmp_path / "payload", base, framework="pt", names=["t.I64"]))
    assert list(some) == ["t.I64"] and raw(some["t.I64"]) == tuned["t.I64"]


def test_compressed_and_uncompressed_payloads_decode_to_the_same_files(tmp_path: Path) -> None:
    base, ft, _ = pair(tmp_path)
    for mode in ("zstd", "none"):
        report = xorweights.encode(ft, base=base, out=tmp_path / f"p-{mode}", compress=mode)
        assert report.bytes_processed == sum(p.stat().st_size for p in ft.iterdir())  # the model's bytes
        assert report.bytes_written == sum(
            p.stat().st_size for p in (tmp_path / f"p-{mode}").iterdir() if p.name != "xorweights.json"
        )
        xorweights.decode(tmp_path / f"p-{mode}", base=base, out=tmp_path / f"out-{mode}")
    assert tree(tmp_path / "out-zstd") == tree(tmp_path / "out-none") == tree(ft)
    v1, v2 = load_manifest(tmp_path / "p-none"), load_manifest(tmp_path / "p-zstd")
    assert v1.format_version == 1 and v2.format_version == 3
    assert {f.name: f.sha256 for f in v1.files} == {f.name: f.sha256 for f in v2.files}


def test_a_fine_tuned_file_changed_after_planning_is_refused(tmp_path: Path, monkeypatch) -> None:
    base, ft, _ = pair(tmp_path)
    from xorweights.formats import native_encode

    real = native_encode.prepare_encode

    def then_change(*args, **kwargs):  # the file changes between the planning hash and the pass
        plan = real(*args, **kwargs)
        data = bytearray((ft / "model.safetensors").read_bytes())
        data[-1] ^= 1
        (ft / "model.safetensors").write_bytes(bytes(data))
        return plan

    monkeypatch.setattr(native_encode, "prepare_encode", then_change)
    with pytest.raises(InputChangedError, match=r"model.safetensors: it changed .*sha256"):
        xorweights.encode(ft, base=base, out=tmp_path / "payload")
    assert not (tmp_path / "payload" / "xorweights.json").exists()
    assert not (tmp_path / "payload" / "model.safetensors").exists()


def test_frames_beyond_the_output_size_are_refused_before_they_are_read(tmp_path: Path) -> None:
    """A hostile payload (manifest updated to match) cannot make more output than the manifest says."""
    import hashlib

    base, ft, _ = pair(tmp_path)
    payload = tmp_path / "payload"
    xorweights.encode(ft, base=base, out=payload)
    extra = delta_frames.encode_frame(
        bytes(1 << 20), b"", delta_frames.STORED, 1, "", delta_frames.compressor()
    )
    data = (payload / "model.safetensors").read_bytes() + extra * 8
    (payload / "model.safetensors").write_bytes(data)
    doc = json.loads((payload / "xorweights.json").read_text())
    entry = next(f for f in doc["files"] if f["name"] == "model.safetensors")
    entry.update(payload_size=len(data), payload_sha256=hashlib.sha256(data).hexdigest())
    (payload / "xorweights.json").write_text(json.dumps(doc))
    with pytest.raises(xorweights.FormatError, match=r"frame \d+ .*makes more than the output's \d+ bytes"):
        xorweights.decode(payload, base=base, out=tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    with pytest.raises(xorweights.FormatError, match="makes more than the output's"):
        dict(xorweights.iter_tensors(payload, base, framework="pt"))


def test_named_tensors_load_without_the_base_tensors_of_the_others(tmp_path: Path) -> None:
    """A user holding only part of the base can still load the tensors that part masks."""
    from xorweights.tensors.safetensors_header import read_header

    base, ft, tuned = pair(tmp_path)
    xorweights.encode(ft, base=base, out=tmp_path / "payload")
    header = read_header(base / "model.safetensors")
    data = (base / "model.safetensors").read_bytes()
    t = header.tensors["t.F16"]
    (tmp_path / "part").mkdir()
    write_safetensors(
        tmp_path / "part" / "model.safetensors", {"t.F16": (t.dtype, t.shape, data[t.begin : t.end])}
    )
    got = dict(
        xorweights.iter_tensors(tmp_path / "payload", tmp_path / "part", framework="pt", names=["t.F16"])
    )
    assert list(got) == ["t.F16"] and raw(got["t.F16"]) == tuned["t.F16"]


def test_a_frame_with_a_lying_plane_length_is_the_one_named(tmp_path: Path, monkeypatch) -> None:
    """Frames decode in parallel; the damaged frame, not the next one it misplaces, is reported."""
    monkeypatch.setattr(frame_stream, "FRAME_ELEMENTS", 64)
    base, ft, _ = pair(tmp_path)
    xorweights.encode(ft, base=base, out=tmp_path / "payload")
    target = tmp_path / "payload" / "model.safetensors"
    data, pos, k = bytearray(target.read_bytes()), 0, 0
    while True:
        head = delta_frames.parse_head(
            bytes(data[pos : pos + delta_frames.head_size(data[pos : pos + 2])]), "t"
        )
        if delta_frames.ZSTD in head.codings and k > 3:
            break
        pos, k = pos + head.size, k + 1
    j = head.codings.index(delta_frames.ZSTD)
    at = pos + 8 + head.width + 4 * j
    struct.pack_into("<I", data, at, head.planes[j] + 5)  # a zstd plane "grows" by 5 bytes
    target.write_bytes(bytes(data))
    doc = json.loads((tmp_path / "payload" / "xorweights.json").read_text())
    entry = next(f for f in doc["files"] if f["name"] == "model.safetensors")
    entry["payload_sha256"] = __import__("hashlib").sha256(bytes(data)).hexdigest()
    (tmp_path / "payload" / "xorweights.json").write_text(json.dumps(doc))
    monkeypatch.undo()
    for jobs in (1, 2):
        with pytest.raises(xorweights.FormatError, match=rf"model.safetensors: frame {k} \(tensor "):
            xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / f"out{jobs}", jobs=jobs)
    with pytest.raises(xorweights.FormatError, match=rf"frame {k} \(tensor "):
        dict(xorweights.iter_tensors(tmp_path / "payload", base, framework="pt"))


def test_a_compressed_file_listed_as_uncompressed_is_named(tmp_path: Path) -> None:
    base, ft, _ = pair(tmp_path)
    xorweights.encode(ft, base=base, out=tmp_path / "payload")
    doc = json.loads((tmp_path / "payload" / "xorweights.json").read_text())
    next(f for f in doc["files"] if f["name"] == "model.safetensors").pop("compression")
    (tmp_path / "payload" / "xorweights.json").write_text(json.dumps(doc))
    with pytest.raises(
        xorweights.FormatError, match="holds delta frames, but xorweights.json lists it uncompressed"
    ):
        xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out")
