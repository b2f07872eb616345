"""Atomic output files: written under a temporary name beside the target, renamed when accepted."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import IOFailure, XorWeightsError
from ..hashing import new_hasher

#: Prefix of every file and folder of xorweights' own: temporaries, records, the staging folder.
TEMP_PREFIX = ".xorweights-"

TEMP_SUFFIX = ".part"

#: Where xorweights keeps its own files inside a folder it writes (relative POSIX path): the
#: records, the journal, a recovery's seal, the staging folder and the temporaries of outputs not yet
#: renamed into place. Below `.cache/huggingface/`, which huggingface_hub leaves out of every upload
#: (`upload_folder` and `hf upload` ignore it by default, its commits refuse a `.cache` path), and
#: beside its own `download/` records of a `local_dir` download; a rename from there into the folder
#: stays on one file system, so it stays atomic.
BOOKKEEPING_DIR = ".cache/huggingface/xorweights"

#: Inside `BOOKKEEPING_DIR`: the outputs of a staged run (a native encode, a delta recovery) wait
#: there until every one is done and checked; then they are renamed into place together.
STAGING_DIR = TEMP_PREFIX + "staging"


def is_bookkeeping(name: str) -> bool:
    """Whether a relative name lies in a folder's `.cache/huggingface/` (ours, or huggingface_hub's)."""
    return name.replace("\\", "/").casefold().startswith(".cache/huggingface/")


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
    """A file written to `.xorweights-<name>.<random>.part` in `temp_dir` (default: the target's
    folder; it must be on the target's file system).

    Nothing appears under the final name until `commit()`, which flushes, fsyncs and renames.
    Leaving the `with` block without `commit()` (an error, a failed verification) removes the
    temporary file, so a partial output never sits under a final name; a close that fails then
    (its flush hits a full disk) neither leaves the temporary behind nor hides the first error.

    Failures of its own steps are `IOFailure`s naming the final path: `creating a file in DIR`,
    `writing PATH` (`write()`, and the flush, fsync and close of `commit()`), `saving PATH` (the
    rename). Writes straight to `file` raise what the OS raised; wrap them (or use `write()`).

    Example:
        >>> with AtomicFile(out / "model.bin") as f:
        ...     f.write(data)
        ...     f.commit()
    """

    def __init__(
        self, final: os.PathLike[str] | str, *, temp_dir: os.PathLike[str] | str | None = None
    ) -> None:
        self.final = Path(final)
        import tempfile

        where = self.final.parent if temp_dir is None else Path(temp_dir)
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                prefix=f"{TEMP_PREFIX}{self.final.name}.", suffix=TEMP_SUFFIX, dir=where
            )
        except OSError as e:
            raise _failure("creating a file in", where, e) from e
        self.temp = Path(tmp)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.committed = False

    def write(self, data: Any) -> int:
        """Write `data`; a failure is an `IOFailure` naming the final path."""
        try:
            return self.file.write(data)
        except OSError as e:
            raise _failure("writing", self.final, e) from e

    def commit(self, *, durable: bool = True) -> Path:
        """Make the written bytes visible under the final name.

        Args:
            durable: fsync the file before the rename and its folder after, so that a power
                failure cannot leave a final name over missing data.

        Raises:
            `IOFailure`: the flush, fsync, close or rename failed (a full disk: `writing PATH: No
                space left on device`); the temporary is removed and nothing is under the name.
        """
        try:
            self.file.flush()
            if durable:
                os.fsync(self.file.fileno())
            self.file.close()
        except OSError as e:
            self.discard()
            raise _failure("writing", self.final, e) from e
        try:
            os.chmod(self.temp, 0o666 & ~_umask())
            os.replace(self.temp, self.final)
        except OSError as e:
            self.discard()
            raise _failure("saving", self.final, e) from e
        self.committed = True
        if durable:
            fsync_dir(self.final.parent)
        logger.debug("committed %s", self.final)
        return self.final

    def discard(self) -> None:
        """Drop the temporary file (idempotent; never raises: it runs while an error is raised)."""
        if not self.file.closed:
            try:
                self.file.close()  # flushes what is buffered: may fail on a full disk
            except Exception as e:  # noqa: BLE001 (the data is dropped anyway; the first error counts)
                logger.debug("closing %s failed (%s); removing it anyway", self.temp, e)
                raw = getattr(self.file, "raw", None)
                try:
                    if raw is not None and not raw.closed:
                        raw.close()  # the descriptor, without the flush that failed
                except OSError:
                    pass
        if not self.committed:
            try:
                self.temp.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                logger.warning("could not remove the temporary %s: %s", self.temp, e)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def _failure(op: str, path: Path, e: OSError) -> OSError:
    """`e` as an `IOFailure` naming `op` and `path` (one already typed is kept as it is)."""
    return e if isinstance(e, XorWeightsError) else IOFailure(op, path, e)


class HashingWriter:
    """Forwards writes to a file and hashes the bytes as they pass, so nothing is read back."""

    def __init__(self, sink: BinaryIO, algorithms: Sequence[str]) -> None:
        self.sink = sink
        self.hashers = {a: new_hasher(a) for a in algorithms}
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
