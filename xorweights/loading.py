"""Load a native payload's tensors straight into memory, for training code: no files written.

Each tensor is rebuilt from its payload bytes and its base tensor, and proven twice before it is
handed over: the base tensor's bytes against the manifest's sha256 (so a wrong base is named,
tensor and file), and the rebuilt tensor against its own sha256. A compressed payload file is read
frame by frame in file order; the base tensors it uses are proven before its first tensor.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import hub
from ._sizing import default_jobs
from ._torch import require_torch
from .errors import BaseMismatchError, ChecksumMismatchError, FormatError, InputError
from .formats.frame_stream import FrameReader
from .formats.native import (
    check_base,
    check_payload_files,
    digest_mismatch,
    layout_mismatch,
    masked_spans,
    open_store,
    payload_header,
    segments,
    tensor_offsets,
)
from .formats.native_manifest import MANIFEST_NAME, FileEntry, NativeManifest, load_manifest
from .formats.native_sources import BaseImage, damaged_payload
from .hashing import new_hasher
from .hub.base_repo import BaseWants, fetch_base
from .model_files import TORCH_SUFFIXES
from .outfolder.paths import check_regular_file
from .pipeline import FileSource
from .pipeline.engine import read_full
from .tensors.dtypes import NUMPY_DTYPES, TORCH_DTYPES
from .tensors.safetensors_header import SafetensorsHeader
from .tensors.store import TensorStore

logger = logging.getLogger(__name__)

Framework = Literal["numpy", "pt"]


def _as_framework(buf: bytearray, dtype: str, shape: tuple[int, ...], framework: Framework, name: str) -> Any:
    if framework == "pt":
        torch = require_torch('`framework="pt"`')
        tdtype = getattr(torch, TORCH_DTYPES.get(dtype, ""), None)
        if tdtype is None:
            raise FormatError(f"tensor {name}: dtype {dtype} has no torch equivalent")
        if not buf:
            return torch.empty(shape, dtype=tdtype)
        return torch.frombuffer(buf, dtype=tdtype).reshape(shape)
    if dtype == "BF16" or dtype.startswith("F8"):
        raise FormatError(f"tensor {name}: numpy has no {dtype} dtype; load it with framework='pt'")
    return np.frombuffer(buf, dtype=NUMPY_DTYPES[dtype]).reshape(shape)


def iter_tensors(
    payload: os.PathLike[str] | str,
    base: os.PathLike[str] | str,
    *,
    framework: Framework = "numpy",
    names: Iterable[str] | None = None,
    revision: str | None = None,
    subfolder: str | None = None,
    token: str | bool | None = None,
    cache_dir: os.PathLike[str] | str | None = None,
    local_dir: os.PathLike[str] | str | None = None,
    endpoint: str | None = None,
    offline: bool | None = None,
    force_download: bool = False,
) -> Iterator[tuple[str, Any]]:
    """`(name, tensor)` for every tensor of a native payload, one at a time.

    Memory holds one tensor (plus a chunk of its base), so a model larger than RAM can be streamed
    into a training process shard by shard.

    Args:
        payload: the payload folder (with `xorweights.json`), or a Hub repo
            `owner/name[@revision][:subfolder]`: its payload files are downloaded (Hub cache or
            `local_dir`) and checked against the sha256 the Hub reports before they are read.
        base: the base model folder, in any container (safetensors, `.bin`, Meta's LLaMA), or a
            Hub repo `owner/name[@revision]` (a local folder of that name wins): only the weight
            files holding the base tensors read are taken from the Hub cache or downloaded.
        framework: `numpy` (arrays; bfloat16 is refused) or `pt` (torch tensors: needs torch,
            `pip install "xorweights[torch]"`). Checked when called, before the payload is located.
        names (*optional*): only these tensors.
        revision, subfolder, token, cache_dir, local_dir, endpoint, offline, force_download
            (*optional*): as for `decode`.

    Raises:
        `BaseMismatchError`: a base tensor is not the one the payload was made against (named with
            its file, the expected and the actual sha256).
        `ChecksumMismatchError`: a rebuilt tensor differs from the manifest (a corrupt payload).
        `InputError`: the payload holds weights encoded per file (`.bin` fine-tunes); decode those
            with `xorweights decode` instead. Or, raised by the call itself: an unknown `framework`,
            or `framework="pt"` without torch installed.
    """
    _check_framework(framework)  # before anything is located or downloaded
    access = hub.HubAccess(local_dir, cache_dir, endpoint, token, offline, force_download)
    return _iter_tensors(payload, base, access, framework, names, revision, subfolder)


def _check_framework(framework: str) -> None:
    """Refuse an unknown framework, or `pt` where torch cannot be imported."""
    if framework not in ("numpy", "pt"):
        raise InputError(f"unknown framework {framework!r}; expected numpy or pt")
    if framework == "pt":
        require_torch('`framework="pt"`')


def _iter_tensors(
    payload: os.PathLike[str] | str,
    base: os.PathLike[str] | str,
    access: hub.HubAccess,
    framework: Framework,
    names: Iterable[str] | None,
    revision: str | None,
    subfolder: str | None,
) -> Iterator[tuple[str, Any]]:
    payload_dir, fetched = hub.locate_payload(
        payload, access, revision=revision, subfolder=subfolder, apart={"base": base}
    )
    check_regular_file(payload_dir / MANIFEST_NAME, payload_dir)
    manifest = load_manifest(payload_dir / MANIFEST_NAME)
    check_payload_files(manifest, payload_dir)
    if fetched is not None:
        hub.check_lfs_files(fetched, [f.name for f in manifest.files], jobs=default_jobs(), progress=False)
    wanted = set(names) if names is not None else None
    per_file = [f for f in manifest.files if f.name.endswith(TORCH_SUFFIXES) and f.method == "file-xor"]
    if per_file and wanted is None:
        raise InputError(
            f"{payload_dir}: {per_file[0].name} is encoded per file (the fine-tune was not safetensors); "
            "decode it to disk with `xorweights decode`",
            path=payload_dir / per_file[0].name,
        )
    if wanted is not None:
        known = {t.name for f in manifest.files for t in f.tensors}
        unknown = sorted(wanted - known)
        if unknown:
            raise InputError(
                f"{payload_dir}: no tensor named {unknown[0]!r} in the payload", path=payload_dir
            )
    base_dir = _base_dir(base, manifest, wanted, access)
    store = open_store(manifest, base_dir)
    yield from _tensors(manifest, payload_dir, base_dir, store, framework, wanted)


def _base_dir(
    base: os.PathLike[str] | str, manifest: NativeManifest, wanted: set[str] | None, access: hub.HubAccess
) -> Path:
    """The base folder: `base`, or for a Hub repo id the cached files holding the tensors read."""
    if not hub.is_repo_spec(base):
        return Path(base)
    tensors = {
        t.base for f in manifest.files for t in f.tensors if t.base and (wanted is None or t.name in wanted)
    }
    return fetch_base(str(base), access, BaseWants(tensors=tensors), jobs=default_jobs()).root


def _tensors(
    manifest: NativeManifest,
    payload_dir: Path,
    base_dir: Path,
    store: TensorStore | None,
    framework: Framework,
    wanted: set[str] | None,
) -> Iterator[tuple[str, Any]]:
    for f in manifest.files:
        if f.method != "tensor-xor":
            continue
        path = payload_dir / f.name
        rebuilt = (
            _framed(manifest, f, path, base_dir, store, wanted)
            if f.compression is not None
            else _xored(manifest, f, path, store, wanted)
        )
        for entry, buf in rebuilt:
            got = hashlib.sha256(buf).hexdigest()
            if got != entry.sha256:
                raise ChecksumMismatchError(
                    f"tensor {entry.name} of {f.name}: sha256 {got}, but {MANIFEST_NAME} expects "
                    f"{entry.sha256}; payload file {path} is corrupt",
                    path=path,
                    expected=entry.sha256,
                    actual=got,
                    algorithm="sha256",
                    stage="decoded",
                )
            yield entry.name, _as_framework(buf, entry.dtype, entry.shape, framework, entry.name)


def _xored(
    manifest: NativeManifest, f: FileEntry, path: Path, store: TensorStore | None, wanted: set[str] | None
) -> Iterator[tuple[Any, bytearray]]:
    """The wanted tensors of an uncompressed payload file, each read alone and XOR-ed with its base."""
    header = payload_header(FileSource(path), f)
    with open(path, "rb") as fh:
        for entry in f.tensors:
            if wanted is not None and entry.name not in wanted:
                continue
            info = header.tensors[entry.name]
            buf = bytearray(info.nbytes)
            fh.seek(info.begin)
            if fh.readinto(buf) != info.nbytes:
                raise FormatError(f"payload file {path}: ends inside tensor {entry.name}", path=path)
            if entry.base is not None:
                _xor_base(buf, manifest, store, entry.base)
            yield entry, buf


def _framed(
    manifest: NativeManifest,
    f: FileEntry,
    path: Path,
    base_dir: Path,
    store: TensorStore | None,
    wanted: set[str] | None,
) -> Iterator[tuple[Any, bytearray]]:
    """The wanted tensors of a compressed payload file, decoded in file order (the others are
    decoded and dropped); the base tensors it uses are proven first."""
    header = payload_header(FileSource(path), f)
    # Tensors not wanted are decoded against zeros and dropped: their base need not be there.
    bases = {t.name: t.base if wanted is None or t.name in wanted else None for t in f.tensors}
    needed = {b for b in bases.values() if b is not None}
    if wanted is not None and not wanted & set(header.tensors):
        return
    check_base(manifest, store, base_dir, jobs=default_jobs(), names=needed, files=set())
    image = BaseImage(store, segments(header, bases, {n: b.dtype for n, b in manifest.base_tensors.items()}))
    by_name = {t.name: t for t in f.tensors}
    try:
        yield from _frames(f, path, header, image, by_name, wanted)
    except FormatError as e:
        damaged = damaged_payload(path, f.payload_sha256, e)
        if damaged is not None:
            raise damaged from e
        raise


def _frames(
    f: FileEntry,
    path: Path,
    header: SafetensorsHeader,
    image: BaseImage,
    by_name: dict[str, Any],
    wanted: set[str] | None,
) -> Iterator[tuple[Any, bytearray]]:
    """`_framed`'s pass: the frames read in file order, the wanted tensors yielded."""
    payload = open(path, "rb")  # noqa: SIM115 (the reader closes it)
    with FrameReader(
        payload,
        image,
        str(path),
        workers=default_jobs(),
        tensors=tensor_offsets(header),
        limit=f.size,
        masked=masked_spans(header, f),
    ) as frames:
        _skip(frames, header.data_start, path)
        for info in sorted(header.tensors.values(), key=lambda t: t.begin):
            if wanted is not None and info.name not in wanted:
                _skip(frames, info.nbytes, path)
                continue
            buf = bytearray(info.nbytes)
            if read_full(frames, memoryview(buf)) != info.nbytes:  # type: ignore[arg-type]
                raise FormatError(f"payload file {path}: ends inside tensor {info.name}", path=path)
            yield by_name[info.name], buf
        if frames.readinto(bytearray(1)):  # the limit refuses a frame past the output's end
            raise FormatError(f"payload file {path}: frames go on past the output", path=path)


def _skip(stream: Any, n: int, path: Path) -> None:
    """Read and drop `n` bytes."""
    scratch = bytearray(min(n, 1 << 22))
    while n:
        got = stream.readinto(memoryview(scratch)[: min(n, len(scratch))])
        if not got:
            raise FormatError(f"payload file {path}: truncated", path=path)
        n -= got


def _xor_base(buf: bytearray, manifest: NativeManifest, store: TensorStore | None, name: str) -> None:
    """XOR `buf` in place with base tensor `name` (zero-padded or truncated), proving its sha256."""
    want = manifest.base_tensors[name]
    have = store.get(name) if store is not None else None
    if have is None:
        where = store.folder if store is not None else "the base"
        raise BaseMismatchError(
            f"base tensor {name} missing in {where}", path=str(where), expected=want.digest, actual=None
        )
    bad = layout_mismatch(have, want)
    if bad is not None:
        raise bad
    h = new_hasher(want.algorithm)
    out = np.frombuffer(buf, dtype=np.uint8)
    pos = 0
    chunk = bytearray(1 << 22)
    with store.reader(name, want.dtype) as r:  # type: ignore[union-attr]
        while n := r.readinto(chunk):
            view = np.frombuffer(chunk, dtype=np.uint8, count=n)
            h.update(memoryview(chunk)[:n])
            k = min(n, len(out) - pos)
            if k > 0:
                np.bitwise_xor(out[pos : pos + k], view[:k], out=out[pos : pos + k])
            pos += n
    actual = h.hexdigest()
    if actual != want.digest:
        raise digest_mismatch(have, want, actual)


def load_state_dict(
    payload: os.PathLike[str] | str,
    base: os.PathLike[str] | str,
    *,
    framework: Framework = "pt",
    names: Iterable[str] | None = None,
    revision: str | None = None,
    subfolder: str | None = None,
    token: str | bool | None = None,
    cache_dir: os.PathLike[str] | str | None = None,
    local_dir: os.PathLike[str] | str | None = None,
    endpoint: str | None = None,
    offline: bool | None = None,
    force_download: bool = False,
) -> dict[str, Any]:
    """Every tensor of a native payload, rebuilt against `base` and verified, as a dict.

    The tensors' memory is the model's size; use `iter_tensors` to hold one at a time.
    See `iter_tensors` for the arguments (a Hub repo id too) and errors.
    """
    tensors = iter_tensors(
        payload,
        base,
        framework=framework,
        names=names,
        revision=revision,
        subfolder=subfolder,
        token=token,
        cache_dir=cache_dir,
        local_dir=local_dir,
        endpoint=endpoint,
        offline=offline,
        force_download=force_download,
    )
    return dict(tensors)
