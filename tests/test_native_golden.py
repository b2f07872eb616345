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
        assert transform in (0, 1, 3) and reserved == 0 and (key == 0 or transform == 3)
        planes = 1 if transform == 0 else width
        codings = list(payload[pos + 8 : pos + 8 + width]) if transform == 3 else [1] * planes
        pos += 8 + len(codings) if transform == 3 else 8
        lengths = struct.unpack_from(f"<{planes}I", payload, pos)
        pos += 4 * planes
        data = []
        for length, coding in zip(lengths, codings, strict=True):
            blob = payload[pos : pos + length]
            data.append(blob if coding == 0 else zstandard.ZstdDecompressor().decompress(blob))
            pos += length
            if coding == 2:  # stored in the stable order of the base elements' exponents
                order = sorted(range(n), key=lambda i: (_exponent(base_image, at, i, width, key), i))
                plane = bytearray(n)
                for k, i in enumerate(order):
                    plane[i] = data[-1][k]
                data[-1] = bytes(plane)
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


def _exponent(image: bytes, at: int, i: int, width: int, key: int) -> int:
    """The grouping key of base element `i` of the frame at `at`: float16's bits 10-14 (key 1), the
    byte after the sign bit (key 2)."""
    v = int.from_bytes(image[at + i * width : at + (i + 1) * width], "little")
    return (v >> 10) & 0x1F if key == 1 else (v >> (8 * width - 9)) & 0xFF


def test_the_golden_v2_payload_decodes_independently(tmp_path: Path) -> None:
    base, tuned = _pair(tmp_path)
    image = bytes(8 + int.from_bytes((tuned / "model.safetensors").read_bytes()[:8], "little"))
    b = load_file(str(base / "model.safetensors"))
    image += b"".join(b[n].tobytes() for n in ("a.weight", "b.bias"))  # the fine-tune's tensor order
    payload = (GOLDEN_V2 / "model.safetensors").read_bytes()
    assert independent_decode(payload, image) == (tuned / "model.safetensors").read_bytes()
    want = json.loads((GOLDEN_V2 / "xorweights.json").read_text())
    entry = next(f for f in want["files"] if f["name"] == "model.safetensors")
    assert entry["compression"] == "delta-frames" and want["format_version"] == 2
    assert entry["payload_sha256"] == hashlib.sha256(payload).hexdigest()


def test_a_tiny_compressed_payload_matches_the_golden_v2_one_but_for_its_frames(tmp_path: Path) -> None:
    """Version 3 changed the frames and the base tensors' digest (blake3 for sha256): the manifest
    is version 2's but for those, the version and the compressed file's size and digest."""
    import blake3

    base, tuned = _pair(tmp_path)
    out = tmp_path / "payload"
    xorweights.encode(tuned, base=base, out=out)
    golden = (GOLDEN_V2 / "xorweights.json").read_text().replace("{version}", xorweights.__version__)
    made, want = json.loads((out / "xorweights.json").read_text()), json.loads(golden)
    assert made.pop("format_version") == 3 and want.pop("format_version") == 2
    b = load_file(str(base / "model.safetensors"))
    for name, entry in made["base_tensors"].items():
        assert entry.pop("blake3") == blake3.blake3(b[name].tobytes()).hexdigest()
        assert want["base_tensors"][name].pop("sha256") == hashlib.sha256(b[name].tobytes()).hexdigest()
    for doc in (made, want):
        doc["files"][1].pop("payload_size"), doc["files"][1].pop("payload_sha256")
    assert made == want


# --- format version 3: a coding per plane --------------------------------------------------------

GOLDEN_V3 = Path(__file__).parent / "golden" / "native-tiny-v3"


def _pair_v3(root: Path) -> tuple[Path, Path]:
    """A pair whose payload has every plane coding: fine-tune-like steps (a fixed absolute size, so
    the bit patterns move more where the base's exponent is small) over bases spread across 8
    binades; arithmetic only (no random generator whose stream could change)."""
    i = np.arange(8192, dtype=np.uint64)
    h = i * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(29)
    u = (h >> np.uint64(11)).astype(np.float64) / 2.0**53 - 0.5
    scale = 2.0 ** -(i % np.uint64(8)).astype(np.float64)
    step = ((h >> np.uint64(3)) % np.uint64(5)).astype(np.float64) - 2.0
    base = {
        "w.f16": (u * scale).astype(np.float16),
        "w.f32": (u * scale).astype(np.float32)[:4096],
        "w.i8": (h % np.uint64(256)).astype(np.uint8).view(np.int8)[:1000],
    }
    tuned = {
        "w.f16": (u * scale + step * 2.0**-13).astype(np.float16),
        "w.f32": (u * scale * (1 + 1e-4 * np.roll(u, 1)) + step * 2.0**-17).astype(np.float32)[:4096],
        "w.i8": (base["w.i8"].astype(np.int64) + (step[:1000]).astype(np.int64)).astype(np.int8),
    }
    for name, tensors in (("base", base), ("ft", tuned)):
        (root / name).mkdir(parents=True)
        save_file(tensors, str(root / name / "model.safetensors"))
    return root / "base", root / "ft"


