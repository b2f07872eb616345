"""Atomic output files: written under a temporary name beside the target, renamed when accepted."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO

from .constants import TEMP_PREFIX, TEMP_SUFFIX

logger = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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

    def commit(self) -> Path:
        """Make the written bytes durable and visible under the final name."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.chmod(self.temp, 0o666 & ~_umask())
        os.replace(self.temp, self.final)
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
