"""One strict RFC 1952 reader for both gzip backends, decompressing in a thread of its own.

The member framing (header, trailer, members one after another) is parsed here, in one place;
a backend only inflates the raw deflate data and computes CRC-32 (`zlib`, or python-isal's
`isal_zlib`, about twice as fast). So both backends accept exactly the same streams and refuse
exactly the same ones, which their own gzip readers do not: the standard library skips a header
CRC (FHCRC) without checking it and accepts reserved flag bits, and python-isal's threaded reader
fails on a header (a long FNAME or FCOMMENT) longer than its buffer.

Accepted: one or more members, each with any of FTEXT, FHCRC, FEXTRA, FNAME and FCOMMENT, of any
length; zero bytes after a member (padding). Refused, with `gzip.BadGzipFile`: a member not
starting with `1f 8b 08`, reserved flag bits set, a wrong header CRC, a wrong CRC-32 or length in
a trailer, other bytes after a member. Refused with `EOFError`: a stream that ends inside a member.
"""

from __future__ import annotations

import gzip
import logging
import queue
import struct
import threading
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

#: Bytes read from the file, and at most inflated, per step.
BLOCK = 1 << 20
#: Inflated blocks kept ready ahead of the reader.
DEPTH = 8

_FHCRC, _FEXTRA, _FNAME, _FCOMMENT, _RESERVED = 0x02, 0x04, 0x08, 0x10, 0xE0
_MAGIC = b"\x1f\x8b"
_DEFLATE = 8


def library(backend: str) -> Any:
    """The module that inflates and checksums for `backend` (`isal` or `zlib`)."""
    if backend == "isal":
        from isal import isal_zlib

        return isal_zlib
    return zlib


class _Source:
    """Buffered reads of the compressed file."""

    def __init__(self, raw: BinaryIO, block: int) -> None:
        self.raw, self.block = raw, block
        self.buf, self.pos = b"", 0
        self.consumed = 0
        """Bytes of the file handed out so far (for messages)."""

    def _fill(self) -> bool:
        data = self.raw.read(self.block)
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

    def chunk(self) -> bytes:
        """The buffered bytes, or the next block of the file (empty at its end)."""
        if self.pos < len(self.buf):
            out = self.buf[self.pos :]
        else:
            out = self.raw.read(self.block)
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


def _inflate_member(src: _Source, lib: Any, block: int) -> Iterator[bytes]:
    """Inflate one member's deflate data in pieces of at most `block` bytes, then check its trailer."""
    d = lib.decompressobj(-15)
    crc = size = 0
    data = b""
    while not d.eof:
        ended = False
        if not data:
            data = src.chunk()
            ended = not data
        out = d.decompress(data, block)
        data = d.unconsumed_tail
        if out:
            crc = lib.crc32(out, crc)
            size += len(out)
            yield out
        elif ended:
            raise EOFError(f"gzip stream ends inside compressed data at byte {src.consumed}")
    src.give_back(d.unused_data)  # all input after the deflate end (zlib repeats it in unconsumed_tail)
    stored_crc, stored_size = struct.unpack("<II", src.take(8, "a member trailer"))
    if stored_crc != crc:
        raise gzip.BadGzipFile(f"CRC-32 mismatch (stored {stored_crc:08x}, computed {crc:08x})")
    if stored_size != size & 0xFFFFFFFF:
        raise gzip.BadGzipFile(f"length mismatch (stored {stored_size}, inflated {size} bytes)")


def inflate(raw: BinaryIO, backend: str, block: int = BLOCK) -> Iterator[bytes]:
    """The uncompressed bytes of a gzip file, member after member, in pieces of at most `block`."""
    lib = library(backend)
    src = _Source(raw, block)
    first = True
    while first or not src.only_padding_left():
        _read_header(src, lib.crc32)
        yield from _inflate_member(src, lib, block)
        first = False


class GzipReader:
    """A gzip file's uncompressed bytes (`readinto`), inflated ahead in a thread of its own.

    Closing it stops the thread and closes `raw`.
    """

    def __init__(self, raw: BinaryIO, backend: str, *, block: int = BLOCK, depth: int = DEPTH) -> None:
        self.raw = raw
        self._ready: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)
        self._stop = threading.Event()
        self._piece = memoryview(b"")
        self._end: BaseException | None = None
        self._ended = False
        self._thread = threading.Thread(
            target=self._produce, args=(backend, block), name="xorweights-gunzip", daemon=True
        )
        self._thread.start()

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, backend: str, block: int) -> None:
        try:
            for piece in inflate(self.raw, backend, block):
                if not self._put(piece):
                    return
            self._put(None)
        except BaseException as e:  # noqa: BLE001 (handed to the reading thread)
            self._put(e)

    def readinto(self, b: Any) -> int:
        while not self._piece:
            if self._end is not None:
                raise self._end
            if self._ended:
                return 0
            item = self._ready.get()
            if item is None:
                self._ended = True
            elif isinstance(item, BaseException):
                self._end = item
            else:
                self._piece = memoryview(item)
        n = min(len(b), len(self._piece))
        b[:n] = self._piece[:n]
        self._piece = self._piece[n:]
        return n

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._ready.get(timeout=0.1)
            except queue.Empty:
                pass
        self.raw.close()

    def __enter__(self) -> GzipReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
