"""One strict gzip (RFC 1952) reader for both backends, decompressing in a thread of its own.

zlib's `decompressobj(wbits=31)` reads a member whole: its header (checking the reserved flag bits
and the header CRC, FHCRC), deflate data and trailer (CRC-32 and length). Members follow one
another, with zero bytes allowed between and after them (padding). python-isal's
`IgzipDecompressor` (`DECOMP_GZIP`, about twice as fast, which computes the CRC-32 while it
inflates) does the same, except that ISA-L ignores reserved flag bits and misreads a header
(FEXTRA, FHCRC, FNAME with FCOMMENT) given to it in more than one piece. So it is handed each
member's first 128 KiB (or the rest of the file) at once, and zlib reads the member instead when
ISA-L makes nothing of them (no output, no end: a longer header, a damaged one), when it refuses
them, or when reserved flag bits are set. Both backends thus accept and refuse the same streams,
with the same words: `gzip.BadGzipFile` for a member not starting with `1f 8b 08`, reserved flag
bits, a wrong header CRC, a wrong CRC-32 or length in a trailer; `EOFError` for a stream ending
inside a member; the library's own error for corrupt deflate data.

`GzipReader` inflates ahead in a thread of its own, started by the first `readinto`, into a few
blocks of at most `BLOCK` bytes (memory stays bounded whatever the file); `readinto` copies them
into the caller's buffer, the one copy of the inflated bytes (python-isal inflates straight into
each block; zlib's `decompress` joins the pieces it inflated into, one copy more). The thread holds
no reference to the reader: closing the reader, or dropping it (garbage collection), stops the
thread at once (it is woken even when blocked on a full hand-off) and closes the file.
"""

from __future__ import annotations

import collections
import gzip
import io
import logging
import os
import threading
import weakref
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .._tracebacks import detached
from ..errors import FormatError, InputError

#: gzip member header: ID1 ID2 CM=deflate. A legacy payload starting with these is gzip.
GZIP_MAGIC = b"\x1f\x8b\x08"

#: gzip decompressor: `auto` (python-isal when installed, else zlib), `isal` or `zlib`.
ENV_GZIP_BACKEND = "XORWEIGHTS_GZIP_BACKEND"

GZIP_BACKENDS = ("auto", "isal", "zlib")

logger = logging.getLogger(__name__)

#: Bytes read from the file, and at most inflated, per step.
BLOCK = 4 << 20
#: Inflated blocks kept ready ahead of the reader.
DEPTH = 3
#: The smallest input handed to zlib after a step that stopped at its output limit (see `_inflate_zlib`).
_MIN_FEED = 64 << 10
#: What ISA-L is handed at once at the start of a member: its whole header, unless that is longer.
_HEAD = 128 << 10
#: Flag bits RFC 1952 reserves (ISA-L does not check them).
_RESERVED = 0xE0


class _Stopped(Exception):
    """The reader was closed: the inflating thread stops where it is."""


class _Source:
    """Reads of the compressed file, a block at a time, with what a member left over given back."""

    def __init__(self, raw: BinaryIO, block: int, stop: threading.Event | None = None) -> None:
        self.raw, self.block, self.stop = raw, block, stop
        self.view: memoryview | None = None
        """Where the file is read into: one buffer, reused (no fresh pages to fault in per block)."""
        self.pending: bytes | bytearray | memoryview = b""
        """Bytes given back, to be taken before the file is read again."""
        self.consumed = 0
        """Bytes of the file taken and not given back (where the next member starts, for messages)."""

    def _read(self) -> memoryview:
        """The next block of the file, valid until the next read (empty at the end)."""
        if self.stop is not None and self.stop.is_set():
            raise _Stopped
        if self.view is None:
            self.view = memoryview(bytearray(self.block))
        return self.view[: self.raw.readinto(self.view)]  # type: ignore[attr-defined]

    def release(self) -> None:
        """Drop the buffers (the end of the file, or a failure)."""
        self.view, self.pending = None, b""

    def take(self, least: int = 1) -> bytes | bytearray | memoryview:
        """The bytes given back, or else the next block of the file; at least `least` bytes unless the
        file ends first (empty at its end). Valid until the next read."""
        out, self.pending = self.pending, b""
        if not out:
            out = self._read()
        if len(out) < least:
            joined = bytearray(out)
            while len(joined) < least and (more := self._read()):
                joined += more
            out = joined
        self.consumed += len(out)
        return out

    def give_back(self, data: bytes | bytearray | memoryview) -> None:
        """Return the end of what `take` gave that a member did not use."""
        self.pending = data
        self.consumed -= len(data)

    def peek(self, n: int) -> bytes:
        """The next `n` bytes (fewer at the end of the file), left to be taken."""
        data = self.take(n)
        self.give_back(data)
        return bytes(data[:n])

    def only_padding_left(self) -> bool:
        """Skip zero bytes; True when the file ends after them."""
        while data := self.take():
            if data[0]:
                self.give_back(data)
                return False
            zeros = len(data) - len(bytes(data).lstrip(b"\0"))
            if zeros < len(data):
                self.give_back(data[zeros:])
                return False
        return True


