"""Typed inputs of the XOR pass: what a step reads its data and its base from.

Every source can be opened as a byte stream and says how to name it in messages, what it holds,
and what identifies its content for resume records. Implementations: a plain file, a payload file
that may be a gzip stream (with its inflate cap), a base file generated from LLaMA weights in
another form, a native payload's base image (base tensors laid out at the payload's offsets), and
the two sides of a compressed native payload (`FramedSource` decodes its delta frames,
`CompressingSource` makes them).

A stream that transcodes (gzip, delta frames) has `consumed()`: the stored bytes read so far,
which is what the pass's progress counts (its `size()` is the stored size).
"""

from __future__ import annotations

import io
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol

from .constants import CHUNK_SIZE, GZIP_MAGIC
from .errors import FormatError, IOFailure
from .formats import gzip_stream
from .formats.delta_frames import MaskedSpans
from .formats.frame_stream import FrameReader, FrameWriter, Span
from .outfolder.folder import file_id

if TYPE_CHECKING:
    from .llama.base import GeneratedBase
    from .tensors.store import TensorStore

logger = logging.getLogger(__name__)

#: How legacy payload files are read: gzip by their magic bytes, never gzip, or always gzip.
PayloadCompression = Literal["auto", "none", "gzip"]


class Source(Protocol):
    """One input of a step."""

    @property
    def label(self) -> str:
        """How messages name it: its path, or what it is generated from."""

    @property
    def path(self) -> Path | None:
        """The file on disk, when it is one (checked for changes during the pass)."""

    @property
    def detail(self) -> str:
        """What it holds, for mismatch messages ("" when its label says it all)."""

    def open(self) -> BinaryIO:
        """A stream of its bytes (for a gzip payload: the inflated bytes, as `Inflating`)."""

    def size(self) -> int | None:
        """Its length in bytes, where known before reading it (or an estimate, where said)."""

    def identity(self) -> tuple[int, int]:
        """What identifies its content cheaply (`(size, mtime_ns)`), for resume records."""


def _opened(op: str, where: Path | str, opener: Any) -> Any:
    try:
        return opener()
    except OSError as e:
        raise IOFailure(op, where, e) from e


@dataclass(frozen=True)
class FileSource:
    """A file read as it is."""

    file: Path

    @property
    def label(self) -> str:
        return str(self.file)

    @property
    def path(self) -> Path:
        return self.file

    @property
    def detail(self) -> str:
        return ""

    def open(self) -> BinaryIO:
        return _opened("opening", self.file, lambda: open(self.file, "rb"))  # noqa: SIM115

    def size(self) -> int:
        return self.file.stat().st_size

    def identity(self) -> tuple[int, int]:
        return file_id(self.file)


class Inflating:
    """The inflated bytes of a gzip payload, capped: a gzip bomb stops at `limit` bytes.
    `stored` is the stream of the stored bytes, whose position is the pass's progress."""

    def __init__(self, stream: Any, limit: int | None, path: Path | str, stored: Any = None) -> None:
        self.stream, self.limit, self.path, self.count = stream, limit, path, 0
        self.stored = stored

    def readinto(self, b: Any) -> int:
        n = int(self.stream.readinto(b))
        self.count += n
        if self.limit is not None and self.count > self.limit:
            raise FormatError(
                f"payload {self.path}: gzip stream inflates beyond {self.limit} bytes, more than the "
                "output can be (a corrupt or hostile payload, or the wrong base)",
                path=self.path,
                expected=self.limit,
                actual=self.count,
            )
        return n

    def fileno(self) -> int:
        return int(self.stream.fileno())

    def consumed(self) -> int:
        """Bytes of the stored file read so far (the progress of the pass)."""
        if self.stored is None or isinstance(self.stored, io.IOBase):
            return os.lseek(self.fileno(), 0, os.SEEK_CUR)
        return int(self.stored.tell())

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> Inflating:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class PayloadSource:
    """A legacy payload file (`stored`: on disk, or read from the Hub): plain, or a gzip stream
    recognised by its first bytes.

    `compression`: `auto` reads a file starting with `1f 8b 08` as gzip, `none` never does,
    `gzip` requires it. What a gzip stream may inflate to is capped at `inflate_limit`.
    """

    stored: Source
    compression: PayloadCompression = "auto"
    backend: str = "zlib"
    inflate_limit: int | None = None

    @property
    def label(self) -> str:
        return self.stored.label

    @property
    def path(self) -> Path | None:
        return self.stored.path

    @property
    def detail(self) -> str:
        return self.stored.detail

    def size(self) -> int | None:
        return self.stored.size()

    def identity(self) -> tuple[int, int]:
        return self.stored.identity()

    def is_gzip(self) -> bool:
        """Whether it is read as gzip (its first bytes, unless `compression` is `none`)."""
        if self.compression == "none":
            return False
        with self.stored.open() as f:
            return f.read(len(GZIP_MAGIC)) == GZIP_MAGIC  # type: ignore[no-any-return]

    def open(self) -> BinaryIO:
        raw = self.stored.open()
        stream, compressed = _opened(
            "opening",
            self.label,
            lambda: gzip_stream.open_stream(
                raw,
                self.label,
                detect_gzip=self.compression != "none",
                require_gzip=self.compression == "gzip",
                backend=self.backend,
            ),
        )
        return Inflating(stream, self.inflate_limit, self.label, raw) if compressed else stream  # type: ignore[return-value]


