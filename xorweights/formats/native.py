"""The native payload format (`xorweights`): tensor-level XOR, independent of the base's container.

A fine-tuned safetensors file becomes a payload file whose tensor bytes are masked by the
same-named base tensor's bytes, wherever and however the base stores them: in format version 1 a
safetensors file with the same header and XOR-ed tensors; in version 2 delta frames
(`delta_frames`). Decoding rebuilds the file byte for byte in one pass against a "base image",
the base tensors laid out at the output's offsets (see `sources.BaseImage`). Every base tensor is
hashed and checked against the manifest before any output is written. Encoding: `native_encode`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._display import abridged
from .._line_endings import line_ending_hint
from ..checksum_types import ChecksumManifest, FileDigest
from ..errors import BaseMismatchError, FormatError, InputError, MissingFileError
from ..hashing import hash_file, hash_many
from ..llama.tensors import open_tensors
from ..outfolder.paths import check_regular_file, is_regular
from ..pipeline import FileSource, Source, Step
from ..tensors.safetensors_header import SafetensorsHeader, read_header_from
from ..tensors.store import StoredTensor, TensorStore, castable, nbytes_of
from .delta_frames import MaskedSpans, starts_with_frame
from .frame_stream import FrameReader
from .native_manifest import (
    MANIFEST_NAME,
    BaseTensor,
    FileEntry,
    NativeManifest,
)
from .native_sources import BaseImageSource, FramedSource, damaged_payload, digest_mismatch

logger = logging.getLogger(__name__)


def tensor_offsets(header: SafetensorsHeader) -> tuple[tuple[int, str], ...]:
    """`(offset, name)` of each tensor in file order, for messages naming a frame's tensor."""
    return tuple((t.begin, t.name) for t in sorted(header.tensors.values(), key=lambda t: t.begin))


def masked_spans(header: SafetensorsHeader, entry: FileEntry) -> MaskedSpans:
    """Where a compressed payload file MUST hold delta frames: the tensors its entry masks by a
    base tensor (a stored frame there would be the fine-tuned bytes in the clear)."""
    masked = {t.name for t in entry.tensors if t.base is not None}
    return MaskedSpans((t.begin, t.end, t.name) for t in header.tensors.values() if t.name in masked)


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