def _inflate_isal(src: _Source, piece: int) -> Generator[bytes, None, bool | None]:
    """One member with python-isal: True at its end, False if the file ends first, None (nothing
    taken) when ISA-L makes nothing of its first `_HEAD` bytes and zlib must read it.

    `IgzipDecompressor` allocates each output block once, at its full size, and inflates into it in
    one step; it keeps unconsumed input itself (no tail copied back on every step) and computes the
    CRC-32 while it inflates.
    """
    from isal import igzip_lib

    d = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP, hist_bits=15)
    first = src.take(_HEAD)
    try:
        out = d.decompress(first, piece)
    except igzip_lib.IsalError:
        out = b""
    if not out and not d.eof:
        src.give_back(first)
        return None
    while True:
        if out:
            yield out
        if d.eof:
            src.give_back(d.unused_data)  # all input after the trailer
            return True
        data = src.take() if d.needs_input else b""
        ended = d.needs_input and not data  # the file ended: only output ISA-L still holds may come
        out = d.decompress(data, piece)
        if ended and not out:
            return False


def _inflate_zlib(src: _Source, piece: int) -> Generator[bytes, None, bool]:
    """One member with zlib: True at its end, False if the file ends first.

    zlib copies the input it did not consume (`unconsumed_tail`) on every step that stops at its
    output limit. So it is handed slices of the block read: all of it at first, and after a step
    that stopped at the limit, about twice what that step consumed (so the copied tail stays about
    as long as the input consumed, and inflating highly compressible data is not quadratic).
    """
    d = zlib.decompressobj(31)
    data, fed = memoryview(b""), 0  # the block read, and how much of it zlib has taken
    limit = src.block
    while not d.eof:
        if fed == len(data):
            data, fed = memoryview(src.take()), 0
        if not data:  # the file ended: only output zlib still holds may come
            out = d.decompress(b"", piece)
            if not out:
                return False
        else:
            step = data[fed : fed + limit]
            out = d.decompress(step, piece)
            left = len(d.unconsumed_tail)
            used = len(step) - left
            fed += len(step) if d.eof else used
            limit = max(_MIN_FEED, 2 * used) if left else src.block
        if out:
            yield out
    src.give_back(data[fed - len(d.unused_data) :])  # what follows the trailer, taken or not
    return True


def _framing_error(e: Exception, at: int, head: bytes) -> Exception:
    """What zlib (or ISA-L) reports of a member's framing, in the same words for both; `e` itself
    for corrupt deflate data. `head`: the member's first bytes."""
    said = str(e).lower()
    where = f"in the member at byte {at}"
    if "incorrect header check" in said:
        return gzip.BadGzipFile(f"not a gzip member at byte {at} (starts with {head[:2].hex()})")
    if "unknown compression method" in said:
        return gzip.BadGzipFile(f"unknown compression method {head[2]} {where}")
    if "unknown header flags set" in said:
        return gzip.BadGzipFile(f"reserved header flag bits set ({head[3]:#04x}) {where}")
    if "header crc mismatch" in said:
        return gzip.BadGzipFile(f"header CRC mismatch {where}")
    # zlib tells a wrong CRC-32 (data check) from a wrong length; ISA-L reports either as a checksum
    if any(s in said for s in ("incorrect data check", "incorrect length check", "incorrect checksum")):
        return gzip.BadGzipFile(f"CRC-32 or length mismatch in the trailer of the member at byte {at}")
    return e


def _member(src: _Source, backend: str, piece: int) -> Iterator[bytes]:
    """Inflate one member in pieces of at most `piece` bytes, checking its header and trailer."""
    at, head = src.consumed, src.peek(4)
    try:
        ended = None
        if backend == "isal" and len(head) == 4 and not head[3] & _RESERVED:
            ended = yield from _inflate_isal(src, piece)
        if ended is None:
            ended = yield from _inflate_zlib(src, piece)
    except GZIP_ERRORS as e:
        error = _framing_error(e, at, head)
        if error is e:
            raise
        raise error from None
    if not ended:
        raise EOFError(f"gzip stream ends at byte {src.consumed}, inside the member starting at byte {at}")


