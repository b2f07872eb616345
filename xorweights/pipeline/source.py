"""What a step reads: the `Source` protocol, the two sources every format uses (a file, bytes made
in memory), and the hooks a format's own source may add to word its failures and bound its size.

A stream that transcodes (gzip, delta frames) has `consumed()`: the stored bytes read so far,
which is what the pass's progress counts (its `size()` is the stored size).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..errors import IOFailure
from ..outfolder.folder import file_id


class Source(Protocol):
    """One input of a step.

    A source MAY also define (the pipeline asks through the functions below, with these defaults):
    `explain(error) -> BaseException | None`, its own wording of a failed read (None: the generic
    one); `mismatch_cause() -> str | None`, why it would not be the expected input; `space_bound(base)
    -> int`, what an output made from it may take; `sized_as_written = True`, when nothing bounds
    that before it is written (the writer then watches the free space).
    """

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
        """A stream of its bytes."""

    def size(self) -> int | None:
        """Its length in bytes, where known before reading it (or an estimate, where said)."""

    def identity(self) -> tuple[int, int]:
        """What identifies its content cheaply (`(size, mtime_ns)`), for resume records."""


def explain(source: Source | None, error: BaseException) -> BaseException | None:
    """The source's own error for a failed read of it, or None."""
    hook = getattr(source, "explain", None)
    return hook(error) if hook is not None else None


def mismatch_cause(source: Source | None) -> str | None:
    """Why `source` would not be the input a digest expects, in the source's words, or None."""
    hook = getattr(source, "mismatch_cause", None)
    return hook() if hook is not None else None


def sized_as_written(source: Source) -> bool:
    """Whether an output made from `source` has a size known only once it is written."""
    return bool(getattr(source, "sized_as_written", False))


def space_bound(source: Source, base: Source | None) -> int:
    """What an output made from `source` (and `base`) may take: the source's own bound, else its size."""
    hook = getattr(source, "space_bound", None)
    return int(hook(base)) if hook is not None else source.size() or 0


def transcoding(stream: Any) -> bool:
    """Whether an opened stream yields other bytes than it reads (progress is then `consumed()`)."""
    return hasattr(stream, "consumed")


def opened(op: str, where: Path | str, opener: Any) -> Any:
    """`opener()`, its `OSError` as an `IOFailure` naming `op` and `where`."""
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
        return opened("opening", self.file, lambda: open(self.file, "rb"))  # type: ignore[no-any-return]

    def size(self) -> int:
        return self.file.stat().st_size

    def identity(self) -> tuple[int, int]:
        return file_id(self.file)


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
