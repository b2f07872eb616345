"""One strict RFC 1952 reader for both gzip backends, decompressing in a thread of its own.

The member framing (header, trailer, members one after another) is parsed here, in one place;
a backend only inflates the raw deflate data and computes CRC-32 (`zlib`, or python-isal's
`igzip_lib`, about twice as fast, which computes the CRC-32 while it inflates). So both backends
accept exactly the same streams and refuse exactly the same ones, which their own gzip readers do
not: the standard library skips a header CRC (FHCRC) without checking it and accepts reserved flag
bits, and python-isal's threaded reader fails on a header (a long FNAME or FCOMMENT) longer than
its buffer.

Accepted: one or more members, each with any of FTEXT, FHCRC, FEXTRA, FNAME and FCOMMENT, of any
length; zero bytes after a member (padding). Refused, with `gzip.BadGzipFile`: a member not
starting with `1f 8b 08`, reserved flag bits set, a wrong header CRC, a wrong CRC-32 or length in
a trailer, other bytes after a member. Refused with `EOFError`: a stream that ends inside a member.

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
import struct
import threading
import weakref
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .._tracebacks import detached
from ..constants import ENV_GZIP_BACKEND, GZIP_BACKENDS, GZIP_MAGIC
from ..errors import FormatError, InputError

logger = logging.getLogger(__name__)

#: Bytes read from the file, and at most inflated, per step.
BLOCK = 4 << 20
#: Inflated blocks kept ready ahead of the reader.
DEPTH = 3
#: The smallest input handed to zlib after a step that stopped at its output limit (see `_inflate_zlib`).
_MIN_FEED = 64 << 10

_FHCRC, _FEXTRA, _FNAME, _FCOMMENT, _RESERVED = 0x02, 0x04, 0x08, 0x10, 0xE0
_MAGIC = b"\x1f\x8b"
_DEFLATE = 8


def library(backend: str) -> Any:
    """The module that inflates and checksums for `backend` (`isal` or `zlib`)."""
    if backend == "isal":
        from isal import isal_zlib

        return isal_zlib
    return zlib


class _Stopped(Exception):
    """The reader was closed: the inflating thread stops where it is."""


class _Source:
    """Buffered reads of the compressed file."""

    def __init__(self, raw: BinaryIO, block: int, stop: threading.Event | None = None) -> None:
        self.raw, self.block, self.stop = raw, block, stop
        self.view: memoryview | None = None
        """Where the file is read into: one buffer, reused (no fresh pages to fault in per block)."""
        self.buf, self.pos = b"", 0
        self.consumed = 0
        """Bytes of the file handed out so far (for messages)."""

    def _read(self) -> memoryview:
        """The next block of the file, valid until the next read (empty at the end)."""
        if self.stop is not None and self.stop.is_set():
            raise _Stopped
        if self.view is None:
            self.view = memoryview(bytearray(self.block))
        return self.view[: self.raw.readinto(self.view)]  # type: ignore[attr-defined]

    def release(self) -> None:
        """Drop the buffers (the end of the file, or a failure)."""
        self.view, self.buf, self.pos = None, b"", 0

    def _fill(self) -> bool:
        data = self._read()
        if not data:
            return False
        self.buf, self.pos = self.buf[self.pos :] + data, 0
        return True

    def take(self, n: int, what: str) -> bytes:
        """Exactly `n` bytes; `EOFError` naming `what` if the file ends first."""
        while len(self.buf) - self.pos < n:
            if not self._fill():
                at = self.consumed + len(self.buf) - self.pos
                raise EOFError(f"gzip stream ends inside {what} at byte {at}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        self.consumed += n
        return out

    def skip_string(self, crc: int, crc32: Any, what: str) -> int:
        """Skip a zero-terminated field of any length; returns the CRC updated with its bytes."""
        while True:
            end = self.buf.find(b"\0", self.pos)
            if end >= 0:
                crc = crc32(self.buf[self.pos : end + 1], crc)
                self.consumed += end + 1 - self.pos
                self.pos = end + 1
                return int(crc)
            crc = crc32(self.buf[self.pos :], crc)
            self.consumed += len(self.buf) - self.pos
            self.buf, self.pos = b"", 0
            if not self._fill():
                raise EOFError(f"gzip stream ends inside the {what} field at byte {self.consumed}")

    def chunk(self) -> bytes | memoryview:
        """The buffered bytes, or the next block of the file (empty at its end; valid until the next read)."""
        if self.pos < len(self.buf):
            out = self.buf[self.pos :]
        else:
            out = self._read()
        self.buf, self.pos = b"", 0
        self.consumed += len(out)
        return out

    def give_back(self, data: bytes) -> None:
        """Return bytes taken by `chunk` but not used (what follows a member's deflate data)."""
        self.buf, self.pos = data + self.buf[self.pos :], 0
        self.consumed -= len(data)

    def only_padding_left(self) -> bool:
        """Skip zero bytes; True when the file ends after them."""
        while True:
            rest = self.buf[self.pos :].lstrip(b"\0")
            self.consumed += len(self.buf) - self.pos - len(rest)
            self.buf, self.pos = rest, 0
            if rest:
                return False
            if not self._fill():
                return True


def _read_header(src: _Source, crc32: Any) -> None:
    """Parse and check one member header (RFC 1952, 2.3)."""
    at = src.consumed
    magic = src.take(2, "a member header")
    if magic != _MAGIC:
        raise gzip.BadGzipFile(f"not a gzip member at byte {at} (starts with {magic.hex()})")
    fixed = magic + src.take(8, "a member header")
    if fixed[2] != _DEFLATE:
        raise gzip.BadGzipFile(f"unknown compression method {fixed[2]} in the member at byte {at}")
    flags = fixed[3]
    if flags & _RESERVED:
        raise gzip.BadGzipFile(f"reserved header flag bits set ({flags:#04x}) in the member at byte {at}")
    crc = crc32(fixed)
    if flags & _FEXTRA:
        xlen = src.take(2, "the FEXTRA length")
        crc = crc32(src.take(struct.unpack("<H", xlen)[0], "the FEXTRA field"), crc32(xlen, crc))
    if flags & _FNAME:
        crc = src.skip_string(crc, crc32, "FNAME")
    if flags & _FCOMMENT:
        crc = src.skip_string(crc, crc32, "FCOMMENT")
    if flags & _FHCRC:
        (stored,) = struct.unpack("<H", src.take(2, "the header CRC"))
        if stored != crc & 0xFFFF:
            raise gzip.BadGzipFile(
                f"header CRC mismatch in the member at byte {at} "
                f"(stored {stored:04x}, computed {crc & 0xFFFF:04x})"
            )


def _truncated(src: _Source) -> EOFError:
    return EOFError(f"gzip stream ends inside compressed data at byte {src.consumed}")


def _inflate_isal(src: _Source, piece: int) -> Generator[bytes, None, tuple[int, int]]:
    """One member's deflate data with python-isal; returns its CRC-32 and length.

    `IgzipDecompressor` allocates each output block once, at its full size, and inflates into it in
    one step; it keeps unconsumed input itself (no tail copied back on every step) and computes the
    CRC-32 while it inflates (`DECOMP_GZIP_NO_HDR`: raw deflate, the trailer left to us).
    """
    from isal import igzip_lib

    d = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP_NO_HDR, hist_bits=15)
    size = 0
    while not d.eof:
        data = b""
        if d.needs_input:
            data = src.chunk()
            if not data:
                out = d.decompress(b"", piece)
                if not out:
                    raise _truncated(src)
                size += len(out)
                yield out
                continue
        out = d.decompress(data, piece)
        if out:
            size += len(out)
            yield out
    src.give_back(d.unused_data)  # all input after the deflate end
    return int(d.crc), size