def inflate(
    raw: BinaryIO, backend: str, block: int = BLOCK, *, stop: threading.Event | None = None
) -> Iterator[bytes]:
    """The uncompressed bytes of a gzip file, member after member, in pieces of at most `block`.

    The file is read `block` bytes at a time. Once `stop` is set, the next read raises `_Stopped`.
    """
    src = _Source(raw, block, stop)
    try:
        yield from _member(src, backend, block)
        while not src.only_padding_left():
            yield from _member(src, backend, block)
    finally:
        src.release()  # an error raised here may be kept, with this frame: not the buffer


_END = object()
"""Handed over after the last piece."""


class _Channel:
    """The bounded hand-off from the inflating thread to the reader, and how to stop that thread.

    One lock and condition serve both sides: the thread waits only when `depth` pieces are ready,
    the reader only when none is, so never both at once. `close` wakes whichever waits.
    """

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.items: collections.deque[Any] = collections.deque()
        self.cond = threading.Condition(threading.Lock())
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.orphaned = False
        """Closed from within the inflating thread (garbage collection ran there): it closes the file."""
        self.done = False
        """The inflating thread has finished with the file."""

    def put(self, item: Any, *, last: bool = False) -> bool:
        """Hand over `item`, waiting for room (not for the `last` one); False once closed."""
        with self.cond:
            while not last and len(self.items) >= self.depth and not self.stop.is_set():
                self.cond.wait()
            if self.stop.is_set():
                return False
            self.items.append(item)
            self.cond.notify()
            return True

    def get(self) -> Any:
        with self.cond:
            while not self.items:
                self.cond.wait()
            item = self.items.popleft()
            self.cond.notify()
            return item

    def start(self, raw: BinaryIO, backend: str, block: int) -> None:
        with self.cond:
            if self.thread is None and not self.stop.is_set():
                thread = threading.Thread(
                    target=_produce, args=(raw, backend, block, self), name="xorweights-gunzip", daemon=True
                )
                thread.start()
                self.thread = thread

    def close(self) -> threading.Thread | None:
        """Stop the thread (it drops what it was making) and wake it; returns it, if it was started."""
        with self.cond:
            self.stop.set()
            self.items.clear()
            self.cond.notify_all()
            return self.thread


def _produce(raw: BinaryIO, backend: str, block: int, channel: _Channel) -> None:
    """The inflating thread. It must not refer to the reader, so that the reader can be collected."""
    try:
        for piece in inflate(raw, backend, block, stop=channel.stop):
            if not channel.put(piece):
                return
        channel.put(_END, last=True)
    except _Stopped:
        pass
    except BaseException as e:  # noqa: BLE001 (handed to the reading thread)
        channel.put(e, last=True)
    finally:
        channel.done = True
        if channel.orphaned:
            raw.close()


def _shutdown(channel: _Channel, raw: BinaryIO) -> None:
    """Stop the inflating thread and close the file (`close`, or the reader's finalizer)."""
    thread = channel.close()
    if thread is threading.current_thread():  # collected in the inflating thread, maybe inside a read
        if not channel.done:
            channel.orphaned = True  # the thread closes the file as it ends
            return
    elif thread is not None:
        thread.join()
    raw.close()


class GzipReader:
    """A gzip file's uncompressed bytes (`readinto`), inflated ahead in a thread of its own.

    The thread starts with the first `readinto`. Closing the reader, or dropping it unclosed
    (garbage collection, or the interpreter's exit), stops the thread and closes `raw`.
    """

    def __init__(self, raw: BinaryIO, backend: str, *, block: int = BLOCK, depth: int = DEPTH) -> None:
        self.raw = raw
        self._backend, self._block = backend, block
        self._channel = _Channel(depth)
        self._piece = memoryview(b"")
        self._end: BaseException | None = None
        self._ended = False
        self._close = weakref.finalize(self, _shutdown, self._channel, raw)

    @property
    def closed(self) -> bool:
        return not self._close.alive

    def readinto(self, b: Any) -> int:
        while not self._piece:
            if not self._close.alive:
                raise ValueError("I/O operation on closed gzip reader")
            if self._end is not None:
                raise detached(self._end)
            if self._ended:
                return 0
            if self._channel.thread is None:
                self._channel.start(self.raw, self._backend, self._block)
            item = self._channel.get()
            if item is _END:
                self._ended = True
            elif isinstance(item, BaseException):
                # Later reads raise a copy: the reader keeps no error whose traceback holds it
                # (through the frames of its callers), and this frame keeps no error at all.
                self._end = detached(item)
                try:
                    raise item
                finally:
                    del item
            else:
                self._piece = memoryview(item)
        view = b if isinstance(b, memoryview) and b.format == "B" else memoryview(b).cast("B")
        n = min(len(view), len(self._piece))
        view[:n] = self._piece[:n]
        self._piece = self._piece[n:] if n < len(self._piece) else memoryview(b"")
        return n

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        """Stop the thread (at once, even when it waits for the reader to take a block) and close `raw`."""
        self._piece = memoryview(b"")
        self._close()

    def __enter__(self) -> GzipReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- payload files ---------------------------------------------------------------------------


