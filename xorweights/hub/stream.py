"""Reading a Hub file over HTTP as it downloads, never writing it to disk (`decode --stream`).

`HubStream` is a pull reader over huggingface_hub's own HTTP helpers: the file's URL at a pinned
commit (`hf_hub_url`), its headers (`build_hf_headers`: token, user agent), its session with
backoff on connection errors, 429 and 5xx, and its error classes (`hf_raise_for_status`), so
endpoints, mirrors, tokens and offline mode behave as for any download. A dropped connection (or
a 429/5xx answer) is reopened with `Range: bytes=<received>-`, pausing 0.5, 1, 2, 4, 8 s: at most
`MAX_REOPENS` times without 1 MiB received in between, then one error; an interrupt stops the
wait at once.
It hashes what it reads and, at the end, requires the size and sha256 the Hub lists (the git blob
id for a file outside LFS): a file that differs raises `PayloadMismatchError` before its last
byte is handed over, so no output made from it is ever committed.

`HubFileSource` is the `sources.Source` of such a file.

huggingface_hub's `HfFileSystem` reads a file likewise, but reopens a dropped connection once per
`read` and from the bytes handed over (its block files fetch a whole block again), has no stall
rule and blocks its reading thread through its own waits: `benchmarks/bench_hffs_stream.py`
measures both (`benchmarks/results/bench_hffs_stream.txt`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from .. import _cancel
from .._cancel import Cancelled
from ..errors import FormatError, HubError, IOFailure, PayloadMismatchError, XorWeightsError
from ..hashing import git_blob_hasher, new_hasher
from .access import HubFile, hf_lib, short_error
from .watch import MAX_REOPENS, POLL, PROGRESS, Watch, network_error, requested_wait

logger = logging.getLogger(__name__)

__all__ = ["MAX_REOPENS", "PROGRESS", "HubFileSource", "HubStream", "mismatch_over_format_error"]

#: Pieces of the body waiting for the stream's reader (each at most `_PIECE` bytes).
_QUEUED = 16
_PIECE = 1 << 20
#: How long closing the stream waits for its network thread to end (it ends by itself soon after).
_JOIN = 0.25
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
#: huggingface_hub's session, without its own retries (and their warnings): `HubStream` retries.
_NO_RETRY: dict[str, Any] = {"max_retries": 0, "retry_on_exceptions": (), "retry_on_status_codes": ()}


class _ShortBody(Exception):
    """The body ended before the listed size."""


class _Retry(Exception):
    """An answer worth asking again (429, 5xx), or a range the server did not honour."""

    def __init__(self, message: str, wait: float = 0) -> None:
        super().__init__(message)
        self.wait = wait


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a dropped or stalled connection raises in this huggingface_hub's HTTP client (not its
    HTTP status errors, which are `OSError`s too and are never retried here)."""
    if hf_lib().__version__.startswith("0."):
        import requests
        import urllib3

        return (
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            requests.Timeout,
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.ReadTimeoutError,
            _ShortBody,
            _Retry,
        )
    try:
        import httpx2 as httpx  # huggingface_hub 2.x
    except ImportError:
        import httpx  # 1.x
    return (httpx.TransportError, _ShortBody, _Retry)


