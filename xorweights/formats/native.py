"""The native payload format (`xorweights`): tensor-level XOR, independent of the base's container.

A fine-tuned safetensors file becomes a payload safetensors file with the same header whose
tensor bytes are XOR-ed with the same-named base tensor's bytes, wherever and however the base
stores them. Decoding rebuilds the file byte for byte: after its header, the payload is XOR-ed
with a "base image", the base tensors laid out at the payload's offsets (see `sources.BaseImage`), in
the same pipelined pass as the legacy format. Every base tensor is hashed and checked against
the manifest before any output is written.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _cancel
from .._display import shown
from .._line_endings import line_ending_hint
from .._paths import check_regular_file
from .._progress import byte_bar
from ..checksums import ChecksumManifest, FileDigest, hash_file
from ..constants import CHUNK_SIZE, OPAQUE_WEIGHT_SUFFIXES, TEXT_SUFFIXES, TORCH_SUFFIXES
from ..errors import BaseMismatchError, FormatError, InputError, MissingFileError
from ..pipeline import Step
from ..sources import BaseImageSource, FileSource
from ..tensors.dtypes import FLOAT_DTYPES
from ..tensors.safetensors_header import SafetensorsHeader, read_header
from ..tensors.store import StoredTensor, TensorStore, castable, nbytes_of
from .native_manifest import (
    MANIFEST_NAME,
    BaseFile,
    BaseTensor,
    FileEntry,
    Method,
    NativeManifest,
    RawNote,
    TensorEntry,
)
from .raw_storage import (
    GROWN_ROWS,
    NameHints,
    RawItem,
    file_weights_reason,
    notes,
    refuse_unallowed,
    unmasked_bytes,
)

logger = logging.getLogger(__name__)

#: Weight files of a fine-tuned folder in a container other than safetensors.
OTHER_WEIGHTS = TORCH_SUFFIXES + OPAQUE_WEIGHT_SUFFIXES
BIN_NOTE = (
    "encoded per file (legacy semantics): decoding needs the same-named base file byte for byte; "
    "publish safetensors for a payload that works against any copy of the base"
)


def segments(
    header: SafetensorsHeader, bases: Mapping[str, str | None], dtypes: Mapping[str, str]
) -> list[tuple[int, str | None, str | None]]:
    """The base image of a file: `(length, base tensor, dtype)` from its first byte to its last."""
    out: list[tuple[int, str | None, str | None]] = [(header.data_start, None, None)]
    for t in sorted(header.tensors.values(), key=lambda t: t.begin):
        base = bases.get(t.name)
        out.append((t.nbytes, base, dtypes[base] if base is not None else None))
    return out


# --- checks ------------------------------------------------------------------------------------


def layout_mismatch(have: StoredTensor, want: BaseTensor) -> BaseMismatchError | None:
    """The error for a base tensor whose shape differs, or whose dtype cannot be read as wanted."""
    if have.shape == want.shape and castable(have.dtype, want.dtype):
        return None
    return BaseMismatchError(
        f"base tensor {want.name} in {have.source}: {have.dtype}{list(have.shape)}, but the payload "
        f"was made against {want.dtype}{list(want.shape)}",
        path=have.source,
        expected=f"{want.dtype}{list(want.shape)}",
        actual=f"{have.dtype}{list(have.shape)}",
        algorithm="shape",
        stage="base",
    )


def digest_mismatch(have: StoredTensor, want: BaseTensor, actual: str) -> BaseMismatchError:
    """The error for a base tensor whose bytes (read as the manifest's dtype) hash otherwise."""
    cast_note = f" read as {want.dtype}" if have.dtype != want.dtype else ""
    return BaseMismatchError(
        f"base tensor {want.name} in {have.source}{cast_note}: sha256 {actual}, but the payload was made "
        f"against {want.sha256}; these are not the base weights the release was made from",
        path=have.source,
        expected=want.sha256,
        actual=actual,
        algorithm="sha256",
        stage="base",
    )


def _hash_all(
    work: Sequence[tuple[str, Callable[[Callable[[int], None]], str], int]],
    jobs: int,
    progress: bool,
    desc: str,
) -> dict[str, str]:
    """Run `(key, hasher, size)` jobs in parallel threads (hashlib releases the GIL)."""
    if not work:
        return {}
    total = sum(w[2] for w in work)
    with (
        byte_bar(total, desc, enabled=progress) as bar,
        ThreadPoolExecutor(max(1, jobs)) as pool,
        _cancel.guard(pool),
    ):
        futures = {key: pool.submit(fn, bar.update) for key, fn, _ in sorted(work, key=lambda w: -w[2])}
        return {key: fut.result() for key, fut in futures.items()}


def _file_sha256(path: Path) -> Callable[[Callable[[int], None]], str]:
    def run(update: Callable[[int], None]) -> str:
        digest = hash_file(path, {"sha256": ""})["sha256"]
        update(path.stat().st_size)
        return digest

    return run


def check_base(
    manifest: NativeManifest,
    store: TensorStore | None,
    base_dir: Path,
    *,
    jobs: int,
    progress: bool = False,
    names: set[str] | None = None,
    files: set[str] | None = None,
) -> None:
    """Prove every base tensor and base file the manifest needs, before any output is written.

    Raises:
        `MissingFileError`: a base tensor or base file is absent (all are named).
        `BaseMismatchError`: one differs in shape, dtype or sha256 (tensor, file, expected, actual).
    """
    wanted = {t.base for f in manifest.files for t in f.tensors if t.base is not None}
    if names is not None:
        wanted &= names
    missing = sorted(n for n in wanted if store is None or store.get(n) is None)
    if missing:
        raise MissingFileError(
            f"base tensor{'s' if len(missing) > 1 else ''} missing in {base_dir}: {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
            path=base_dir,
        )
    work: list[tuple[str, Callable[[Callable[[int], None]], str], int]] = []
    for name in sorted(wanted):
        assert store is not None
        want, have = manifest.base_tensors[name], store.tensors[name]
        bad = layout_mismatch(have, want)
        if bad is not None:
            raise bad
        work.append(
            (
                f"t:{name}",
                lambda update, n=name, d=want.dtype: store.sha256(n, d, update),
                nbytes_of(want.dtype, want.shape),
            )  # type: ignore[union-attr,misc]
        )
    files_ = [f for f in manifest.files if f.base_file is not None and (files is None or f.name in files)]
    for f in files_:
        assert f.base_file is not None
        path = base_dir / f.base_file.name
        if not path.is_file():
            raise MissingFileError(f"base file missing in {base_dir}: {f.base_file.name}", path=path)
        if path.stat().st_size != f.base_file.size:
            raise BaseMismatchError(
                f"base file {path}: {path.stat().st_size} bytes, but {f.name} was made against "
                f"{f.base_file.size} (it is XOR-ed by file, so the base file must be the same bytes)",
                path=path,
                expected=str(f.base_file.size),
                actual=str(path.stat().st_size),
                algorithm="size",
                stage="base",
            )
        work.append((f"f:{f.name}", _file_sha256(path), f.base_file.size))
    got = _hash_all(work, jobs, progress, "verify base")
    for name in sorted(wanted):
        want = manifest.base_tensors[name]
        actual = got[f"t:{name}"]
        if actual != want.sha256:
            assert store is not None
            raise digest_mismatch(store.tensors[name], want, actual)
    for f in files_:
        assert f.base_file is not None
        actual = got[f"f:{f.name}"]
        if actual != f.base_file.sha256:
            raise BaseMismatchError(
                f"base file {base_dir / f.base_file.name}: sha256 {actual}, but {f.name} was made against "
                f"{f.base_file.sha256} (it is XOR-ed by file, so the base file must be the same bytes)",
                path=base_dir / f.base_file.name,
                expected=f.base_file.sha256,
                actual=actual,
                algorithm="sha256",
                stage="base",
            )


def check_payload_files(manifest: NativeManifest, payload_dir: Path) -> None:
    """Every payload file is present with the size the manifest gives (cheap, before anything else)."""
    missing = [f.name for f in manifest.files if not check_regular_file(payload_dir / f.name, payload_dir)]
    if missing:
        raise MissingFileError(
            f"payload file{'s' if len(missing) > 1 else ''} missing in {payload_dir}: {', '.join(missing)}",
            path=payload_dir / missing[0],
        )
    for f in manifest.files:
        size = (payload_dir / f.name).stat().st_size
        if size != f.payload_size:
            hint = line_ending_hint(
                payload_dir / f.name, {"sha256": f.payload_sha256}, expected_size=f.payload_size
            )
            raise FormatError(
                f"payload file {payload_dir / f.name}: {size} bytes, but {MANIFEST_NAME} lists "
                f"{f.payload_size} ({hint or 'an incomplete download?'})",
                path=payload_dir / f.name,
                expected=f.payload_size,
                actual=size,
            )


def payload_header(path: Path, entry: FileEntry) -> SafetensorsHeader:
    """The payload file's header, which must list exactly the manifest's tensors."""
    header = read_header(path)
    listed = {t.name: (t.dtype, t.shape) for t in entry.tensors}
    found = {t.name: (t.dtype, t.shape) for t in header.tensors.values()}
    if listed != found:
        diff = sorted(set(listed) ^ set(found)) or sorted(n for n in listed if listed[n] != found.get(n))
        raise FormatError(
            f"payload file {path}: its tensors differ from {MANIFEST_NAME}'s (first: {diff[0]})", path=path
        )
    return header


# --- encode ------------------------------------------------------------------------------------


def _plan_files(src_dir: Path, base_dir: Path) -> tuple[dict[str, Method], list[str], list[RawItem]]:
    """How each fine-tuned file is stored (name to method, in name order), the files left out, and
    the weight files (or their tails) that no base file masks."""
    names, skipped = [], []
    for e in sorted(os.scandir(src_dir), key=lambda e: e.name):
        if e.name.startswith("."):
            continue
        (names if e.is_file() else skipped).append(e.name)
    for n in skipped:
        logger.warning("%s: %s is not a regular file (a folder?), left out of the payload", src_dir, shown(n))
    if not names:
        raise InputError(f"no files to encode in {src_dir}", path=src_dir)
    if MANIFEST_NAME in names:
        raise InputError(
            f"{src_dir} holds a {MANIFEST_NAME}: it is a payload, not a fine-tuned model", path=src_dir
        )
    has_safetensors = any(n.lower().endswith(".safetensors") for n in names)
    methods: dict[str, Method] = {}
    omitted: list[str] = []
    raw: list[RawItem] = []
    for n in names:
        check_regular_file(src_dir / n, src_dir)
        try:
            n.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"{src_dir}: file name {shown(n)} is not valid UTF-8 (payload manifests list names as "
                "UTF-8); rename it",
                path=src_dir / n,
            ) from None
        low, size = n.lower(), (src_dir / n).stat().st_size
        base = base_dir / n
        if low.endswith(".safetensors"):
            methods[n] = "tensor-xor"
            continue
        reason = "its name marks a weights file" if low.endswith(OTHER_WEIGHTS) else None
        reason = reason or file_weights_reason(src_dir / n, n)
        if reason is not None and has_safetensors and low.endswith(OTHER_WEIGHTS):
            omitted.append(n)
        elif reason is None and low.endswith(TEXT_SUFFIXES):
            methods[n] = "copy"  # configs and the like: base copies differ in them freely
        elif base.is_file():
            methods[n] = "file-xor"
            short = size - base.stat().st_size
            if reason is not None and short > 0:
                raw.append(RawItem(n, None, short, f"its base file is {short} bytes shorter"))
        elif reason is not None:
            methods[n] = "copy"
            raw.append(RawItem(n, None, size, f"no same-named base file, and {reason}"))
        else:
            methods[n] = "copy"
    if omitted:
        logger.warning(
            "%s: left out of the payload (the safetensors files hold the weights): %s",
            src_dir,
            ", ".join(shown(n) for n in omitted),
        )
    return methods, omitted, raw


