"""The native format's exact bytes, pinned: a tiny fixed model pair, its payload and xorweights.json.

The payload file is also checked against an independent writer: safetensors' own `save_file` of the
tensors XOR-ed with numpy; the manifest's digests against hashlib over the tensors' bytes. A change
to any byte of the format shows here first (update the golden files only with a format version).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

import xorweights
from tests.conftest import tree

GOLDEN = Path(__file__).parent / "golden" / "native-tiny"


def _pair(root: Path) -> tuple[Path, Path]:
    base = {
        "a.weight": (np.arange(12, dtype=np.float32) / 8).reshape(3, 4),
        "b.bias": np.arange(4, dtype=np.float16),
    }
    tuned = {"a.weight": base["a.weight"] + np.float32(0.25), "b.bias": base["b.bias"] * np.float16(2)}
    for name, tensors in (("base", base), ("ft", tuned)):
        (root / name).mkdir(parents=True)
        save_file(tensors, str(root / name / "model.safetensors"))
        (root / name / "config.json").write_text('{"hidden": 4}\n')
    return root / "base", root / "ft"


def test_a_tiny_native_payload_is_byte_for_byte_the_golden_one(tmp_path: Path) -> None:
    base, tuned = _pair(tmp_path)
    out = tmp_path / "payload"
    xorweights.encode(tuned, base=base, out=out, compress="none")  # format version 1
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "xorweights.json"]
    golden = (GOLDEN / "xorweights.json").read_text().replace("{version}", xorweights.__version__)
    assert (out / "xorweights.json").read_text() == golden
    assert (out / "model.safetensors").read_bytes() == (GOLDEN / "model.safetensors").read_bytes()
    assert (out / "config.json").read_bytes() == (GOLDEN / "config.json").read_bytes()

    # independently: safetensors' writer over numpy's XOR, and hashlib over the tensors' bytes
    b, t = load_file(str(base / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    xored = {n: (t[n].view(np.uint8) ^ b[n].view(np.uint8)).view(t[n].dtype).reshape(t[n].shape) for n in t}
    save_file(xored, str(tmp_path / "independent.safetensors"))
    assert (tmp_path / "independent.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    doc = json.loads(golden)
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    entry = next(f for f in doc["files"] if f["name"] == "model.safetensors")
    assert entry["sha256"] == sha((tuned / "model.safetensors").read_bytes())
    assert entry["payload_sha256"] == sha((out / "model.safetensors").read_bytes())
    assert {x["name"]: x["sha256"] for x in entry["tensors"]} == {n: sha(t[n].tobytes()) for n in t}
    assert {n: v["sha256"] for n, v in doc["base_tensors"].items()} == {n: sha(b[n].tobytes()) for n in b}


def test_the_golden_payload_decodes_to_the_fine_tuned_files(tmp_path: Path) -> None:
    base, tuned = _pair(tmp_path)
    payload = tmp_path / "golden"
    payload.mkdir()
    for name in ("model.safetensors", "config.json"):
        (payload / name).write_bytes((GOLDEN / name).read_bytes())
    text = (GOLDEN / "xorweights.json").read_text().replace("{version}", xorweights.__version__)
    (payload / "xorweights.json").write_text(text)
    report = xorweights.decode(payload, base=base, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(tuned) and all(f.verified for f in report.files)


# --- format version 2: delta frames ------------------------------------------------------------

GOLDEN_V2 = Path(__file__).parent / "golden" / "native-tiny-v2"


def independent_decode(payload: bytes, base_image: bytes) -> bytes:
    """The delta-frame layout of docs/formats.md, decoded with struct, zstandard and Python integers only."""
    import zstandard

    out, pos, at = bytearray(), 0, 0
    while pos < len(payload):
        transform, width, key, reserved, n = struct.unpack_from("<BBBBI", payload, pos)
        assert transform in (0, 1) and key == 0 and reserved == 0  # the golden uses no grouping
        planes = 1 if transform == 0 else width
        lengths = struct.unpack_from(f"<{planes}I", payload, pos + 8)
        pos += 8 + 4 * planes
        data = []
        for length in lengths:
            data.append(zstandard.ZstdDecompressor().decompress(payload[pos : pos + length]))
            pos += length
        if transform == 0:
            out += data[0]
            at += n
            continue
        bits = 8 * width
        for i in range(n):
            z = sum(data[j][i] << (8 * j) for j in range(width))
            d = (z >> 1) ^ -(z & 1)  # un-zigzag
            b = int.from_bytes(base_image[at + i * width : at + (i + 1) * width], "little")
            out += ((b + d) % (1 << bits)).to_bytes(width, "little")
        at += n * width
    return bytes(out)


def test_a_tiny_compressed_payload_matches_the_golden_one(tmp_path: Path) -> None:
    import zstandard

    base, tuned = _pair(tmp_path)
    out = tmp_path / "payload"
    xorweights.encode(tuned, base=base, out=out)
    golden = (GOLDEN_V2 / "xorweights.json").read_text().replace("{version}", xorweights.__version__)
    made, want = json.loads((out / "xorweights.json").read_text()), json.loads(golden)
    same_zstd = (
        ".".join(map(str, zstandard.ZSTD_VERSION)) == (GOLDEN_V2 / "zstd-version.txt").read_text().strip()
    )
    if same_zstd:  # zstd's own bytes are pinned only for the zstd they were made with
        assert (out / "xorweights.json").read_text() == golden
        assert (out / "model.safetensors").read_bytes() == (GOLDEN_V2 / "model.safetensors").read_bytes()
    else:
        for doc in (made, want):
            doc["files"][1].pop("payload_size"), doc["files"][1].pop("payload_sha256")
        assert made == want
    # Independently of xorweights' reader: the golden payload decodes to the fine-tuned file.
    image = bytes(8 + int.from_bytes((tuned / "model.safetensors").read_bytes()[:8], "little"))
    b = load_file(str(base / "model.safetensors"))
    image += b"".join(b[n].tobytes() for n in ("a.weight", "b.bias"))  # the fine-tune's tensor order
    for payload in ((GOLDEN_V2 / "model.safetensors").read_bytes(), (out / "model.safetensors").read_bytes()):
        assert independent_decode(payload, image) == (tuned / "model.safetensors").read_bytes()
    entry = next(f for f in want["files"] if f["name"] == "model.safetensors")
    assert entry["compression"] == "delta-frames" and want["format_version"] == 2
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    assert entry["payload_sha256"] == sha((GOLDEN_V2 / "model.safetensors").read_bytes())
    assert entry["sha256"] == sha((tuned / "model.safetensors").read_bytes())


def test_the_golden_compressed_payload_decodes(tmp_path: Path) -> None:
    base, tuned = _pair(tmp_path)
    payload = tmp_path / "golden"
    payload.mkdir()
    for name in ("model.safetensors", "config.json"):
        (payload / name).write_bytes((GOLDEN_V2 / name).read_bytes())
    text = (GOLDEN_V2 / "xorweights.json").read_text().replace("{version}", xorweights.__version__)
    (payload / "xorweights.json").write_text(text)
    report = xorweights.decode(payload, base=base, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(tuned) and all(f.verified for f in report.files)
