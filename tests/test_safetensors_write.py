"""The safetensors writer against the reference library: the same bytes for the same tensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from xorweights.tensors.safetensors_write import header_bytes, index_json, shard_file_names, split_shards
from xorweights.tensors.spec import TensorSpec

_TORCH = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "U8": torch.uint8,
}


def test_file_bytes_equal_the_reference_library(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    shapes = {
        "b.weight": ("F16", (3, 5)),
        "a.weight": ("F16", (7,)),
        "z": ("BF16", (2, 2)),
        "m": ("F32", (3,)),
        "ids": ("I64", (4,)),
        "mask": ("U8", (3,)),
        "empty": ("F16", (0, 4)),
        "scalar": ("F32", ()),
    }
    tensors = {n: (torch.randn(s, generator=g) * 100).to(_TORCH[dt]) for n, (dt, s) in shapes.items()}
    ref = tmp_path / "ref.safetensors"
    save_file(tensors, str(ref), metadata={"format": "pt"})
    specs = [TensorSpec(n, dt, s) for n, (dt, s) in shapes.items()]
    head = header_bytes(specs)
    header = json.loads(head[8:])
    order = sorted(specs, key=lambda s: header[s.name]["data_offsets"][0])
    body = b"".join(
        tensors[s.name].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() for s in order
    )
    assert head + body == ref.read_bytes()


def test_sharding_follows_huggingface_hub() -> None:
    """Shards as `save_pretrained` makes them from the torch tensors the specs describe: greedy in
    state-dict order, a tensor above the limit alone in a shard placed before the one being filled."""
    from huggingface_hub import split_torch_state_dict_into_shards

    sizes = [30, 50, 20, 120, 10, 40, 45, 5]
    state = {f"t{i}": torch.zeros(n, dtype=torch.uint8) for i, n in enumerate(sizes)}
    specs = [TensorSpec(k, "U8", tuple(v.shape)) for k, v in state.items()]
    ours = split_shards(specs, 100)
    assert [[s.name for s in g] for g in ours] == [["t3"], ["t0", "t1", "t2"], ["t4", "t5", "t6", "t7"]]
    names = shard_file_names(len(ours))
    ref = split_torch_state_dict_into_shards(
        state, max_shard_size=100, filename_pattern="model{suffix}.safetensors"
    )
    assert {n: [s.name for s in g] for n, g in zip(names, ours, strict=True)} == ref.filename_to_tensors
    index = json.loads(index_json(ours, names))
    assert index["weight_map"] == ref.tensor_to_filename
    assert index["metadata"] == {"total_size": sum(sizes), "total_parameters": sum(sizes)}
    assert np.sum(sizes) == ref.metadata["total_size"]


def test_shards_are_sized_in_bytes_not_elements() -> None:
    from huggingface_hub import split_torch_state_dict_into_shards

    shapes = {
        "a": ("F32", (10,)),
        "b": ("BF16", (10,)),
        "c": ("I64", (3,)),
        "d": ("U8", (0,)),
        "e": ("F16", (2, 3)),
    }
    state = {n: torch.zeros(shape, dtype=_TORCH[dt]) for n, (dt, shape) in shapes.items()}
    specs = [TensorSpec(n, dt, shape) for n, (dt, shape) in shapes.items()]
    for limit in (1, 24, 40, 60, 64, 1000):
        ours = split_shards(specs, limit)
        ref = split_torch_state_dict_into_shards(state, max_shard_size=limit, filename_pattern="m{suffix}")
        assert [[s.name for s in g] for g in ours] == list(ref.filename_to_tensors.values()), limit
    assert [[s.name for s in g] for g in split_shards(specs, 1000)] == [list(shapes)]
    assert split_shards([], 100) == [[]]