def _tensor_hashes(
    path: Path, header: SafetensorsHeader
) -> Callable[[Callable[[int], None]], dict[str, str]]:
    def run(update: Callable[[int], None]) -> dict[str, str]:
        out: dict[str, str] = {}
        buf = bytearray(CHUNK_SIZE)
        with open(path, "rb") as f:
            for t in sorted(header.tensors.values(), key=lambda t: t.begin):
                f.seek(t.begin)
                h, left = hashlib.sha256(), t.nbytes
                while left:
                    _cancel.check()
                    n = f.readinto(memoryview(buf)[: min(left, len(buf))])
                    if not n:
                        raise FormatError(f"{path}: file ends inside tensor {t.name}", path=path)
                    h.update(memoryview(buf)[:n])
                    left -= n
                    update(n)
                out[t.name] = h.hexdigest()
        return out

    return run


@dataclass(frozen=True)
class EncodePlan:
    """Everything a native encode knows before its pass: files, base tensors and their digests."""

    methods: dict[str, Method]
    steps: tuple[Step, ...]
    """One step per file, without the digests to take (the encode adds them)."""
    headers: dict[str, SafetensorsHeader]
    bases: dict[str, dict[str, str | None]]
    """Per tensor-xor file: each tensor's base tensor, or None (stored raw)."""
    base_tensors: dict[str, BaseTensor]
    tensor_sha: dict[str, dict[str, str]]
    omitted: list[str]
    identity: tuple[int, int] | None
    """Size and mtime of the base's tensor files, for the output folder's records."""
    raw: dict[str, RawNote]
    """Each fine-tuned item stored unmasked (`file:tensor` or `file`) and why it may be."""
    allow_raw: tuple[str, ...] = ()


