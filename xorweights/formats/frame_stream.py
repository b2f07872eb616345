"""Frame streams: a payload file's delta frames written and read a few ahead on worker threads,
in bounded memory (the frame layout is in `delta_frames`)."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError, InputChangedError
from .delta_frames import (
    STORED,
    FrameHead,
    MaskedSpans,
    compressor,
    decode_frame,
    decompressor,
    encode_frame,
    head_size,
    parse_head,
)

#: Elements per frame a writer puts at most (2^20: under 0.3% larger than whole tensors).
FRAME_ELEMENTS = 1 << 20
#: Bytes a stored frame holds at most, as writers cut them.
STORED_FRAME_BYTES = 1 << 22
#: Frames a file's reader or writer keeps in flight beyond its threads (each about 3 frames of memory).
AHEAD = 2
_local = threading.local()


def _cctx() -> Any:
    if not hasattr(_local, "cctx"):
        _local.cctx = compressor()
    return _local.cctx


def _dctx() -> Any:
    if not hasattr(_local, "dctx"):
        _local.dctx = decompressor()
    return _local.dctx


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value

    def exception(self) -> BaseException | None:
        return None  # a task run inline raised where it was submitted

    def cancel(self) -> bool:
        return False


class _SharedPool:
    """One pool of frame threads for every file read or written at once (frames are balanced
    across files, not threads per file: the last file of a run still has every core), made by the
    first user and shut down when the last leaves, so no thread outlives the work."""

    _lock = threading.Lock()
    _pool: ThreadPoolExecutor | None = None
    _users = 0

    @classmethod
    def acquire(cls, workers: int) -> ThreadPoolExecutor:
        with cls._lock:
            if cls._pool is None:
                cls._pool = ThreadPoolExecutor(workers, thread_name_prefix="frames")
            cls._users += 1
            return cls._pool

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0 and cls._pool is not None:
                pool, cls._pool = cls._pool, None  # never handed out again, even if interrupted below
                pool.shutdown(wait=True)


class _Ahead:
    """Results of tasks in the order given, run on the shared pool's threads (`workers` when it
    is made; inline with one), at most `limit` at once per file: zstd and numpy release the GIL,
    so frames use every core."""

    def __init__(self, workers: int) -> None:
        self._pool = _SharedPool.acquire(workers) if workers > 1 else None
        self._queue: deque[Any] = deque()
        self.limit = workers + AHEAD if workers > 1 else 1

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` (on a thread, or here): a future, not queued."""
        return self._pool.submit(fn, *args) if self._pool is not None else _Done(fn(*args))

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        self._queue.append(self.submit(fn, *args))

    def get(self) -> Any:
        return self._queue.popleft().result()

    def close(self) -> None:
        for fut in self._queue:
            fut.cancel()
        for fut in self._queue:  # none may run on after its reader is closed (it writes into its buffers)
            if not fut.cancelled():
                fut.exception()
        self._queue.clear()
        if self._pool is not None:
            self._pool = None
            _SharedPool.release()


@dataclass(frozen=True)
class Span:
    """A run of an output file's bytes and how a writer frames it."""

    nbytes: int
    transform: int
    width: int = 1
    dtype: str = ""
    group: bool = False
    """Planes may be grouped by the key of `dtype` (transform 3)."""


def _cuts(spans: Sequence[Span]) -> Iterator[tuple[int, Span]]:
    """Where a writer cuts frames: `(bytes, span)` in order."""
    for span in spans:
        step = STORED_FRAME_BYTES if span.transform == STORED else FRAME_ELEMENTS * span.width
        left = span.nbytes
        while left:
            n = min(step, left)
            yield n, span
            left -= n


def _encode(data: bytes, base: bytes, span: Span) -> bytes:
    return encode_frame(data, base, span.transform, span.width, span.dtype, _cctx(), group=span.group)