class HubStream:
    """One file of a repo at a commit, read front to back (`readinto`), checked at its end."""

    def __init__(
        self,
        repo_id: str,
        path: str,
        commit: str,
        listed: HubFile,
        *,
        endpoint: str | None,
        token: str | bool | None,
        label: str,
    ) -> None:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        self.url = hf_hub_url(repo_id, path, revision=commit, endpoint=endpoint)
        self.headers = build_hf_headers(token=token, library_name="xorweights")
        self.listed, self.label = listed, label
        self.pos = 0
        """Bytes handed over (and hashed)."""
        self.reopens = 0
        self._hash = new_hasher("sha256") if listed.sha256 else git_blob_hasher(listed.size)
        self._left = memoryview(b"")
        self._watch = Watch(label)
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(_QUEUED)
        self._thread: threading.Thread | None = None
        # The network thread's own state.
        self._received = 0
        self._fails = 0
        self._progress_at = 0
        self._stack = contextlib.ExitStack()
        self._chunks: Any = None
        self._raw: Any = None
        self._piece = memoryview(b"")
        self._errors = _network_errors()
        self._v0 = hf_lib().__version__.startswith("0.")

    # --- the reader's side ---------------------------------------------------------------------

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        want = min(len(view), self.listed.size - self.pos)
        if want <= 0:
            self._finish()
            return 0
        if not len(self._left):
            self._left = memoryview(self._next())
        n = min(want, len(self._left))
        view[:n] = self._left[:n]
        self._hash.update(self._left[:n])
        self._left = self._left[n:]
        self.pos += n
        return n

    def _next(self) -> bytes:
        """The next piece of the body, from the network thread (started on first use)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._pump, name=f"xorweights-stream-{self.label}", daemon=True
            )
            self._thread.start()
        while True:
            _cancel.check()
            try:
                item = self._queue.get(timeout=POLL)
            except queue.Empty:
                self._watch.poll()
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def _finish(self) -> None:
        """At the listed size: the digest must be the listed one."""
        self.close()
        want = self.listed.sha256 or self.listed.blob_id
        actual = self._hash.hexdigest()
        if want is not None and actual != want:
            algo = "sha256" if self.listed.sha256 else "git-sha1"
            raise PayloadMismatchError(
                f"payload file {self.label} differs from the {algo} the Hub lists ({actual} as received, "
                f"but the Hub lists {want}); nothing made from it was kept",
                path=self.label,
                expected=want,
                actual=actual,
                algorithm=algo,
                stage="payload",
            )

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all the rest when negative); fewer only at the end."""
        n = self.listed.size - self.pos if n < 0 else n
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n and (k := self.readinto(view[got:])):
            got += k
        return bytes(buf[:got])

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        """Stop the network thread (its connection shut down) and wait a moment for it."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._watch.stop.set()
            self._watch.shutdown()
            thread.join(_JOIN)
            if thread.is_alive():
                logger.debug("%s: the network thread ends by itself (within its timeout)", self.label)

    def __enter__(self) -> HubStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the network thread --------------------------------------------------------------------

    def _pump(self) -> None:
        """Read the body into the queue, reconnecting as needed; an error is queued for the reader."""
        try:
            with self._watch.active():
                while self._received < self.listed.size and not self._watch.stopped():
                    try:
                        if self._chunks is None and self._raw is None:
                            self._connect()
                        got = self._some(min(_PIECE, self.listed.size - self._received))
                        if not len(got):
                            raise _ShortBody(f"the body ended at byte {self._received} of {self.listed.size}")
                    except self._errors as e:
                        self._lost(e)
                        continue
                    self._received += len(got)
                    self._put(bytes(got))
        except Cancelled:
            pass
        except BaseException as e:
            self._put(e if isinstance(e, XorWeightsError) else network_error(e, f"payload file {self.label}"))
        finally:
            self._disconnect()

    def _put(self, item: bytes | BaseException) -> None:
        """Queue `item` for the reader; while the queue is full the progress window stops."""
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            self._watch.paused()
        while not self._watch.stopped():
            try:
                self._queue.put(item, timeout=POLL)
                return
            except queue.Full:
                pass

    def _connect(self) -> None:
        from huggingface_hub import constants
        from huggingface_hub.utils import hf_raise_for_status

        self._disconnect()
        headers = dict(self.headers)
        if self._received:
            headers["Range"] = f"bytes={self._received}-"
        timeout = constants.HF_HUB_DOWNLOAD_TIMEOUT
        if self._v0:
            from huggingface_hub.utils import http_backoff

            # No retries inside: this reader's own loop retries, interruptibly and bounded.
            r = http_backoff("GET", self.url, headers=headers, stream=True, timeout=timeout, **_NO_RETRY)
            self._stack.callback(r.close)
        else:
            from huggingface_hub.utils import http_stream_backoff

            r = self._stack.enter_context(
                http_stream_backoff("GET", self.url, headers=headers, timeout=timeout, **_NO_RETRY)
            )
        if r.status_code in _RETRY_STATUS:  # a wait asked for too long was refused by the watch
            raise _Retry(f"HTTP {r.status_code}", requested_wait(r.status_code, r.headers) or 0)
        try:
            hf_raise_for_status(r)
        except Exception as e:
            raise HubError(f"payload file {self.label}: {short_error(e)}", path=self.label) from None
        if self._received and r.status_code != 206:
            raise IOFailure(
                "reading", self.label, OSError(f"the server ignored Range (HTTP {r.status_code})")
            )
        got = r.headers.get("Content-Range", "") if self._received else f"bytes {self._received}-"
        if not got.startswith(f"bytes {self._received}-"):
            raise _Retry(f"asked for bytes {self._received}- and was given {got or 'no Content-Range'}")
        if self._v0:
            r.raw.decode_content = True
            self._raw = r.raw
        else:
            self._chunks = r.iter_bytes()

    def _disconnect(self) -> None:
        self._chunks = self._raw = None
        self._piece = memoryview(b"")
        self._stack.close()
        self._stack = contextlib.ExitStack()

    def _some(self, n: int) -> bytes | memoryview:
        """Up to `n` bytes from the open connection; empty at the end of its body."""
        if not len(self._piece):
            if self._raw is not None:  # what has arrived: a cut body loses nothing already received
                read1 = getattr(self._raw, "read1", None)
                return read1(n) if read1 is not None else self._raw.read(min(n, 1 << 16))  # type: ignore[no-any-return]
            self._piece = memoryview(next(self._chunks, b""))
        out, self._piece = self._piece[:n], self._piece[n:]
        return out

    def _lost(self, e: BaseException) -> None:
        """A connection lost: pause, then let the loop reconnect; or give up with one error."""
        self._disconnect()
        if self._received - self._progress_at >= PROGRESS:
            self._fails = 0
        self._progress_at = self._received
        self._fails += 1
        why = short_error(e.args[0] if e.args and isinstance(e.args[0], str) else e) or type(e).__name__
        if self._fails > MAX_REOPENS:
            raise IOFailure(
                "reading",
                self.label,
                OSError(f"{why} (connection lost {self._fails} times without 1 MiB received in between)"),
            ) from None
        self.reopens += 1
        logger.info("%s: connection lost at byte %d (%s); resuming", self.label, self._received, why)
        if "timeout" in type(e).__name__.lower():
            return  # a stall or a silence: its timeout was the wait
        pause = max(min(0.5 * 2 ** (self._fails - 1), 8), e.wait if isinstance(e, _Retry) else 0)
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline:
            if self._watch.stop.wait(min(POLL, max(deadline - time.monotonic(), 0))) or _cancel.requested():
                raise Cancelled()


@dataclass(frozen=True)
class HubFileSource:
    """A payload file read from the Hub as it is decoded (never on disk)."""

    repo_id: str
    repo_path: str
    commit: str
    listed: HubFile
    endpoint: str | None = None
    token: str | bool | None = None

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.commit[:12]}:{self.repo_path}"

    @property
    def path(self) -> None:
        return None

    @property
    def detail(self) -> str:
        return ""

    def open(self) -> BinaryIO:
        return HubStream(  # type: ignore[return-value]
            self.repo_id,
            self.repo_path,
            self.commit,
            self.listed,
            endpoint=self.endpoint,
            token=self.token,
            label=self.label,
        )

    def size(self) -> int:
        return self.listed.size

    def mismatch(self) -> PayloadMismatchError | None:
        """Read the whole file (bounded by its listed size) and say whether it differs from the
        digest the Hub lists."""
        logger.info("%s: reading it whole to check it against the digest the Hub lists", self.label)
        with self.open() as stream:
            try:
                while stream.read(_PIECE):
                    pass
                stream.read(1)  # at the end: the digest is checked
            except PayloadMismatchError as e:
                return e
        return None

    def identity(self) -> tuple[int, int]:
        """Its size and digest: what a resumed decode compares with its records."""
        digest = self.listed.sha256 or self.listed.blob_id or ""
        return self.listed.size, int(digest[:15] or "0", 16)


@contextlib.contextmanager
def mismatch_over_format_error(remote: Mapping[str, HubFileSource]) -> Iterator[None]:
    """A format error met in a file read from the Hub (`remote`) is reported as that file differing
    from the digest the Hub lists, when it does (the file is read whole to tell, bounded by its
    listed size): bytes changed on the way are not a malformed payload. Else the format error."""
    try:
        yield
    except FormatError as e:
        where = str(e.path or "")
        source = next((s for s in remote.values() if where.startswith(s.label)), None)
        if source is None:
            raise
        found = source.mismatch()
        if found is None:
            raise
        raise PayloadMismatchError(
            f"{found.message} (decoding it met: {short_error(e, 160)})",
            path=found.path,
            expected=found.expected,
            actual=found.actual,
            algorithm=found.algorithm,
            stage="payload",
        ) from e