def prepare_encode(
    src_dir: Path, base_dir: Path, *, jobs: int, progress: bool, allow_raw: Sequence[str] = ()
) -> EncodePlan:
    """Plan a native encode of `src_dir` against `base_dir`, hashing the base tensors it uses and
    every fine-tuned tensor (the pass itself then hashes whole files).

    Raises:
        `RawStorageError`: a fine-tuned tensor has no base tensor, or a weight file no base file,
            and no `allow_raw` pattern names it (checked before anything is hashed or written).
    """
    methods, omitted, raw_items = _plan_files(src_dir, base_dir)
    headers = {n: read_header(src_dir / n) for n, m in methods.items() if m == "tensor-xor"}
    store = TensorStore.open(base_dir) if headers else None
    hints = NameHints(store.tensors if store is not None else ())
    bases: dict[str, dict[str, str | None]] = {}
    dtypes: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for fname, header in headers.items():
        bases[fname] = {}
        for t in header.tensors.values():
            have = store.get(t.name) if store is not None else None
            if have is None:
                bases[fname][t.name] = None
                item = RawItem(fname, t.name, t.nbytes, "no base tensor of this name", hints.closest(t.name))
                raw_items.append(item)
                continue
            # Floats are XOR-ed in the fine-tuned dtype (a cast base compresses as well as a same-dtype one).
            floats = t.dtype in FLOAT_DTYPES and have.dtype in FLOAT_DTYPES
            dtypes.setdefault(t.name, t.dtype if floats else have.dtype)
            bases[fname][t.name] = t.name
            shapes[t.name] = have.shape
            left, grown = unmasked_bytes(t.dtype, t.shape, dtypes[t.name], have.shape)
            if left:
                where = f"its base tensor is {dtypes[t.name]}{list(have.shape)}, {left} bytes short"
                rows = t.shape[0] - have.shape[0] if grown else 0
                note = RawNote(f"{rows} rows past the base's {have.shape[0]}", GROWN_ROWS) if grown else None
                raw_items.append(RawItem(fname, t.name, left, where, note=note))
    raw = notes(raw_items, refuse_unallowed(raw_items, allow_raw, where=base_dir))
    work: list[tuple[str, Any, int]] = [
        (n, lambda update, n=n: store.sha256(n, dtypes[n], update), nbytes_of(dtypes[n], shapes[n]))  # type: ignore[union-attr]
        for n in sorted(dtypes)
    ]
    base_sha = _hash_all(work, jobs, progress, "hash base")
    tensor_sha: dict[str, dict[str, str]] = {}
    if headers:
        total = sum(sum(t.nbytes for t in h.tensors.values()) for h in headers.values())
        with (
            byte_bar(total, "hash tensors", enabled=progress) as bar,
            ThreadPoolExecutor(max(1, jobs)) as pool,
            _cancel.guard(pool),
        ):
            futures = {n: pool.submit(_tensor_hashes(src_dir / n, h), bar.update) for n, h in headers.items()}
            tensor_sha = {n: f.result() for n, f in futures.items()}
    steps: list[Step] = []
    for name, method in methods.items():
        data = FileSource(src_dir / name)
        if method == "tensor-xor":
            image = BaseImageSource(
                store, tuple(segments(headers[name], bases[name], dtypes)), f"base tensors in {base_dir}"
            )  # type: ignore[arg-type]
            steps.append(Step(name, data, image))
        elif method == "file-xor":
            steps.append(Step(name, data, FileSource(base_dir / name)))
        else:
            steps.append(Step(name, data))
    return EncodePlan(
        methods=methods,
        steps=tuple(steps),
        headers=headers,
        bases=bases,
        base_tensors={n: BaseTensor(n, dtypes[n], shapes[n], base_sha[n]) for n in dtypes},
        tensor_sha=tensor_sha,
        omitted=omitted,
        identity=store.identity() if store is not None else None,
        raw=raw,
        allow_raw=tuple(allow_raw),
    )


