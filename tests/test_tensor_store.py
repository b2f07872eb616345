"""One tensor-folder indexer (`tensor_store.index_tensors`) behind `TensorStore` and `HFCheckpoint`:
both containers read, non-contiguous checkpoint tensors gathered, a tensor in two files refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from xorweights.errors import FormatError
from xorweights.llama.convert import HFCheckpoint
from xorweights.tensors.store import TensorStore, index_tensors

X = np.arange(12, dtype=np.float16).reshape(3, 4)
Y = np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5)


def _strided() -> torch.Tensor:
    """A tensor torch saves with its strides (the transpose of a (5, 4) storage), not contiguous."""
    t = torch.from_numpy(Y.T.copy()).t()
    assert not t.is_contiguous() and np.array_equal(t.numpy(), Y)
    return t


def _folder(tmp_path: Path, *, bin_names: tuple[str, ...] = ("y",)) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"x": X}, str(folder / "model.safetensors"))
    sd = {"x": torch.from_numpy(X), "y": _strided()}
    torch.save({n: sd[n] for n in bin_names}, folder / "pytorch_model.bin")
    return folder


def test_index_reads_both_containers_and_gathers_a_strided_tensor(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    index = index_tensors([folder / "model.safetensors", folder / "pytorch_model.bin"])
    assert set(index) == {"x", "y"}
    x, y = index["x"], index["y"]
    assert (x.dtype, x.shape, x.source) == ("F16", (3, 4), str(folder / "model.safetensors"))
    assert x.begin is not None and x.compute is None
    assert (y.dtype, y.shape, y.begin) == ("F32", (4, 5), None) and y.compute is not None
    assert np.array_equal(y.compute(), Y)


def test_index_names_both_files_of_a_tensor_listed_twice(tmp_path: Path) -> None:
    folder = _folder(tmp_path, bin_names=("x", "y"))
    with pytest.raises(
        FormatError, match=r"pytorch_model.bin: tensor 'x' is also in .*model.safetensors"
    ) as info:
        index_tensors([folder / "model.safetensors", folder / "pytorch_model.bin"])
    assert info.value.path == str(folder / "pytorch_model.bin")


def test_store_prefers_safetensors_and_reads_checkpoints_without_them(tmp_path: Path) -> None:
    folder = _folder(tmp_path, bin_names=("x", "y"))  # the same x in both: only safetensors are read
    store = TensorStore.open(folder)
    assert store.kind == "safetensors" and set(store.tensors) == {"x"}
    (folder / "model.safetensors").unlink()
    store = TensorStore.open(folder)
    assert store.kind == "pytorch" and set(store.tensors) == {"x", "y"}
    assert store.digest("y") == hashlib.sha256(Y.tobytes()).hexdigest()
    assert store.digest("x") == hashlib.sha256(X.tobytes()).hexdigest()


def test_hf_checkpoint_reads_both_containers_together(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    config = {"hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 8}
    (folder / "config.json").write_text(json.dumps(config))
    ck = HFCheckpoint(folder)
    assert set(ck.tensors) == {"x", "y"}
    assert np.array_equal(ck.array("x"), X) and np.array_equal(ck.array("y"), Y)
    assert np.array_equal(ck.as_float16("y"), Y.astype(np.float16))
    with pytest.raises(FormatError, match="missing tensor 'z'"):
        ck.array("z")
    torch.save({"x": torch.from_numpy(X)}, folder / "other.bin")
    with pytest.raises(FormatError, match=r"other.bin: tensor 'x' is also in .*model.safetensors"):
        HFCheckpoint(folder)