@dataclass(frozen=True)
class GeneratedSource:
    """A base file the pinned LLaMA conversion would have written, generated from the weights in
    another form as it is read (never written to disk)."""

    base: GeneratedBase
    name: str

    @property
    def label(self) -> str:
        return f"{self.name} generated from {self.base.folder}"

    @property
    def path(self) -> None:
        return None

    @property
    def detail(self) -> str:
        return self.base.detail(self.name)

    def open(self) -> BinaryIO:
        opener = self.base.opener(self.name)
        return _opened("generating", self.label, opener)  # type: ignore[no-any-return]

    def size(self) -> int:
        """An estimate (a shard's tensor bytes, the tokenizer's JSON bounded): enough for space checks."""
        return self.base.size_estimate(self.name)

    def identity(self) -> tuple[int, int]:
        return self.base.identity()


@dataclass(frozen=True)
class BytesSource:
    """A small file made in memory (an index, a manifest)."""

    name: str
    data: bytes

    @property
    def label(self) -> str:
        return f"{self.name} (generated)"

    @property
    def path(self) -> None:
        return None

    @property
    def detail(self) -> str:
        return ""

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)

    def size(self) -> int:
        return len(self.data)

    def identity(self) -> tuple[int, int]:
        return len(self.data), zlib.crc32(self.data)


@dataclass(frozen=True)
class BaseImageSource:
    """A native payload file's base: the base tensors at the payload's offsets (`BaseImage`)."""

    store: TensorStore | None
    """None when the payload uses no base tensor (every tensor stored raw): the image is zeros."""
    segments: tuple[tuple[int, str | None, str | None], ...]
    label: str
    detail: str = ""

    @property
    def path(self) -> None:
        return None

    def open(self) -> BinaryIO:
        return BaseImage(self.store, self.segments)  # type: ignore[return-value]

    def size(self) -> int:
        return sum(s[0] for s in self.segments)

    def identity(self) -> tuple[int, int]:
        return self.store.identity() if self.store is not None else (0, 0)


class BaseImage(io.RawIOBase):
    """The base side of one tensor-xor file, as long as the payload file.

    Zeros where the payload holds its header or a raw tensor; where it holds an XOR-ed tensor,
    that base tensor's bytes (read as the manifest's dtype), zero-padded or truncated to the
    payload tensor's size, so that a grown vocabulary works.
    """

    def __init__(
        self, store: TensorStore | None, segments: Sequence[tuple[int, str | None, str | None]]
    ) -> None:
        super().__init__()
        self.store = store
        self._segments = list(reversed(segments))  # (length, base tensor or None, dtype)
        self._left = 0
        self._reader: Any = None
        self._zeros = bytes(min(CHUNK_SIZE, max((s[0] for s in segments), default=0)))

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
                return True
        return False

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if not len(view):
            return 0
        if self._left == 0 and not self._next():
            return 0
        want = min(len(view), self._left)
        n = self._reader.readinto(view[:want]) if self._reader is not None else 0
        if not n:  # a raw tensor, the header, or the padding past a shorter base tensor
            n = min(want, len(self._zeros))
            view[:n] = self._zeros[:n]
        self._left -= n
        return n

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        super().close()


def transcoding(stream: Any) -> bool:
    """Whether an opened stream yields other bytes than it reads (progress is then `consumed()`)."""
    return hasattr(stream, "consumed")


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

    @property
    def label(self) -> str:
        return self.payload.label

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


@dataclass(frozen=True)
class CompressingSource(FileSource):
    """A fine-tuned safetensors file read as the delta frames of its payload file, against its
    base image; the file must still hash to the `sha256` it had when the encode was planned."""

    image: BaseImageSource
    spans: tuple[Span, ...]
    sha256: str
    workers: int = 1

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