def build_manifest(
    plan: EncodePlan, reports: Sequence[Any], src_dir: Path, base_dir: Path, out_dir: Path, encoder: str
) -> NativeManifest:
    """The manifest of a finished encode, from its plan and the pass's file reports."""
    by_name = {r.name: r for r in reports}
    entries: list[FileEntry] = []
    for name, method in plan.methods.items():
        rep = by_name[name]
        base_file = None
        if method == "file-xor":
            base_file = BaseFile(name, (base_dir / name).stat().st_size, rep.base_digests["sha256"])
        tensors: tuple[TensorEntry, ...] = ()
        if method == "tensor-xor":
            tensors = tuple(
                TensorEntry(
                    t.name,
                    t.dtype,
                    t.shape,
                    plan.tensor_sha[name][t.name],
                    plan.bases[name][t.name],
                    plan.raw.get(f"{name}:{t.name}"),
                )
                for t in sorted(plan.headers[name].tensors.values(), key=lambda t: t.begin)
            )
        entries.append(
            FileEntry(
                name=name,
                method=method,
                size=(src_dir / name).stat().st_size,
                sha256=rep.input_digests["sha256"],
                payload_size=(out_dir / name).stat().st_size,
                payload_sha256=rep.digests["sha256"],
                tensors=tensors,
                base_file=base_file,
                note=BIN_NOTE if method == "file-xor" and name.endswith(TORCH_SUFFIXES) else None,
                raw=plan.raw.get(name),
            )
        )
    if any(e.note for e in entries):
        logger.warning("%s", BIN_NOTE)
    return NativeManifest(
        encoder=encoder,
        files=tuple(entries),
        base_tensors=plan.base_tensors,
        omitted=tuple(plan.omitted),
        allow_raw=plan.allow_raw,
    )


