"""Per-tensor digests: a model's identity whatever its container, sharding or tensor order.

`xorweights-tensors.json` (format `xorweights-tensors/1`) maps each tensor name to its dtype
(safetensors name), shape and the sha256 of its C-order little-endian bytes. A recovery writes one
beside its output; `verify --checksums` checks any copy of the model against it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _json
from ._sizing import CHUNK_SIZE, default_jobs
from .checksum_manifests import check_hex
from .checksum_types import Mismatch, VerifyReport
from .errors import FormatError, MissingFileError
from .hashing import hash_many
from .llama.tensors import open_tensors
from .outfolder.paths import read_bounded
from .tensors.dtypes import DTYPE_SIZES
from .tensors.safetensors_header import MAX_DIMS
from .tensors.store import StoredTensor, cast, castable, tensor_array

logger = logging.getLogger(__name__)

TENSORS_FORMAT = "xorweights-tensors/1"
TENSORS_NAME = "xorweights-tensors.json"
#: The `stage` of a `VerifyReport` made against per-tensor digests (not a release stage).
TENSORS_STAGE = "tensors"
#: Tensor manifests larger than this are refused unread.
MAX_TENSOR_MANIFEST_BYTES = 64 << 20


@dataclass(frozen=True)
class TensorDigest:
    """One tensor's identity."""

    dtype: str
    shape: tuple[int, ...]
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "sha256": self.sha256}


