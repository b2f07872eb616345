"""Hashing, in one place: a hasher by algorithm name, the digests of a file, a byte range or a
stream (a tensor's bytes), and many such jobs in parallel under one byte progress bar.

Algorithms are hashlib's names (`md5`, `sha1`, `sha256`, ...), `crc32` (`Crc32`, what the output
folder records) and `git-sha1` (a git blob id: sha1 over `blob <size>\\0` and the bytes, what the
Hub lists for files not in LFS). Every loop here checks for cancellation (`_cancel`) before each
chunk; hashlib releases the GIL on large buffers, so jobs on several threads hash in parallel.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from . import _cancel
from ._progress import byte_bar
from ._sizing import CHUNK_SIZE
from .errors import FormatError

try:  # the same CRC-32 as zlib's, about 7x faster
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - python-isal is optional
    from zlib import crc32 as _crc32

K = TypeVar("K")
T = TypeVar("T")

#: The CRC-32 of `Crc32`.
CRC32 = "crc32"
#: A git blob id: sha1 begun with git's blob header (`git_blob_hasher`).
GIT_BLOB = "git-sha1"

#: A job of `hash_many`: called with a progress callback taking the bytes hashed so far.
Job = Callable[[Callable[[int], None]], T]


class Crc32:
    """hashlib-like CRC-32 (big-endian hex, as `crc32` tools print it)."""

    name = CRC32

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = _crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def git_blob_hasher(size: int) -> Any:
    """sha1 begun with git's blob header: fed the `size` bytes of a file, its hexdigest is the file's
    git blob id (what the Hub lists for files not in LFS)."""
    return hashlib.sha1(b"blob %d\0" % size)


def new_hasher(algorithm: str, size: int | None = None) -> Any:
    """A hashlib-like hasher for `algorithm`; `git-sha1` needs the `size` of what it will be fed.

    Raises:
        `ValueError`: an unknown algorithm (hashlib's), or `git-sha1` without a size.
    """
    if algorithm == CRC32:
        return Crc32()
    if algorithm == GIT_BLOB:
        if size is None:
            raise ValueError("a git blob id needs the size of the bytes hashed")
        return git_blob_hasher(size)
    if algorithm == "blake3":
        import blake3

        return blake3.blake3()
    return hashlib.new(algorithm)


def feed(
    stream: Any,
    hashers: Iterable[Any],
    length: int | None = None,
    *,
    buffer: Any = None,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Read `stream` (anything with `readinto`) to its end, or its next `length` bytes, into every
    hasher of `hashers`, chunk by chunk (into `buffer` if given); returns the bytes read, fewer
    than `length` when the stream ends first. `on_progress` gets each chunk's byte count.

    Raises:
        `Cancelled`: the run is being stopped (checked before each chunk).
    """
    hashers = tuple(hashers)
    if buffer is None:
        buffer = bytearray(chunk_size if length is None else min(chunk_size, length))
    view = memoryview(buffer).cast("B")
    done = 0
    while length is None or done < length:
        _cancel.check()
        part = view if length is None else view[: min(len(view), length - done)]
        n = stream.readinto(part)
        if not n:
            break
        for h in hashers:
            h.update(part[:n])
        done += n
        if on_progress is not None:
            on_progress(n)
    return done


def hash_stream(
    stream: Any,
    algorithms: Iterable[str],
    *,
    size: int | None = None,
    buffer: Any = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, str]:
    """Digests of what is left of `stream` (e.g. a tensor's reader), all algorithms at once; `size`
    is needed for `git-sha1` only."""
    hs = {a: new_hasher(a, size) for a in algorithms}
    feed(stream, hs.values(), buffer=buffer, on_progress=on_progress)
    return {a: h.hexdigest() for a, h in hs.items()}


def hash_file(
    path: os.PathLike[str] | str,
    algorithms: Iterable[str],
    *,
    start: int = 0,
    length: int | None = None,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, str]:
    """Digests of a file, or of its `length` bytes from `start`, all algorithms in one read.

    Raises:
        `OSError`: the file cannot be read.
        `FormatError`: the file ends inside the range.
        `Cancelled`: the run is being stopped.
    """
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        want = max(0, size - start) if length is None else length
        if start:
            f.seek(start)
        hs = {a: new_hasher(a, want) for a in algorithms}
        buffer = bytearray(max(1, min(chunk_size, want)))
        got = feed(f, hs.values(), length, buffer=buffer, on_progress=on_progress)
    if length is not None and got < length:
        raise FormatError(
            f"{path}: ends at byte {start + got}, inside the {length} bytes hashed from byte {start}",
            path=path,
        )
    return {a: h.hexdigest() for a, h in hs.items()}


def hash_many(
    work: Iterable[tuple[K, Job[T], int]],
    *,
    jobs: int,
    progress: bool,
    desc: str,
) -> Iterator[tuple[K, T]]:
    """Run `(key, job, size)` items on up to `jobs` threads, the largest first, under one byte
    progress bar `desc` of the sizes' total; yields `(key, result)` in the order given.

    Each job is called with a progress callback taking byte counts, which also raises `Cancelled`
    once the run is being stopped. The first job to fail stops the others (queued ones are
    dropped, running ones stop at their next chunk) and its error is raised as the job raised it;
    so does an interrupt, or a caller leaving the loop early.
    """
    items = list(work)
    if not items:
        return
    with byte_bar(sum(size for _, _, size in items), desc, enabled=progress) as bar:

        def update(n: int) -> None:
            _cancel.check()
            bar.update(n)

        workers = max(1, min(jobs, len(items)))
        largest_first = sorted(range(len(items)), key=lambda i: -items[i][2])
        with ThreadPoolExecutor(workers, thread_name_prefix="xorweights-hash") as pool, _cancel.guard(pool):
            submitted = {i: pool.submit(items[i][1], update) for i in largest_first}
            futures = [submitted[i] for i in range(len(items))]
            pending = set(futures)
            for (key, _, _), fut in zip(items, futures, strict=True):
                while not fut.done():
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    _raise_failure(done)
                yield key, fut.result()


def _raise_failure(done: Iterable[Future[Any]]) -> None:
    """Raise the error of a job among `done` that failed."""
    for fut in done:
        error = None if fut.cancelled() else fut.exception()
        if error is not None:
            try:
                raise error
            finally:
                del error


def hash_files(
    paths: Mapping[K, os.PathLike[str] | str],
    algorithms: Sequence[str],
    *,
    jobs: int,
    progress: bool,
    desc: str,
) -> Iterator[tuple[K, dict[str, str]]]:
    """Digests of several files, `jobs` at once, under one byte progress bar; yields in order."""
    work = [
        (key, lambda update, p=path: hash_file(p, algorithms, on_progress=update), os.stat(path).st_size)
        for key, path in paths.items()
    ]
    yield from hash_many(work, jobs=jobs, progress=progress, desc=desc)