# --- decode ------------------------------------------------------------------------------------


def decode_plan(
    manifest: NativeManifest, payload_dir: Path, base_dir: Path, store: TensorStore | None
) -> list[Step]:
    """One step per manifest entry; tensor-xor files take their base from a `BaseImageSource`."""
    dtypes = {n: b.dtype for n, b in manifest.base_tensors.items()}
    missing = [
        f.base_file.name
        for f in manifest.files
        if f.base_file and not (base_dir / f.base_file.name).is_file()
    ]
    if missing:
        raise MissingFileError(
            f"base file{'s' if len(missing) > 1 else ''} missing in {base_dir}: {', '.join(missing)} "
            "(XOR-ed by file, so the same-named base file is needed)",
            path=base_dir / missing[0],
        )
    steps: list[Step] = []
    for f in manifest.files:
        data = FileSource(payload_dir / f.name)
        if f.method == "tensor-xor":
            header = payload_header(data.file, f)
            segs = tuple(segments(header, {t.name: t.base for t in f.tensors}, dtypes))
            if store is None and any(t.base for t in f.tensors):
                raise MissingFileError(f"no base tensors in {base_dir}", path=base_dir)
            label = f"{f.name} base tensors in {base_dir}"
            image = BaseImageSource(store, segs, label, "its base tensors were verified before the pass")  # type: ignore[arg-type]
            steps.append(Step(f.name, data, image))
        elif f.method == "file-xor":
            assert f.base_file is not None
            steps.append(Step(f.name, data, FileSource(base_dir / f.base_file.name)))
        else:
            steps.append(Step(f.name, data))
    return steps


def expected_outputs(manifest: NativeManifest, published: ChecksumManifest | None) -> dict[str, FileDigest]:
    """The digests each output must have: the manifest's sha256, plus published ones if given."""
    out: dict[str, FileDigest] = {}
    extra = (published.stage("decoded") if published is not None else {}) or {}
    for f in manifest.files:
        pub = extra.get(f.name)
        if pub is not None and pub.sha256 and pub.sha256 != f.sha256:
            raise InputError(
                f"{f.name}: the published checksums give sha256 {pub.sha256}, but {MANIFEST_NAME} gives "
                f"{f.sha256}; they describe different files",
                path=f.name,
            )
        out[f.name] = FileDigest(md5=pub.md5 if pub else None, sha256=f.sha256, size=f.size)
    return out


def open_store(manifest: NativeManifest, base_dir: Path) -> TensorStore | None:
    if not manifest.base_tensors:
        return None
    return TensorStore.open(base_dir)