def _image(base: Path, tuned: Path) -> bytes:
    """The base image of the fine-tuned file: zeros for its header and for what has no base."""
    data = (tuned / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    b = load_file(str(base / "model.safetensors"))
    image = bytes(8 + n)
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        size = t["data_offsets"][1] - t["data_offsets"][0]
        image += b[name].tobytes() if name in b else bytes(size)
    return image


def _codings(payload: bytes) -> set[int]:
    """The plane codings of a compressed file's transform 3 frames (an independent walk)."""
    out, pos = set(), 0
    while pos < len(payload):
        transform, width = payload[pos], payload[pos + 1]
        if transform == 3:
            codings = payload[pos + 8 : pos + 8 + width]
            out |= set(codings)
            lengths = struct.unpack_from(f"<{width}I", payload, pos + 8 + width)
            pos += 8 + 5 * width + sum(lengths)
        else:
            assert transform == 0
            pos += 12 + struct.unpack_from("<I", payload, pos + 8)[0]
    return out


def test_tiny_compressed_payloads_match_the_golden_v3_ones(tmp_path: Path) -> None:
    """Both encode modes: the exact bytes (with the zstd they were made with), every plane coding
    used, the base tensors' blake3, and an independent decode of the golden and the made payload to
    the fine-tuned file."""
    import blake3
    import zstandard

    base, tuned = _pair_v3(tmp_path)
    image = _image(base, tuned)
    same_zstd = (
        ".".join(map(str, zstandard.ZSTD_VERSION)) == (GOLDEN_V3 / "zstd-version.txt").read_text().strip()
    )
    for mode, codings in (("zstd", {0, 1}), ("zstd-grouped", {0, 1, 2})):
        out = tmp_path / mode
        xorweights.encode(tuned, base=base, out=out, compress=mode)
        golden = (
            (GOLDEN_V3 / mode / "xorweights.json").read_text().replace("{version}", xorweights.__version__)
        )
        made, want = json.loads((out / "xorweights.json").read_text()), json.loads(golden)
        golden_payload = (GOLDEN_V3 / mode / "model.safetensors").read_bytes()
        if same_zstd:  # zstd's own bytes are pinned only for the zstd they were made with
            assert (out / "xorweights.json").read_text() == golden
            assert (out / "model.safetensors").read_bytes() == golden_payload
        else:
            for doc in (made, want):
                doc["files"][0].pop("payload_size"), doc["files"][0].pop("payload_sha256")
            assert made == want
        assert want["format_version"] == 3 and want["files"][0]["compression"] == "delta-frames"
        b = load_file(str(base / "model.safetensors"))
        assert {n: t["blake3"] for n, t in want["base_tensors"].items()} == {
            n: blake3.blake3(a.tobytes()).hexdigest() for n, a in b.items()
        }
        assert want["files"][0]["payload_sha256"] == hashlib.sha256(golden_payload).hexdigest()
        for payload in (golden_payload, (out / "model.safetensors").read_bytes()):
            assert _codings(payload) == codings
            assert independent_decode(payload, image) == (tuned / "model.safetensors").read_bytes()


def test_the_golden_v3_payloads_decode(tmp_path: Path) -> None:
    base, tuned = _pair_v3(tmp_path)
    for mode in ("zstd", "zstd-grouped"):
        payload = tmp_path / f"golden-{mode}"
        payload.mkdir()
        (payload / "model.safetensors").write_bytes((GOLDEN_V3 / mode / "model.safetensors").read_bytes())
        text = (GOLDEN_V3 / mode / "xorweights.json").read_text().replace("{version}", xorweights.__version__)
        (payload / "xorweights.json").write_text(text)
        report = xorweights.decode(payload, base=base, out=tmp_path / f"out-{mode}")
        assert tree(tmp_path / f"out-{mode}") == tree(tuned) and all(f.verified for f in report.files)


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
