"""Native encode: plan a payload of a fine-tuned folder against its base, and its manifest.

Each fine-tuned file gets a method (`tensor-xor` for safetensors, `copy` for text files known to
hold no weights, `file-xor` for other files with a same-named base file, `copy` for a tokenizer
model without one), every item no base masks is refused unless an `allow_raw` pattern names it,
and the base tensors used and every fine-tuned tensor are hashed before the pass. A tensor-xor
file is then written as delta frames (`zstd`, format version 2) or as a safetensors file of
XOR-ed tensors (`none`, format version 1).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .._display import abridged, shown
from .._sizing import CHUNK_SIZE
from ..errors import FormatError, InputError
from ..hashing import feed, hash_many, new_hasher
from ..llama.tensors import open_tensors
from ..model_files import OPAQUE_WEIGHT_SUFFIXES, TORCH_SUFFIXES
from ..outfolder.paths import check_regular_file, is_regular
from ..pipeline import FileSource, Step
from ..tensors.dtypes import DTYPE_SIZES, FLOAT_DTYPES
from ..tensors.safetensors_header import SafetensorsHeader, read_header
from ..tensors.store import nbytes_of
from .delta_frames import MODES, STORED
from .frame_stream import FRAME_ELEMENTS, Span
from .native import segments
from .native_manifest import (
    BASE_DIGEST,
    COMPRESSION,
    FORMAT_VERSION,
    MANIFEST_NAME,
    BaseFile,
    BaseTensor,
    FileEntry,
    Method,
    NativeManifest,
    RawNote,
    TensorEntry,
)
from .native_sources import BaseImageSource, CompressingSource
from .raw_storage import (
    GROWN_ROWS,
    NameHints,
    RawItem,
    copy_kind,
    copy_refusal,
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


#: How an encode stores tensor-xor files: delta frames (`zstd`), grouped ones, or as they are.
Compress = Literal["zstd", "zstd-grouped", "none"]
COMPRESS_MODES: tuple[str, ...] = (*MODES, "none")


def spans(header: SafetensorsHeader, bases: Mapping[str, str | None], mode: str) -> tuple[Span, ...]:
    """How a compressed payload file frames its output (`mode`, one of `MODES`): the header and raw
    tensors stored, every tensor with a base as deltas of its elements."""
    transform, group = MODES[mode]
    out = [Span(header.data_start, STORED)]
    for t in sorted(header.tensors.values(), key=lambda t: t.begin):
        width = DTYPE_SIZES[t.dtype]
        if bases.get(t.name) is None or width not in (1, 2, 4, 8):
            out.append(Span(t.nbytes, STORED))
        else:
            out.append(Span(t.nbytes, transform, width, t.dtype, group))
    return tuple(out)


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
        if has_safetensors and low.endswith(OTHER_WEIGHTS):
            omitted.append(n)
            continue
        # An allow-list: only files known to hold no weights are copied as they are.
        reason = copy_refusal(src_dir / n, n)
        if reason is None and copy_kind(n) == "text":
            methods[n] = "copy"  # configs and the like: base copies differ in them freely
        elif is_regular(base):  # a FIFO or a device there is refused, not taken for no file
            methods[n] = "file-xor"
            short = size - base.stat().st_size
            if short > 0 and reason is not None:  # the tail past the base file is in the clear
                raw.append(RawItem(n, None, short, f"its base file is {short} bytes shorter"))
        elif reason is not None:
            methods[n] = "copy"
            raw.append(RawItem(n, None, size, f"no same-named base file, and {reason}"))
        else:
            methods[n] = "copy"  # a tokenizer model the base lacks
    if omitted:
        logger.warning(
            "%s: left out of the payload (the safetensors files hold the weights): %s",
            src_dir,
            abridged(omitted),
        )
    return methods, omitted, raw


def _tensor_hashes(
    path: Path, header: SafetensorsHeader
) -> Callable[[Callable[[int], None]], tuple[dict[str, str], str]]:
    """The sha256 of each tensor and of the whole file, in one read of it."""

    def run(update: Callable[[int], None]) -> tuple[dict[str, str], str]:
        out: dict[str, str] = {}
        buf = bytearray(CHUNK_SIZE)
        whole = new_hasher("sha256")
        with open(path, "rb") as f:
            if feed(f, [whole], header.data_start) != header.data_start:
                raise FormatError(f"{path}: file ends inside its header", path=path)
            for t in sorted(header.tensors.values(), key=lambda t: t.begin):
                h = new_hasher("sha256")
                if feed(f, [h, whole], t.nbytes, buffer=buf, on_progress=update) != t.nbytes:
                    raise FormatError(f"{path}: file ends inside tensor {t.name}", path=path)
                out[t.name] = h.hexdigest()
            if f.read(1):
                raise FormatError(f"{path}: longer than its header says (changed?)", path=path)
        return out, whole.hexdigest()

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
    file_sha: dict[str, str]
    """Per tensor-xor file: the sha256 of the whole fine-tuned file, as hashed when planned."""
    omitted: list[str]
    identity: tuple[int, int] | None
    """Size and mtime of the base's tensor files, for the output folder's records."""
    raw: dict[str, RawNote]
    """Each fine-tuned item stored unmasked (`file:tensor` or `file`) and why it may be."""
    allow_raw: tuple[str, ...] = ()
    compress: Compress = "zstd"

    def compressed(self, name: str) -> bool:
        return self.compress != "none" and self.methods[name] == "tensor-xor"


def prepare_encode(
    src_dir: Path,
    base_dir: Path,
    *,
    jobs: int,
    progress: bool,
    allow_raw: Sequence[str] = (),
    compress: Compress = "zstd",
) -> EncodePlan:
    """Plan a native encode of `src_dir` against `base_dir`, hashing the base tensors it uses and
    every fine-tuned tensor (the pass itself then hashes whole files).

    Raises:
        `RawStorageError`: a fine-tuned tensor has no base tensor, or a weight file no base file,
            and no `allow_raw` pattern names it (checked before anything is hashed or written).
    """
    methods, omitted, raw_items = _plan_files(src_dir, base_dir)
    headers = {n: read_header(src_dir / n) for n, m in methods.items() if m == "tensor-xor"}
    store = open_tensors(base_dir) if headers else None
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
    algorithm = "sha256" if compress == "none" else BASE_DIGEST  # version 1 stays readable by old readers
    work: list[tuple[str, Any, int]] = [
        (
            n,
            lambda update, n=n: store.digest(n, dtypes[n], update, algorithm),
            nbytes_of(dtypes[n], shapes[n]),
        )  # type: ignore[union-attr]
        for n in sorted(dtypes)
    ]
    base_sha = dict(hash_many(work, jobs=jobs, progress=progress, desc="hash base"))
    tensor_work = [
        (n, _tensor_hashes(src_dir / n, h), sum(t.nbytes for t in h.tensors.values()))
        for n, h in headers.items()
    ]
    hashes = dict(hash_many(tensor_work, jobs=jobs, progress=progress, desc="hash tensors"))
    steps: list[Step] = []
    for name, method in methods.items():
        data = FileSource(src_dir / name)
        if method == "tensor-xor":
            image = BaseImageSource(
                store, tuple(segments(headers[name], bases[name], dtypes)), f"base tensors in {base_dir}"
            )  # type: ignore[arg-type]
            if compress == "none":
                steps.append(Step(name, data, image))
                continue
            framed = CompressingSource(
                src_dir / name,
                image,
                spans(headers[name], bases[name], compress),
                hashes[name][1],
                workers=max(1, jobs),
            )
            options = {
                "base": image.identity(),
                "frames": (FORMAT_VERSION, FRAME_ELEMENTS),
                "grouped": (int(MODES[compress][1]), 0),
            }
            steps.append(Step(name, framed, options=options, masked=True))
        elif method == "file-xor":
            steps.append(Step(name, data, FileSource(base_dir / name)))
        else:
            steps.append(Step(name, data))
    return EncodePlan(
        methods=methods,
        steps=tuple(steps),
        headers=headers,
        bases=bases,
        base_tensors={n: BaseTensor(n, dtypes[n], shapes[n], base_sha[n], algorithm) for n in dtypes},
        tensor_sha={n: h[0] for n, h in hashes.items()},
        file_sha={n: h[1] for n, h in hashes.items()},
        omitted=omitted,
        identity=store.identity() if store is not None else None,
        raw=raw,
        allow_raw=tuple(allow_raw),
        compress=compress,
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
        compressed = plan.compressed(name)
        entries.append(
            FileEntry(
                name=name,
                method=method,
                size=(src_dir / name).stat().st_size,
                sha256=plan.file_sha[name] if compressed else rep.input_digests["sha256"],
                payload_size=(out_dir / name).stat().st_size,
                payload_sha256=rep.digests["sha256"],
                tensors=tensors,
                base_file=base_file,
                note=BIN_NOTE if method == "file-xor" and name.endswith(TORCH_SUFFIXES) else None,
                raw=plan.raw.get(name),
                compression=COMPRESSION if compressed else None,
            )
        )
    if any(e.note for e in entries):
        logger.warning("%s", BIN_NOTE)
    return NativeManifest(
        encoder=encoder,
        files=tuple(entries),
        base_tensors=plan.base_tensors,
        format_version=FORMAT_VERSION if any(e.compression for e in entries) else 1,
        omitted=tuple(plan.omitted),
        allow_raw=plan.allow_raw,
    )