class _FrameStream:
    """What the frame writer and reader share: frames made on `workers` threads a few ahead
    (`_next` queues one, False at the end), handed over in order through `readinto`."""

    def __init__(self, streams: Sequence[Any], workers: int) -> None:
        self._streams = streams
        self._ahead = _Ahead(workers)
        self._ready = memoryview(b"")
        self._read = 0
        self._ended = False

    def consumed(self) -> int:
        """Bytes of the stored input read so far (the progress of a pass)."""
        return self._read

    def _next(self) -> bool:
        raise NotImplementedError

    def _produce(self) -> Any:
        """The next frame's bytes, or None after the last."""
        while not self._ended and len(self._ahead) < self._ahead.limit:
            self._ended = not self._next()
        return self._ahead.get() if len(self._ahead) else None

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        while not len(self._ready):
            frame = self._produce()
            if frame is None:
                return 0
            self._ready = memoryview(frame)
        n = min(len(view), len(self._ready))
        view[:n] = self._ready[:n]
        self._ready = self._ready[n:]
        return n

    def fileno(self) -> int:
        return int(self._streams[0].fileno())

    def close(self) -> None:
        self._ahead.close()
        for stream in self._streams:
            stream.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameWriter(_FrameStream):
    """The frames of a file, as a stream to read (`readinto`).

    Reads the output's bytes (`out_bytes`, e.g. the fine-tuned file) and its base image in step,
    encodes frames on `workers` threads, and at the end requires `out_bytes` to be exhausted and,
    when `expect_sha256` is given, to have hashed to it (a file changed since it was planned).
    """

    def __init__(
        self,
        out_bytes: Any,
        base: Any,
        spans: Sequence[Span],
        where: str,
        *,
        workers: int = 1,
        expect_sha256: str | None = None,
    ) -> None:
        super().__init__((out_bytes, base), workers)
        self.out_bytes, self.base, self.where = out_bytes, base, where
        self._cuts = _cuts(spans)
        self._hash = hashlib.sha256() if expect_sha256 is not None else None
        self._expect = expect_sha256

    def _next(self) -> bool:
        cut = next(self._cuts, None)
        if cut is None:
            self._finish()
            return False
        n, span = cut
        data = _read_or_fail(self.out_bytes, n, self.where)
        if self._hash is not None:
            self._hash.update(data)
        ref = _read_or_fail(self.base, n, f"{self.where}: base image")
        self._read += n
        self._ahead.put(_encode, data, ref if span.transform != STORED else b"", span)
        return True

    def _finish(self) -> None:
        if self.out_bytes.read(1):
            raise FormatError(f"{self.where}: longer than its header says", path=self.where)
        if self._hash is not None and self._hash.hexdigest() != self._expect:
            raise InputChangedError(self.where, self._expect or "", self._hash.hexdigest(), measure="sha256")


def write_frames(out_bytes: Any, base: Any, spans: Sequence[Span], sink: Any, *, workers: int = 1) -> int:
    """Write the frames of a file to `sink`: `out_bytes` and `base` are streams of the output
    and of its base image, `spans` cover the file in order. Returns the bytes written.

    Raises:
        `FormatError`: a stream ends before its spans do, or `out_bytes` goes on after them.
    """
    writer = FrameWriter(out_bytes, base, spans, "the output", workers=workers)
    buf = bytearray(1 << 20)
    written = 0
    try:
        while n := writer.readinto(buf):
            sink.write(memoryview(buf)[:n])
            written += n
    finally:
        writer._ahead.close()
    return written


def _decode(
    head: FrameHead, planes: list[memoryview], base: memoryview, where: str, out: np.ndarray
) -> np.ndarray:
    return decode_frame(head, planes, base, _dctx(), where, out)


class _Slot:
    """The buffers of one frame in flight (compressed planes, base bytes, output), reused."""

    def __init__(self) -> None:
        self.bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int) -> np.ndarray:
        buf = self.bufs.get(name)
        if buf is None or buf.size < n:
            buf = self.bufs[name] = np.empty(n, np.uint8)
        return buf[:n]


