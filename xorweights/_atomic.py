"""Atomic output files: written under a temporary name beside the target, renamed when accepted."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .constants import TEMP_PREFIX, TEMP_SUFFIX

logger = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make renames in `folder` durable (best effort: not every platform can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A file written to `.xorweights-<name>.<random>.part` in the target's folder.

    Nothing appears under the final name until `commit()`, which flushes, fsyncs and renames.
    Leaving the `with` block without `commit()` (an error, a failed verification) removes the
    temporary file, so a partial output never sits under a final name.

    Example:
        >>> with AtomicFile(out / "model.bin") as f:
        ...     f.file.write(data)
        ...     f.commit()
    """

    def __init__(self, final: os.PathLike[str] | str) -> None:
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        import tempfile

        fd, tmp = tempfile.mkstemp(
            prefix=f"{TEMP_PREFIX}{self.final.name}.", suffix=TEMP_SUFFIX, dir=self.final.parent
        )
        self.temp = Path(tmp)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.committed = False

    def commit(self, *, durable: bool = True) -> Path:
        """Make the written bytes visible under the final name.

        Args:
            durable: fsync the file before the rename and its folder after, so that a power
                failure cannot leave a final name over missing data.
        """
        self.file.flush()
        if durable:
            os.fsync(self.file.fileno())
        self.file.close()
        os.chmod(self.temp, 0o666 & ~_umask())
        os.replace(self.temp, self.final)
        if durable:
            fsync_dir(self.final.parent)
        self.committed = True
        logger.debug("committed %s", self.final)
        return self.final

    def discard(self) -> None:
        """Drop the temporary file (idempotent)."""
        if not self.file.closed:
            self.file.close()
        if not self.committed:
            try:
                self.temp.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class HashingWriter:
    """Forwards writes to a file and hashes the bytes as they pass, so nothing is read back."""

    def __init__(self, sink: BinaryIO, algorithms: Sequence[str]) -> None:
        self.sink = sink
        self.hashers = {a: hashlib.new(a) for a in algorithms}
        self.count = 0

    def write(self, data: Any) -> int:
        for h in self.hashers.values():
            h.update(data)
        self.count += len(data)
        return self.sink.write(data)

    def flush(self) -> None:
        self.sink.flush()

    def hexdigests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in self.hashers.items()}
