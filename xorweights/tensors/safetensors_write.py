"""Write safetensors files the way the reference library does, and shard them as `save_pretrained`.

Header: `{"__metadata__": ..., name: {"dtype", "shape", "data_offsets"}, ...}` as compact JSON,
tensors ordered by descending dtype (the library's enum order) then by name, data laid out in the
same order, the header padded with spaces to a multiple of 8 bytes. Sharding is huggingface_hub's
`split_state_dict_into_shards_factory`: greedy in state-dict order; a tensor larger than the limit
gets a shard of its own, placed before the shard being filled.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence

from .dtypes import SAFETENSORS_ORDER
from .spec import TensorSpec

_RANK = {d: i for i, d in enumerate(SAFETENSORS_ORDER)}
#: The metadata transformers' `save_pretrained` writes into every safetensors file.
PT_METADATA = {"format": "pt"}


def file_order(specs: Iterable[TensorSpec]) -> list[TensorSpec]:
    """The order tensors take in a file: descending dtype, then name."""
    return sorted(specs, key=lambda s: (-_RANK[s.dtype], s.name))


def header_bytes(specs: Iterable[TensorSpec], metadata: Mapping[str, str] | None = PT_METADATA) -> bytes:
    """The 8-byte length and the padded JSON header of a file holding `specs` (in `file_order`)."""
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = dict(metadata)
    offset = 0
    for s in file_order(specs):
        doc[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def split_shards(specs: Sequence[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Tensors per shard, in state-dict order, split by huggingface_hub (as `save_pretrained` splits)."""
    from huggingface_hub import split_state_dict_into_shards_factory

    by_name = {s.name: s for s in specs}
    split = split_state_dict_into_shards_factory(
        by_name, get_storage_size=lambda s: s.nbytes, filename_pattern="{suffix}", max_shard_size=max_bytes
    )
    return [[by_name[n] for n in names] for names in split.filename_to_tensors.values()] or [[]]


def shard_file_names(n: int, *, stem: str = "model", suffix: str = ".safetensors") -> list[str]:
    """`model.safetensors` alone, else `model-00001-of-0000N.safetensors` ..."""
    if n == 1:
        return [f"{stem}{suffix}"]
    return [f"{stem}-{i:05d}-of-{n:05d}{suffix}" for i in range(1, n + 1)]


def index_json(
    shards: Sequence[Sequence[TensorSpec]], names: Sequence[str], *, total_parameters: bool = True
) -> bytes:
    """The `*.index.json` of a sharded save: sizes and the file of every tensor (current
    transformers also record the parameter count; the 2023 `.bin` layout did not)."""
    weight_map = {s.name: f for f, shard in zip(names, shards, strict=True) for s in shard}
    metadata: dict[str, int] = {"total_size": sum(s.nbytes for shard in shards for s in shard)}
    if total_parameters:
        metadata["total_parameters"] = sum(s.numel for shard in shards for s in shard)
    doc = {"metadata": metadata, "weight_map": weight_map}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")