def gzip_backend(preferred: str | None = None) -> str:
    """The gzip decompressor to use: python-isal (about twice as fast) when installed, else zlib.

    `preferred` (or the `XORWEIGHTS_GZIP_BACKEND` environment variable) may force `isal` or `zlib`.

    Raises:
        `InputError`: an unknown backend, or `isal` asked for and not installed.
    """
    choice = (preferred or os.environ.get(ENV_GZIP_BACKEND) or "auto").lower()
    if choice not in GZIP_BACKENDS:
        raise InputError(f"unknown gzip backend {choice!r}; expected one of {', '.join(GZIP_BACKENDS)}")
    if choice == "zlib":
        return "zlib"
    try:
        import isal.isal_zlib  # noqa: F401
    except ImportError:
        if choice == "isal":
            raise InputError("gzip backend isal asked for, but python-isal is not installed") from None
        return "zlib"
    return "isal"


#: Errors a corrupt or truncated gzip stream raises, whichever backend reads it.
GZIP_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile)
try:
    from isal.isal_zlib import error as _isal_error

    GZIP_ERRORS += (_isal_error,)
except ImportError:  # pragma: no cover (python-isal is optional)
    pass


def open_source(
    path: Path, *, detect_gzip: bool, backend: str = "zlib", require_gzip: bool = False
) -> tuple[BinaryIO, bool]:
    """Open a payload (or fine-tuned) file; gzip streams are recognised by their magic bytes.

    Both backends read gzip through `GzipReader`: one strict RFC 1952 reader, inflating in a
    thread of its own (overlapping the XOR pass) with zlib or python-isal.

    Args:
        detect_gzip: read a file starting with `1f 8b 08` as gzip (else every file is plain).
        require_gzip: the file must be gzip.

    Returns:
        `(stream, compressed)`: the stream yields the uncompressed bytes; closing it closes the file.

    Raises:
        `FormatError`: `require_gzip` and the file does not start with the gzip magic bytes.
    """
    return open_stream(
        open(path, "rb"), path, detect_gzip=detect_gzip, backend=backend, require_gzip=require_gzip
    )


def open_stream(
    f: Any, where: Path | str, *, detect_gzip: bool, backend: str = "zlib", require_gzip: bool = False
) -> tuple[BinaryIO, bool]:
    """`open_source` of an opened stream `f` (a file, or a payload read from the Hub), which the
    returned stream owns. A stream that cannot seek back gets its first bytes replayed."""
    try:
        head = f.read(len(GZIP_MAGIC)) if detect_gzip or require_gzip else b""
        if head:
            if isinstance(f, io.IOBase):
                f.seek(0)
            else:
                f = _Replayed(head, f)
        if require_gzip:
            check_gzip_head(Path(where), head)
    except BaseException:
        f.close()
        raise
    if head != GZIP_MAGIC:
        return f, False
    return GzipReader(f, backend), True  # type: ignore[return-value]  # a reader: readinto, fileno, close


class _Replayed:
    """A stream whose first bytes were read already: `head`, then the rest of `raw`."""

    def __init__(self, head: bytes, raw: Any) -> None:
        self.head, self.raw = memoryview(head), raw

    def readinto(self, b: Any) -> int:
        if not len(self.head):
            return int(self.raw.readinto(b))
        view = memoryview(b).cast("B")
        n = min(len(view), len(self.head))
        view[:n] = self.head[:n]
        self.head = self.head[n:]
        return n

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(n if n >= 0 else 1 << 20)
        return bytes(buf[: self.readinto(buf)])

    def tell(self) -> int:
        return int(self.raw.tell()) - len(self.head)

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> _Replayed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_gzip_head(path: Path, head: bytes) -> None:
    """Refuse a payload file that must be gzip and does not start with `1f 8b 08` (`head`).

    Raises:
        `FormatError`: naming the file and what it starts with.
    """
    if head[: len(GZIP_MAGIC)] != GZIP_MAGIC:
        raise FormatError(
            f"payload {path} is not gzip (it starts with {head[: len(GZIP_MAGIC)].hex() or 'nothing'}, "
            f"not {GZIP_MAGIC.hex()}), but `payload_compression='gzip'` requires every XOR-ed payload file "
            "to be gzip",
            path=path,
        )


def gzip_writer(sink: BinaryIO, name: str, *, mtime: int) -> gzip.GzipFile:
    """A gzip stream as the legacy `--compress` writes it: level 9, the file's name in the header.

    The legacy script stamps the current time; `mtime` makes the output reproducible.
    """
    return gzip.GzipFile(filename=name, mode="wb", fileobj=sink, compresslevel=9, mtime=mtime)
