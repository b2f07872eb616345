"""The demo: native encode, decode against a base re-saved in another container, verify, load one
tensor; then the legacy path. Each step checked from the files it leaves, not only its report."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import xorweights
from tests.conftest import tree
from xorweights.demo import LOADED_TENSOR, DemoReport, run_demo
from xorweights.tensors.store import TensorStore


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoReport]:
    work = tmp_path_factory.mktemp("demo")
    return work, run_demo(work, size_mb=32)


def _tensor(folder: Path, name: str) -> np.ndarray:
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            if name in f.keys():
                return f.get_tensor(name)
    raise KeyError(name)


def test_native_payload_then_legacy_payload(demo: tuple[Path, DemoReport]) -> None:
    work, rep = demo
    assert rep.ok
    manifest = json.loads((work / "payload" / "xorweights.json").read_text())
    assert manifest["format"] == "xorweights"
    assert rep.encode.format == "xorweights" and rep.decode.format == "xorweights"
    assert rep.base_tensors == len(manifest["base_tensors"]) > 0
    assert not (work / "oasst-payload" / "xorweights.json").exists()
    assert rep.legacy_encode.format == "oasst" and rep.legacy_decode.format == "oasst"
    doc = json.loads(json.dumps(rep.to_dict()))  # what `demo --json` prints
    assert doc["ok"] is True and doc["native"]["encode"]["format"] == "xorweights"


def test_base_copy_is_another_container_and_layout_of_the_same_tensors(demo: tuple[Path, DemoReport]) -> None:
    work, rep = demo
    base, copy = TensorStore.open(work / "base"), TensorStore.open(work / "base-copy")
    assert base.kind == "safetensors" and copy.kind == "pytorch"
    assert not list((work / "base-copy").glob("*.safetensors"))
    assert len(copy.files) == len(base.files) + 1 == len(rep.base_copy.files)
    assert set(copy.tensors) == set(base.tensors) and list(copy.tensors) != list(base.tensors)
    for name in base.tensors:
        assert copy.digest(name) == base.digest(name), name
    for path in copy.files:
        with zipfile.ZipFile(path) as z:
            assert f"{path.stem}/data.pkl" in z.namelist()
    index = json.loads((work / "base-copy" / "pytorch_model.bin.index.json").read_text())
    assert set(index["weight_map"]) == set(base.tensors)
    assert rep.decode.base_dir == str(work / "base-copy")


def test_base_copy_loads_in_torch(demo: tuple[Path, DemoReport]) -> None:
    torch = pytest.importorskip("torch")
    work, _ = demo
    loaded: dict[str, object] = {}
    for path in sorted((work / "base-copy").glob("*.bin")):
        loaded.update(torch.load(path, map_location="cpu", weights_only=True))
    name = "model.layers.0.mlp.down_proj.weight"
    assert np.array_equal(loaded[name].numpy(), _tensor(work / "base", name))  # type: ignore[attr-defined]


def test_both_decodes_equal_the_fine_tuned_files(demo: tuple[Path, DemoReport]) -> None:
    work, rep = demo
    tuned = tree(work / "finetuned")
    assert tree(work / "decoded") == tuned
    assert tree(work / "oasst-decoded") == tuned
    assert rep.verify.ok and set(rep.verify.matched) == set(tuned)
    assert rep.legacy_verify.ok and set(rep.legacy_verify.matched) == set(tuned)


def test_loaded_tensor_is_the_fine_tuned_one(demo: tuple[Path, DemoReport]) -> None:
    work, rep = demo
    want = _tensor(work / "finetuned", LOADED_TENSOR)
    got = xorweights.load_state_dict(
        work / "payload", work / "base-copy", framework="numpy", names=[LOADED_TENSOR]
    )
    assert got[LOADED_TENSOR].dtype == want.dtype and got[LOADED_TENSOR].tobytes() == want.tobytes()
    assert want.shape[0] == _tensor(work / "base", LOADED_TENSOR).shape[0] + 16  # the grown vocabulary
    assert rep.load.equal and rep.load.shape == want.shape and rep.load.name == LOADED_TENSOR
