"""The native format's exact bytes, pinned: a tiny fixed model pair, its payload and xorweights.json.

The payload file is also checked against an independent writer: safetensors' own `save_file` of the
tensors XOR-ed with numpy; the manifest's digests against hashlib over the tensors' bytes. A change
to any byte of the format shows here first (update the golden files only with a format version).
"""

from __future__ import annotations

import hashlib
import json
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
