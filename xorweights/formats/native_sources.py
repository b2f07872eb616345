"""The sources of a native payload's pass: a payload file's base image (the base tensors at the
payload's offsets), a compressed payload file read as the output's bytes (`FramedSource` decodes
its delta frames), and a fine-tuned file read as its payload's frames (`CompressingSource`)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .._sizing import CHUNK_SIZE
from ..errors import BaseMismatchError, ChecksumMismatchError, FormatError
from ..hashing import hash_file, new_hasher
from ..pipeline.source import FileSource, Source
from .delta_frames import MaskedSpans
from .frame_stream import FrameReader, FrameWriter, Span
from .native_manifest import BaseTensor

if TYPE_CHECKING:
    from ..tensors.store import StoredTensor, TensorStore


def digest_mismatch(have: StoredTensor, want: BaseTensor, actual: str) -> BaseMismatchError:
    """The error for a base tensor whose bytes (read as the manifest's dtype) hash otherwise."""
    cast_note = f" read as {want.dtype}" if have.dtype != want.dtype else ""
    return BaseMismatchError(
        f"base tensor {want.name} in {have.source}{cast_note}: {want.algorithm} {actual}, but the payload "
        f"was made against {want.digest}; these are not the base weights the release was made from",
        path=have.source,
        expected=want.digest,
        actual=actual,
        algorithm=want.algorithm,
        stage="base",
    )


@dataclass(frozen=True)
class BaseImageSource:
    """A native payload file's base: the base tensors at the payload's offsets (`BaseImage`)."""

    store: TensorStore | None
    """None when the payload uses no base tensor (every tensor stored raw): the image is zeros."""
    segments: tuple[tuple[int, str | None, str | None], ...]
    label: str
    detail: str = ""
    proof: Mapping[str, BaseTensor] | None = None
    """Base tensors the image proves as it reads them (each hashed whole, checked at its end)."""

    @property
    def path(self) -> None:
        return None

    def open(self) -> BinaryIO:
        return BaseImage(self.store, self.segments, self.proof)  # type: ignore[return-value]

    def size(self) -> int:
        return sum(s[0] for s in self.segments)

    def identity(self) -> tuple[int, int]:
        return self.store.identity() if self.store is not None else (0, 0)


class BaseImage(io.RawIOBase):
    """The base side of one tensor-xor file, as long as the payload file.

    Zeros where the payload holds its header or a raw tensor; where it holds an XOR-ed tensor,
    that base tensor's bytes (read as the manifest's dtype), zero-padded or truncated to the
    payload tensor's size, so that a grown vocabulary works.

    Each base tensor in `proof` is hashed as it is read (the rest of a truncated one too) and
    checked at the end of its span: a wrong base fails the pass that reads it, in that pass, with
    no separate reading of the base (`BaseMismatchError`, naming the tensor and its file).
    """

    def __init__(
        self,
        store: TensorStore | None,
        segments: Sequence[tuple[int, str | None, str | None]],
        proof: Mapping[str, BaseTensor] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self._segments = list(reversed(segments))  # (length, base tensor or None, dtype)
        self._left = 0
        self._reader: Any = None
        self._zeros = bytes(min(CHUNK_SIZE, max((s[0] for s in segments), default=0)))
        self._proof = proof or {}
        self._hash: Any = None
        self._proving: str | None = None

    def readable(self) -> bool:
        return True

    def _next(self) -> bool:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        while self._segments:
            length, name, dtype = self._segments.pop()
            if length:
                self._left = length
                if name is not None and self.store is not None:
                    self._reader = self.store.reader(name, dtype)
                    if name in self._proof:
                        self._hash, self._proving = new_hasher(self._proof[name].algorithm), name
                return True
        return False

    def _prove(self) -> None:
        """Check the base tensor whose span just ended: hash what the span left of it, compare."""
        h, name = self._hash, self._proving
        self._hash = self._proving = None
        if h is None or name is None or self.store is None:
            return
        rest = bytearray(min(CHUNK_SIZE, self._reader.remaining)) if self._reader.remaining else None
        while rest is not None and (k := self._reader.readinto(rest)):
            h.update(memoryview(rest)[:k])
        actual = h.hexdigest()
        if actual != self._proof[name].digest:
            raise digest_mismatch(self.store.tensors[name], self._proof[name], actual)

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if not len(view):
            return 0
        if self._left == 0 and not self._next():
            return 0
        want = min(len(view), self._left)
        n = self._reader.readinto(view[:want]) if self._reader is not None else 0
        if n and self._hash is not None:
            self._hash.update(view[:n])
        if not n:  # a raw tensor, the header, or the padding past a shorter base tensor
            n = min(want, len(self._zeros))
            view[:n] = self._zeros[:n]
        self._left -= n
        if not self._left:
            self._prove()
        return n

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        super().close()


@dataclass(frozen=True)
class FramedSource:
    """A compressed native payload file (delta frames), read as the output's bytes: its base image
    is read inside, frame by frame (so the step has no separate base)."""

    payload: Source
    image: BaseImageSource
    tensors: tuple[tuple[int, str], ...] = ()
    """`(offset, name)` of the output's tensors, so that errors name a bad frame's tensor."""
    workers: int = 1
    out_size: int | None = None
    """The output's size: frames beyond it are refused (a hostile file cannot fill the disk)."""
    masked: MaskedSpans | None = None
    """Where the output MUST come from delta frames (the tensors masked by a base tensor)."""
    recorded: str | None = None
    """The payload file's sha256 as `xorweights.json` records it (see `damaged_payload`)."""

    @property
    def label(self) -> str:
        return self.payload.label

    def explain(self, error: BaseException) -> BaseException | None:
        """Frames that fail to decode in a file that differs from its recorded digest: a mismatch."""
        return damaged_payload(self.path, self.recorded, error)

    @property
    def path(self) -> Path | None:
        return self.payload.path

    @property
    def detail(self) -> str:
        return self.payload.detail

    def open(self) -> BinaryIO:
        payload = self.payload.open()
        try:
            base = self.image.open()
        except BaseException:
            payload.close()
            raise
        return FrameReader(  # type: ignore[return-value]
            payload,
            base,
            self.label,
            workers=self.workers,
            tensors=self.tensors,
            limit=self.out_size,
            masked=self.masked,
        )

    def size(self) -> int | None:
        return self.payload.size()

    def identity(self) -> tuple[int, int]:
        return self.payload.identity()


def damaged_payload(path: Path | None, recorded: str | None, error: BaseException) -> BaseException | None:
    """A payload file whose frames fail to decode (`error`, a `FormatError`), told apart: when its
    sha256 differs from the one `xorweights.json` records, it changed or was damaged since it was made,
    a verification mismatch (`ChecksumMismatchError`, as a damaged uncompressed payload file is
    found by its output's digest); otherwise None (it was made so: the format error stands)."""
    if not isinstance(error, FormatError) or path is None or recorded is None:
        return None
    try:
        actual = hash_file(path, ["sha256"])["sha256"]
    except OSError:
        return None
    if actual == recorded:
        return None
    why = str(error).removeprefix(f"{path}: ")
    return ChecksumMismatchError(
        f"payload file {path}: sha256 {actual}, but xorweights.json records {recorded}: it changed or "
        f"was damaged since it was made ({why}); download or copy it again",
        path=path,
        expected=recorded,
        actual=actual,
        algorithm="sha256",
        stage="payload",
    )


@dataclass(frozen=True)
class CompressingSource(FileSource):
    """A fine-tuned safetensors file read as the delta frames of its payload file, against its
    base image; the file must still hash to the `sha256` it had when the encode was planned."""

    image: BaseImageSource
    spans: tuple[Span, ...]
    sha256: str
    workers: int = 1

    sized_as_written = True
    """Anywhere from a few bytes to more than the fine-tuned file: its writer watches the free space."""

    def open(self) -> BinaryIO:
        data = super().open()
        try:
            base = self.image.open()
        except BaseException:
            data.close()
            raise
        return FrameWriter(  # type: ignore[return-value]
            data, base, self.spans, self.label, workers=self.workers, expect_sha256=self.sha256
        )