class FrameReader(_FrameStream):
    """The output bytes of a compressed payload file, frame by frame: `readinto` like a file.

    `payload` is the compressed file's stream, `base` the base image of the output (read in
    step: stored frames skip its bytes). Each `readinto` reads the frames its buffer holds and
    has them decoded on `workers` threads straight into the buffer, a few at a time (memory: the
    compressed planes and base bytes of those few); a frame that does not fit is decoded aside
    and handed over across calls. `tensors` (`(offset, name)` in offset order) lets errors name
    the tensor of a bad frame; `limit` is the output's size: frames that would make more are
    refused before being read; a stored frame over `masked` (tensors masked by a base tensor) is
    refused before its planes are read.
    """

    def __init__(
        self,
        payload: Any,
        base: Any,
        where: str,
        *,
        workers: int = 1,
        tensors: Sequence[tuple[int, str]] = (),
        limit: int | None = None,
        masked: MaskedSpans | None = None,
    ) -> None:
        super().__init__((payload, base), workers)
        self.payload, self.base, self.where, self.limit = payload, base, where, limit
        self.masked = masked
        self._frames = 0
        self._offset = 0
        self._offsets = [t[0] for t in tensors]
        self._names = [t[1] for t in tensors]
        self._free: list[_Slot] = []
        self._spilled: _Slot | None = None  # holds `_ready`, the rest of a frame decoded aside

    def close(self) -> None:
        """Stop the threads, close the streams and drop the frame buffers."""
        super().close()
        self._free.clear()
        self._spilled = None
        self._ready = memoryview(b"")

    def _frame_name(self) -> str:
        where = f"{self.where}: frame {self._frames}"
        i = bisect.bisect_right(self._offsets, self._offset) - 1
        if self.limit is not None and self._offset >= self.limit:
            where += " (past the output's end)"
        elif self._offsets:
            where += f" (tensor {self._names[i]})" if i >= 0 else " (header)"
        return where

    def _take(self, buf: np.ndarray, where: str) -> memoryview:
        view = memoryview(buf)  # type: ignore[arg-type]
        _fill(self.payload, view, where)
        self._read += len(view)
        return view

    def _read_frame(self) -> tuple[FrameHead, list[memoryview], memoryview, str, _Slot] | None:
        """The next frame's head, planes and base bytes (in a slot's buffers); None at the end."""
        first = self.payload.read(2)
        if not first:
            return None
        self._read += len(first)
        where = self._frame_name()
        rest = _read_or_fail(self.payload, head_size(first) - len(first), where)
        self._read += len(rest)
        head = parse_head(first + rest, where)
        if not head.count:  # else a file of tiny heads would make the reader work per frame, going nowhere
            raise FormatError(
                f"{where}: a frame of no bytes, which no writer makes; the payload file is damaged or "
                "altered: get it again from its publisher",
                path=where,
            )
        if self.limit is not None and self._offset + head.out_size > self.limit:
            raise FormatError(f"{where}: makes more than the output's {self.limit} bytes", path=where)
        if head.transform == STORED and self.masked is not None:
            tensor = self.masked.hit(self._offset, self._offset + head.out_size)
            if tensor is not None:
                raise FormatError(
                    f"{where}: a stored frame (fine-tuned bytes in the clear) in tensor {tensor}, which "
                    "the manifest masks by a base tensor; the payload is not what its manifest says "
                    "(altered?): get it again from its publisher",
                    path=where,
                )
        slot = self._free.pop() if self._free else _Slot()
        blob = self._take(slot.get("planes", sum(head.planes)), where)
        cuts = [0, *itertools.accumulate(head.planes)]
        planes = [blob[i:j] for i, j in itertools.pairwise(cuts)]
        ref = memoryview(slot.get("base", head.out_size))  # type: ignore[arg-type]
        _fill(self.base, ref, f"{where}: base image")
        self._frames += 1
        self._offset += head.out_size
        return head, planes, ref if head.transform != STORED else memoryview(b""), where, slot

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        pos = min(len(view), len(self._ready))
        view[:pos] = self._ready[:pos]
        self._ready = self._ready[pos:]
        if len(self._ready):
            return pos
        if self._spilled is not None:
            self._free.append(self._spilled)
            self._spilled = None
        pending: deque[tuple[Any, _Slot, np.ndarray, int]] = deque()
        try:
            while pos < len(view) and not self._ended:
                frame = self._read_frame()
                if frame is None:
                    self._ended = True
                    break
                head, planes, base, where, slot = frame
                n = head.out_size
                spill = pos + n > len(view)
                out = slot.get("out", n) if spill else np.frombuffer(view[pos : pos + n], np.uint8)
                pending.append((self._ahead.submit(_decode, head, planes, base, where, out), slot, out, pos))
                pos = len(view) if spill else pos + n
                while len(pending) >= self._ahead.limit:
                    self._settle(pending.popleft(), view)
            while pending:
                self._settle(pending.popleft(), view)
        except BaseException:
            # No thread may still write into `b` once this returns; and an earlier frame's
            # error is the one to report (a damaged plane also misplaces the next frame's head).
            # Errors are taken from the futures, not raised through this frame (which would hold
            # them, and the buffers their tracebacks reach, in a reference cycle).
            earlier = [x for x in (job[0].exception() for job in pending) if isinstance(x, FormatError)]
            pending.clear()
            if not earlier:
                raise
            error = earlier.pop(0)
            del earlier
            try:
                raise error from None
            finally:
                del error
        return pos

    def _settle(self, job: tuple[Any, _Slot, np.ndarray, int], view: memoryview) -> None:
        """Wait for a frame: copy it in where it was not decoded in place; free or keep its slot."""
        fut, slot, out, at = job
        del job
        error = fut.exception()
        if error is not None:
            del fut  # holds the error: no cycle through this frame
            try:
                raise error
            finally:
                del error
        frame = fut.result()
        n = len(frame)
        if at + n <= len(view):
            if frame.ctypes.data != out.ctypes.data:  # a stored frame: its plane is the output
                view[at : at + n] = memoryview(frame)
            self._free.append(slot)
            return
        k = len(view) - at
        view[at:] = memoryview(frame)[:k]
        self._ready = memoryview(frame)[k:]
        self._spilled = slot


def _fill(stream: Any, view: memoryview, where: str) -> None:
    """Fill `view` from `stream`, or raise a `FormatError` naming `where`."""
    got, n = 0, len(view)
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            raise FormatError(f"{where}: truncated ({got} of {n} bytes)", path=where)
        got += k


def _read_or_fail(stream: Any, n: int, where: str) -> bytearray:
    """Exactly `n` bytes (streams may return fewer per read), or a `FormatError` naming `where`.
    Read into one new buffer (`readinto`), which the caller may hand to another thread."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            raise FormatError(f"{where}: truncated ({got} of {n} bytes)", path=where)
        got += k
    return buf