@dataclass(frozen=True)
class TensorManifest:
    """The digests of every tensor of a model, and what they came from."""

    tensors: Mapping[str, TensorDigest]
    info: Mapping[str, Any] = field(default_factory=dict)
    """Free-form provenance (recipe, delta, base, sums)."""
    path: str | None = None

    def dumps(self) -> bytes:
        doc = {
            "format": TENSORS_FORMAT,
            **dict(self.info),
            "tensors": {n: d.to_json() for n, d in self.tensors.items()},
        }
        return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def is_tensor_manifest(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("format") == TENSORS_FORMAT


def parse_tensor_manifest(doc: Any, source: str) -> TensorManifest:
    """A manifest from its parsed JSON; every entry checked.

    Raises:
        `FormatError`: not a tensor manifest, or an entry is malformed (named).
    """
    if not is_tensor_manifest(doc):
        raise FormatError(f"{source}: not a {TENSORS_FORMAT} manifest", path=source)
    raw = doc.get("tensors")
    if not isinstance(raw, dict) or not raw:
        raise FormatError(f"{source}: `tensors` must be a non-empty object", path=source)
    tensors: dict[str, TensorDigest] = {}
    for name, entry in raw.items():
        where = f"{source}: tensor {name!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "sha256"}:
            raise FormatError(f"{where}: expected dtype, shape and sha256", path=source)
        dtype, shape, sha = entry["dtype"], entry["shape"], entry["sha256"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise FormatError(f"{where}: unknown dtype {str(dtype)[:20]!r}", path=source)
        if (
            not isinstance(shape, list)
            or not all(type(d) is int and d >= 0 for d in shape)
            or len(shape) > MAX_DIMS
        ):
            raise FormatError(f"{where}: shape must be a list of non-negative integers", path=source)
        tensors[name] = TensorDigest(dtype, tuple(shape), check_hex(sha, "sha256", where, source))
    info = {k: v for k, v in doc.items() if k not in ("format", "tensors")}
    return TensorManifest(tensors, info, source)


def load_tensor_manifest(path: os.PathLike[str] | str) -> TensorManifest:
    """Read a manifest file (refused above 64 MiB, before reading)."""
    p = Path(path)
    try:
        raw = read_bounded(p, MAX_TENSOR_MANIFEST_BYTES, "a tensor manifest")
    except MissingFileError:
        raise MissingFileError(f"tensor manifest not found: {p}", path=p) from None
    return parse_tensor_manifest(_json.loads(raw, str(p)), str(p))


def tensor_sha256(
    t: StoredTensor, dtype: str | None = None, on_chunk: Callable[[np.ndarray], None] | None = None
) -> tuple[str, bool]:
    """sha256 of tensor `t` as `dtype` (default: as stored), and whether the values survive the
    cast exactly (a float copy in another dtype is compared by its values, never rounded into a
    match). `on_chunk` sees each chunk as stored, in order."""
    want = dtype or t.dtype
    if not castable(t.dtype, want):
        return "", False
    flat = tensor_array(t).reshape(-1)
    step = max(1, CHUNK_SIZE // DTYPE_SIZES[t.dtype])
    h = hashlib.sha256()
    exact = True
    for i in range(0, flat.size, step):
        part = np.asarray(flat[i : i + step])
        out = np.ascontiguousarray(cast(part, t.dtype, want))
        if want != t.dtype and exact:
            back = cast(out, want, t.dtype)
            exact = bool(np.array_equal(back.view(np.uint8), np.ascontiguousarray(part).view(np.uint8)))
        h.update(memoryview(out).cast("B"))
        if on_chunk is not None:
            on_chunk(part)
    return h.hexdigest(), exact


def tensor_manifest_at(path: os.PathLike[str] | str) -> TensorManifest | None:
    """The tensor manifest at `path` if it is one (a small JSON file saying so), else None."""
    p = Path(path)
    try:
        if not p.is_file() or p.stat().st_size > MAX_TENSOR_MANIFEST_BYTES:
            return None
        with open(p, "rb") as f:
            if TENSORS_FORMAT.encode() not in f.read(4096):
                return None
    except OSError:
        return None
    return load_tensor_manifest(p)


def verify_tensors(
    folder: os.PathLike[str] | str,
    manifest: TensorManifest,
    *,
    jobs: int | None = None,
    progress: bool = False,
) -> VerifyReport:
    """Check every tensor of the model in `folder` (any container and sharding) against `manifest`,
    `jobs` tensors at once.

    Tensors of the folder the manifest does not list (buffers such as `rotary_emb.inv_freq`) are
    reported as extra. A tensor stored in another float dtype is compared by its values, cast
    exactly (one that the manifest's dtype cannot hold is a mismatch, never rounded into a match).
    """
    store = open_tensors(folder)
    bad: list[Mismatch] = []
    missing = [n for n in manifest.tensors if store.get(n) is None]
    todo = []
    for name, want in manifest.tensors.items():
        t = store.get(name)
        if t is not None and t.shape != want.shape:
            bad.append(Mismatch(name, "shape", "x".join(map(str, want.shape)), "x".join(map(str, t.shape))))
        elif t is not None:
            todo.append(name)
    work = [
        (
            n,
            lambda update, n=n: tensor_sha256(
                store.tensors[n], manifest.tensors[n].dtype, lambda p: update(p.nbytes)
            ),
            store.tensors[n].nbytes,
        )
        for n in todo
    ]
    digests = dict(hash_many(work, jobs=jobs or default_jobs(), progress=progress, desc="verify tensors"))
    matched = []
    for name in todo:
        want, (got, exact), stored = manifest.tensors[name], digests[name], store.tensors[name].dtype
        if not exact:
            bad.append(Mismatch(name, "dtype", want.dtype, f"{stored} (values {want.dtype} cannot hold)"))
        elif got != want.sha256:
            bad.append(Mismatch(name, "sha256", want.sha256, got))
        else:
            matched.append(name)
    extra = sorted(set(store.tensors) - set(manifest.tensors))
    checked = [n for n in manifest.tensors if n not in missing]
    order = {n: i for i, n in enumerate(manifest.tensors)}
    bad.sort(key=lambda m: order[m.name])
    return VerifyReport(
        folder=str(folder),
        stage=TENSORS_STAGE,
        release=manifest.path or TENSORS_NAME,
        checked=tuple(checked),
        matched=tuple(matched),
        mismatches=tuple(bad),
        missing=tuple(missing),
        extra=tuple(extra),
        digests={n: {"sha256": manifest.tensors[n].sha256} for n in matched},
    )
