"""A legacy payload file as the pass reads it: plain, or a gzip stream recognised by its first
bytes and inflated with a cap; how its failures are worded; and the check a plain payload file
meets when it is written."""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from ..errors import FormatError, IOFailure
from ..pipeline.source import Source, opened
from . import gzip_stream

#: How legacy payload files are read: gzip by their magic bytes, never gzip, or always gzip.
PayloadCompression = Literal["auto", "none", "gzip"]


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
            return f.read(len(gzip_stream.GZIP_MAGIC)) == gzip_stream.GZIP_MAGIC  # type: ignore[no-any-return]

    def open(self) -> BinaryIO:
        raw = self.stored.open()
        stream, compressed = opened(
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

    def space_bound(self, base: Source | None) -> int:
        """An XOR output is as long as its payload file; for a gzip one, the larger of it and its
        base (what it inflates to is known only once read)."""
        size = self.size() or 0
        if base is None:
            return size
        try:
            gzip = self.is_gzip()
        except OSError as e:
            raise IOFailure("reading", self.label, e) from e
        return max(size, base.size() or 0) if gzip else size

    def explain(self, error: BaseException) -> BaseException | None:
        """A failed gzip stream in words: what it means and what to do."""
        if not isinstance(error, gzip_stream.GZIP_ERRORS):
            return None
        return FormatError(
            f"payload {self.label}: gzip stream is corrupt or truncated ({error}); " + self._gzip_advice(),
            path=self.path,
        )

    def _gzip_advice(self) -> str:
        """What to do about a payload file whose gzip stream fails. One whose first bytes inflate is
        gzip: it changed or was damaged since it was made (a resumed download that got other bytes,
        a truncated copy). One that fails at once may be a plain XOR that begins like gzip."""
        damaged = f"the file changed or is damaged since it was published: download {self.label} again"
        if self.compression == "auto" and self.path is not None and not _inflates_at_first(self.path):
            return (
                "if it is a plain XOR that merely begins with 1f 8b 08, decode with "
                f'`payload_compression="none"`; else {damaged}'
            )
        return damaged


def _inflates_at_first(path: Path) -> bool:
    """Whether the file's first 64 KiB inflate as gzip into 4 KiB or more (or a whole stream):
    random bytes after the magic bytes (a plain XOR) fail long before that."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        inflater = zlib.decompressobj(31)
        return len(inflater.decompress(head, 1 << 16)) >= 4096 or inflater.eof
    except (OSError, zlib.error):
        return False


def refuse_gzip_head(temp: Path, *, name: str, data: Path | None) -> None:
    """Encoding: a plain payload file that begins like gzip would be misread when decoded."""
    with open(temp, "rb") as head:
        if head.read(len(gzip_stream.GZIP_MAGIC)) == gzip_stream.GZIP_MAGIC:
            raise FormatError(
                f"payload {name} would start with the gzip magic bytes and be misread "
                "when decoded; encode with `compress='gzip'`",
                path=data,
            )