def check_base(
    manifest: NativeManifest,
    store: TensorStore | None,
    base_dir: Path,
    *,
    jobs: int,
    progress: bool = False,
    names: set[str] | None = None,
    files: set[str] | None = None,
    in_pass: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    """Prove every base tensor and base file the manifest needs, before any output is written;
    those `in_pass` (proved by the decode pass as it reads them, `proven_in_pass`) only for
    presence, shape and dtype, not read here.

    Raises:
        `MissingFileError`: a base tensor or base file is absent (the first few named, and how many).
        `BaseMismatchError`: one differs in shape, dtype or sha256 (tensor, file, expected, actual).
    """
    wanted = {t.base for f in manifest.files for t in f.tensors if t.base is not None}
    if names is not None:
        wanted &= names
    missing = sorted(n for n in wanted if store is None or store.get(n) is None)
    if missing:
        raise MissingFileError(
            f"base tensor{'s' if len(missing) > 1 else ''} missing in {base_dir}: {abridged(missing)}",
            path=base_dir,
        )
    work: list[tuple[str, Callable[[Callable[[int], None]], str], int]] = []
    for name in sorted(wanted):
        assert store is not None
        want, have = manifest.base_tensors[name], store.tensors[name]
        bad = layout_mismatch(have, want)
        if bad is not None:
            raise bad
        if name in in_pass:
            continue
        work.append(
            (
                f"t:{name}",
                lambda update, n=name, d=want.dtype, a=want.algorithm: store.digest(n, d, update, a),
                nbytes_of(want.dtype, want.shape),
            )  # type: ignore[union-attr,misc]
        )
    files_ = [f for f in manifest.files if f.base_file is not None and (files is None or f.name in files)]
    for f in files_:
        assert f.base_file is not None
        path = base_dir / f.base_file.name
        if not is_regular(path):
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
        work.append(
            (
                f"f:{f.name}",
                lambda update, p=path: hash_file(p, ["sha256"], on_progress=update)["sha256"],
                f.base_file.size,
            )
        )
    got = dict(hash_many(work, jobs=jobs, progress=progress, desc="verify base"))
    for name in sorted(wanted - in_pass):
        want = manifest.base_tensors[name]
        actual = got[f"t:{name}"]
        if actual != want.digest:
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


def proven_in_pass(manifest: NativeManifest, names: set[str]) -> set[str]:
    """The base tensors the decode of files `names` proves as it reads them (`BaseImage`): those
    masking a tensor of at least one byte (an empty one reads nothing of its base)."""
    return {
        t.base
        for f in manifest.files
        if f.name in names and f.method == "tensor-xor"
        for t in f.tensors
        if t.base is not None and nbytes_of(t.dtype, t.shape)
    }


def check_payload_files(
    manifest: NativeManifest, payload_dir: Path, remote: Mapping[str, Any] | None = None
) -> None:
    """Every payload file is present with the size the manifest gives (cheap, before anything else);
    one read from the Hub (`remote`) must be listed there with the manifest's size and sha256."""
    remote = remote or {}
    for f in manifest.files:
        listed = remote[f.name].listed if f.name in remote else None
        if listed is not None and (listed.size, listed.sha256) != (f.payload_size, f.payload_sha256):
            raise FormatError(
                f"payload file {remote[f.name].label}: the Hub lists {listed.size} bytes, sha256 "
                f"{listed.sha256}, but {MANIFEST_NAME} gives {f.payload_size}, {f.payload_sha256}",
                path=remote[f.name].label,
            )
    local = [f for f in manifest.files if f.name not in remote]
    missing = [f.name for f in local if not check_regular_file(payload_dir / f.name, payload_dir)]
    if missing:
        raise MissingFileError(
            f"{len(missing)} payload file{'s' if len(missing) > 1 else ''} missing in {payload_dir}: "
            f"{abridged(missing)}; an incomplete download or copy? fetch them and run again",
            path=payload_dir / missing[0],
        )
    for f in local:
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


class _Zeros:
    """A base image of zeros: enough to read a compressed file's header (stored frames)."""

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        view[:] = bytes(len(view))
        return len(view)

    def close(self) -> None:
        pass


def payload_header(source: Source, entry: FileEntry) -> SafetensorsHeader:
    """The header of a payload file's output, which must list exactly the manifest's tensors: the
    file's own header, or a compressed file's first (stored) frames."""
    path = source.label
    if entry.compression is None:
        try:
            with source.open() as stream:
                header = read_header_from(stream, entry.payload_size, path)
        except FormatError:
            with source.open() as stream:
                if starts_with_frame(stream.read(16)):
                    raise FormatError(
                        f"payload file {path} holds delta frames, but {MANIFEST_NAME} lists it "
                        'uncompressed (its entry lacks "compression")',
                        path=path,
                    ) from None
            raise
    else:
        try:
            with FrameReader(source.open(), _Zeros(), path, limit=entry.size) as frames:
                header = read_header_from(frames, entry.size, path)
        except FormatError as e:
            damaged = damaged_payload(source.path, entry.payload_sha256, e)
            if damaged is not None:
                raise damaged from e
            raise
    listed = {t.name: (t.dtype, t.shape) for t in entry.tensors}
    found = {t.name: (t.dtype, t.shape) for t in header.tensors.values()}
    if listed != found:
        diff = sorted(set(listed) ^ set(found)) or sorted(n for n in listed if listed[n] != found.get(n))
        raise FormatError(
            f"payload file {path}: its tensors differ from {MANIFEST_NAME}'s (first: {diff[0]})", path=path
        )
    return header


# --- decode ------------------------------------------------------------------------------------


def decode_plan(
    manifest: NativeManifest,
    payload_dir: Path,
    base_dir: Path,
    store: TensorStore | None,
    *,
    workers: int = 1,
    open_payload: Callable[[FileEntry], Source] | None = None,
) -> list[Step]:
    """One step per manifest entry; tensor-xor files take their base from a `BaseImageSource`
    (a compressed one reads it inside its `FramedSource`, decoding frames on `workers` threads).

    `open_payload` gives each payload file's source (default: the file in `payload_dir`).
    """
    dtypes = {n: b.dtype for n, b in manifest.base_tensors.items()}
    missing = [
        f.base_file.name
        for f in manifest.files
        if f.base_file and not is_regular(base_dir / f.base_file.name)
    ]
    if missing:
        raise MissingFileError(
            f"base file{'s' if len(missing) > 1 else ''} missing in {base_dir}: {abridged(missing)} "
            "(XOR-ed by file, so the same-named base file is needed)",
            path=base_dir / missing[0],
        )
    steps: list[Step] = []
    for f in manifest.files:
        data: Source = open_payload(f) if open_payload is not None else FileSource(payload_dir / f.name)
        if f.method == "tensor-xor":
            header = payload_header(data, f)
            segs = tuple(segments(header, {t.name: t.base for t in f.tensors}, dtypes))
            if store is None and any(t.base for t in f.tensors):
                raise MissingFileError(f"no base tensors in {base_dir}", path=base_dir)
            label = f"{f.name} base tensors in {base_dir}"
            proof = {
                name: manifest.base_tensors[name] for length, name, _ in segs if name is not None and length
            }
            image = BaseImageSource(
                store, segs, label, "its base tensors are proved as the pass reads them", proof
            )  # type: ignore[arg-type]
            if f.compression is None:
                steps.append(Step(f.name, data, image))
                continue
            masked = masked_spans(header, f)
            framed = FramedSource(
                data, image, tensor_offsets(header), workers, f.size, masked, recorded=f.payload_sha256
            )
            steps.append(Step(f.name, framed, options={"base": image.identity()}, masked=True))
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
    return open_tensors(base_dir)