def _inflate_zlib(src: _Source, piece: int) -> Generator[bytes, None, tuple[int, int]]:
    """One member's deflate data with zlib; returns its CRC-32 and length.

    zlib copies the input it did not consume (`unconsumed_tail`) on every step that stops at its
    output limit. So it is handed slices of the block read: all of it at first, and after a step
    that stopped at the limit, about twice what that step consumed (so the copied tail stays about
    as long as the input consumed, and inflating highly compressible data is not quadratic).
    """
    d = zlib.decompressobj(-15)
    crc = size = 0
    data, fed = memoryview(b""), 0  # the block read, and how much of it zlib has taken
    limit = src.block
    while not d.eof:
        if fed == len(data):
            data, fed = memoryview(src.chunk()), 0
        if not data:  # the file ended: only output zlib still holds may come
            out = d.decompress(b"", piece)
            if not out:
                raise _truncated(src)
        else:
            step = data[fed : fed + limit]
            out = d.decompress(step, piece)
            left = len(d.unconsumed_tail)
            used = len(step) - left
            fed += len(step) if d.eof else used
            limit = max(_MIN_FEED, 2 * used) if left else src.block
        if out:
            crc = zlib.crc32(out, crc)
            size += len(out)
            yield out
    src.give_back(d.unused_data + data[fed:])  # what followed the deflate end, taken or not
    return crc, size


def _inflate_member(src: _Source, backend: str, piece: int) -> Iterator[bytes]:
    """Inflate one member's deflate data in pieces of at most `piece` bytes, then check its trailer."""
    inflater = _inflate_isal if backend == "isal" else _inflate_zlib
    crc, size = yield from inflater(src, piece)
    stored_crc, stored_size = struct.unpack("<II", src.take(8, "a member trailer"))
    if stored_crc != crc:
        raise gzip.BadGzipFile(f"CRC-32 mismatch (stored {stored_crc:08x}, computed {crc:08x})")
    if stored_size != size & 0xFFFFFFFF:
        raise gzip.BadGzipFile(f"length mismatch (stored {stored_size}, inflated {size} bytes)")


def inflate(
    raw: BinaryIO, backend: str, block: int = BLOCK, *, stop: threading.Event | None = None
) -> Iterator[bytes]:
    """The uncompressed bytes of a gzip file, member after member, in pieces of at most `block`.

    The file is read `block` bytes at a time. Once `stop` is set, the next read raises `_Stopped`.
    """
    crc32 = library(backend).crc32
    src = _Source(raw, block, stop)
    first = True
    try:
        while first or not src.only_padding_left():
            _read_header(src, crc32)
            yield from _inflate_member(src, backend, block)
            first = False
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

    Both backends read gzip through `GzipReader`: one strict RFC 1952 parser, inflating in a
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
