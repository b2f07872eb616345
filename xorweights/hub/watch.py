"""A broken Hub never hangs a run: rules on huggingface_hub's HTTP requests made for xorweights.

- A bounded wait: an answer asking to wait (`Retry-After`, or a `RateLimit` header with nothing
  left) more than `MAX_RETRY_AFTER` seconds, or more than that in all for one file, is a
  `HubError` naming the wait, instead of huggingface_hub sleeping through it.
- A minimum progress rate: a connection whose reader waits `HF_HUB_DOWNLOAD_TIMEOUT` seconds
  (huggingface_hub's, default 10) for fewer than `MIN_PROGRESS` bytes counts as dropped: its
  socket is shut down and the read fails as a timeout, which huggingface_hub resumes with a range
  request (`HubStream` reopens it likewise). After `MAX_REOPENS` losses without `PROGRESS` bytes
  in between, the file fails with one `HubError`.
- A bounded silence: no request waits more than `answer` seconds (`HF_HUB_DOWNLOAD_TIMEOUT`;
  less where huggingface_hub asks for less) to connect or for the next bytes of an answer, and
  after `MAX_UNANSWERED` requests left unanswered that long the file fails with one `HubError`
  (huggingface_hub would retry a silent Hub five times, for up to 60 s each).
- A stop at once: when the watch is stopped (or the run cancelled) its socket is shut down, so a
  read blocked on the network returns at once and raises `Cancelled`.

The rules apply only to requests made by a thread inside `Watch.active()`; any other request of
the process passes untouched. They reach huggingface_hub's client through a response hook and a
wrapper of its transports (requests' adapters), added to the shared httpx client (huggingface_hub
>= 1) or to each thread's requests session (0.x), and to every client its session factory makes
from then on. The thread that waits for the reading one
calls `Watch.poll()` every `POLL` seconds: that is what notices a stall or a stop.
"""

from __future__ import annotations

import importlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .. import _cancel
from .._cancel import Cancelled
from ..errors import HubError, XorWeightsError

#: The HTTP clients huggingface_hub uses (by version): their errors are the network's.
HTTP_MODULES = ("httpx", "httpx2", "httpcore", "httpcore2", "h11", "requests", "urllib3")

logger = logging.getLogger(__name__)

#: The longest wait a Hub answer may ask for before a retry (and in all, over one file), in seconds.
MAX_RETRY_AFTER = 60.0
#: Bytes a connection must deliver within each `HF_HUB_DOWNLOAD_TIMEOUT` seconds its reader waits.
MIN_PROGRESS = 16 * 1024
#: Connections lost (dropped, stalled) without `PROGRESS` bytes received in between before a file fails.
MAX_REOPENS = 5
PROGRESS = 1 << 20
#: Requests of one file left unanswered (no connection, or no answer within `Watch.answer`) before it fails.
MAX_UNANSWERED = 3
#: A publish waits this many times `HF_HUB_DOWNLOAD_TIMEOUT` for each answer (a commit may take a while).
PUBLISH_ANSWER = 6
#: How often the waiting thread looks at the reading one, in seconds.
POLL = 0.05
#: Statuses huggingface_hub retries after the wait the answer asks for.
_WAIT_STATUS = (408, 429, 500, 502, 503, 504)

_local = threading.local()


def stall_timeout() -> float:
    """huggingface_hub's `HF_HUB_DOWNLOAD_TIMEOUT`: how long a connection may deliver nearly nothing."""
    from huggingface_hub import constants

    return float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def current() -> Watch | None:
    """The watch of the calling thread, if any."""
    return getattr(_local, "watch", None)


class Watch:
    """The rules for the requests of one reader (one file at a time), and what its waiter polls."""

    def __init__(self, label: str, stop: threading.Event | None = None, answer: float | None = None) -> None:
        self.label = label
        self.stop = stop or threading.Event()
        self.timeout = stall_timeout()
        self.answer = answer or self.timeout
        """The longest a request waits to connect or for the next bytes of an answer, in seconds."""
        self.waited = 0.0
        """Seconds actually waited before retries the Hub asked to wait for (this file)."""
        self.unanswered = 0
        self.losses = 0
        self._asked: float | None = None
        self.stalled = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._window: float | None = None
        self._window_bytes = 0
        self._since_loss = 0

    @contextmanager
    def active(self) -> Iterator[Watch]:
        """The rules apply to the requests the calling thread makes inside the block."""
        install()
        before, _local.watch = current(), self
        try:
            yield self
        finally:
            _local.watch = before

    def name(self, label: str) -> None:
        """The file the next requests are for: a new budget of waits and losses."""
        self.label, self.waited, self.losses, self._since_loss = label, 0.0, 0, 0
        self.unanswered, self._asked = 0, None

    def stopped(self) -> bool:
        return self.stop.is_set() or _cancel.requested()

    # --- the reading side ----------------------------------------------------------------------

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock, self.stalled, self._window = sock, False, None
        if sock is not None and self.stopped():
            self.shutdown()

    def detach(self, sock: socket.socket | None) -> None:
        with self._lock:
            if self._sock is sock:
                self._sock, self._window = None, None

    def waiting(self) -> None:
        """The reader is about to wait on the network: the progress window runs."""
        if self._window is None:
            self._window, self._window_bytes = time.monotonic(), 0

    def paused(self) -> None:
        """The reader waits on something else (its consumer): the window stops."""
        self._window = None

    def received(self, n: int) -> None:
        self._window_bytes += n
        if self._window_bytes >= MIN_PROGRESS:
            self._window, self._window_bytes = time.monotonic(), 0
        self._since_loss += n
        if self._since_loss >= PROGRESS:
            self.losses = self.unanswered = 0

    def failure(
        self, e: BaseException, timeout: Callable[[str], BaseException], timeouts: tuple[type, ...]
    ) -> BaseException:
        """What a read that failed with `e` raises: `Cancelled` when stopped; a `HubError` after too
        many losses; a `timeout(message)` (which the client resumes) for a stall; else `e` itself."""
        if self.stopped():
            return Cancelled()
        stalled, self.stalled = self.stalled or isinstance(e, timeouts), False
        self.losses += 1
        self._since_loss = 0
        why = f"fewer than {MIN_PROGRESS // 1024} KiB in {self.timeout:g} s" if stalled else describe(e)
        if self.losses > MAX_REOPENS:
            return HubError(
                f"{self.label}: the connection to the Hub was lost {self.losses} times without "
                f"{PROGRESS >> 20} MiB received in between (last: {why}); try again later",
                path=self.label,
            )
        if stalled:
            logger.info("%s: %s received; reopening the connection", self.label, why)
            return timeout(f"the connection delivered {why}")
        return e

    # --- the waiting side ----------------------------------------------------------------------

    def overdue(self) -> bool:
        """Whether the reader has waited a whole window for too little (checked as pieces arrive,
        for readers nobody polls: each wait is bounded by the client's read timeout)."""
        start = self._window
        return start is not None and time.monotonic() - start >= self.timeout

    def poll(self) -> None:
        """Shut the connection down when the reader is stopped or has waited too long for too little."""
        if self._sock is None:
            return
        if self.stopped():
            self.shutdown()
        elif (start := self._window) is not None and time.monotonic() - start >= self.timeout:
            self.stalled = True
            self.shutdown()

    def shutdown(self) -> None:
        with self._lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                pass

    # --- waits ---------------------------------------------------------------------------------

    def allow_wait(self, seconds: float) -> None:
        """Grant a wait the Hub asks for, or raise `HubError` when it is too long: alone, or with
        the waits made before this file's earlier retries (counted by `sending`)."""
        if seconds > MAX_RETRY_AFTER:
            raise HubError(
                f"{self.label}: the Hub asks to wait {seconds:g} s before retrying (more than "
                f"{MAX_RETRY_AFTER:g} s): try again later",
                path=self.label,
            )
        if self.waited + seconds > MAX_RETRY_AFTER:
            raise HubError(
                f"{self.label}: the Hub asks to wait {seconds:g} s more before retrying, after "
                f"{self.waited:.0f} s of waits already (more than {MAX_RETRY_AFTER:g} s in all): "
                "try again later",
                path=self.label,
            )
        self._asked = time.monotonic()

    def sending(self) -> None:
        """A request starts: the time since an answer asked to wait counts as waited."""
        if self._asked is not None:
            self.waited += time.monotonic() - self._asked
            self._asked = None

    def silent(self, e: BaseException, timeouts: tuple[type, ...]) -> BaseException:
        """What a request that got no answer (it raised `e`) raises: `Cancelled` when stopped; a
        `HubError` at the `MAX_UNANSWERED`th timeout of this file; else `e` (the client may retry)."""
        if self.stopped():
            return Cancelled()
        if not isinstance(e, timeouts):
            return e
        self.unanswered += 1
        if self.unanswered < MAX_UNANSWERED:
            logger.info("%s: no answer within %g s (%s)", self.label, self.answer, describe(e))
            return e
        return HubError(
            f"{self.label}: no answer from the Hub within {self.answer:g} s, {self.unanswered} times; "
            "try again later",
            path=self.label,
        )

    def bounded(self, timeout: float | None) -> float:
        """A request's timeout (None: none) cut to `answer`."""
        return self.answer if timeout is None else min(float(timeout), self.answer)


def requested_wait(status: int, headers: Mapping[str, str]) -> float | None:
    """The seconds an answer asks to wait before a retry, as huggingface_hub reads them (None: none)."""
    if status not in _WAIT_STATUS:
        return None
    if status == 429:
        try:
            from huggingface_hub.utils._http import parse_ratelimit_headers  # huggingface_hub >= 1.2
        except ImportError:
            pass
        else:
            info = parse_ratelimit_headers(headers)
            if info is not None and info.remaining == 0:
                return float(info.reset_in_seconds)
    value = (headers.get("Retry-After") or "").strip()
    return float(value) if value.isdigit() else None


# --- the hooks -------------------------------------------------------------------------------


def _on_response(response: Any, *args: Any, **kwargs: Any) -> Any:
    """The response hook (httpx and requests alike): the wait asked, and the body's stream watched."""
    watch = current()
    if watch is None:
        return None
    wait = requested_wait(response.status_code, response.headers)
    if wait is not None:
        watch.allow_wait(wait)
    if hasattr(response, "iter_raw"):  # httpx
        client = importlib.import_module(type(response).__module__.split(".")[0])
        watched = _stream_class(client)(response.stream, watch, _socket_of(response))
        watched.timeout, watched.timeouts = client.ReadTimeout, (client.TimeoutException,)
        response.stream = watched
    else:  # requests
        from urllib3.exceptions import ReadTimeoutError

        raw = _WatchedRaw(response.raw, watch, _socket_of(response))
        raw._timeout = lambda message: ReadTimeoutError(None, str(response.url), message)  # type: ignore[arg-type]
        raw._timeouts = (ReadTimeoutError, TimeoutError)
        response.raw = raw
    return None


def _socket_of(response: Any) -> socket.socket | None:
    """The socket a response is read from (httpx's `network_stream`; urllib3's connection)."""
    stream = getattr(response, "extensions", {}).get("network_stream")
    if stream is not None:
        return stream.get_extra_info("socket")  # type: ignore[no-any-return]
    connection = getattr(getattr(response, "raw", None), "_connection", None)
    return getattr(connection, "sock", None)


_stream_classes: dict[str, type] = {}


def _stream_class(client: Any) -> type[_WatchedStream]:
    """`_WatchedStream` as the `SyncByteStream` of the httpx module `client` (httpx checks it)."""
    cls = _stream_classes.get(client.__name__)
    if cls is None:
        cls = _stream_classes[client.__name__] = type(
            "_WatchedStream", (_WatchedStream, client.SyncByteStream), {}
        )
    return cls


class _WatchedStream:
    """An httpx response body read under a watch (an `httpx.SyncByteStream` by its methods)."""

    timeout: Callable[[str], BaseException]
    timeouts: tuple[type, ...]

    def __init__(self, inner: Any, watch: Watch, sock: socket.socket | None) -> None:
        self.inner, self.watch, self.sock = inner, watch, sock

    def __iter__(self) -> Iterator[bytes]:
        self.watch.attach(self.sock)
        pieces = iter(self.inner)
        try:
            while True:
                self.watch.waiting()
                try:
                    piece = next(pieces)
                except StopIteration:
                    return
                except Exception as e:
                    raise self.watch.failure(e, self.timeout, self.timeouts) from e
                self.watch.received(len(piece))
                if self.watch.overdue():
                    self.watch.stalled = True
                    raise self.watch.failure(TimeoutError(), self.timeout, self.timeouts)
                yield piece
        finally:
            self.watch.detach(self.sock)

    def close(self) -> None:
        self.inner.close()


class _WatchedRaw:
    """A urllib3 response read under a watch, for requests (`stream`, `read1`, `read`)."""

    _timeout: Callable[[str], BaseException]
    _timeouts: tuple[type, ...]

    def __init__(self, raw: Any, watch: Watch, sock: socket.socket | None) -> None:
        self._raw, self._watch, self._sock = raw, watch, sock
        self._attached = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:  # such as `decode_content`
            setattr(self._raw, name, value)

    def _call(self, read: Any, *args: Any, **kwargs: Any) -> bytes:
        if not self._attached:
            self._watch.attach(self._sock)
            self._attached = True
        self._watch.waiting()
        try:
            data = read(*args, **kwargs)
        except Exception as e:
            self._watch.detach(self._sock)
            raise self._watch.failure(e, self._timeout, self._timeouts) from e
        self._watch.received(len(data))
        if self._watch.overdue():
            self._watch.stalled = True
            self._watch.detach(self._sock)
            raise self._watch.failure(TimeoutError(), self._timeout, self._timeouts)
        return data  # type: ignore[no-any-return]

    def read1(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        return self._call(self._raw.read1, amt, decode_content=decode_content)

    def read(self, amt: int | None = None, *args: Any, **kwargs: Any) -> bytes:
        return self._call(self._raw.read, amt, *args, **kwargs)

    def stream(self, amt: int | None = 1 << 16, decode_content: bool | None = None) -> Iterator[bytes]:
        while data := self.read1(amt, decode_content=decode_content):
            yield data


_install_lock = threading.Lock()


def install() -> None:
    """Add the response hook to huggingface_hub's HTTP client(s), once (again if they were replaced)."""
    http = importlib.import_module("huggingface_hub.utils._http")
    with _install_lock:
        legacy = hasattr(http, "configure_http_backend")  # huggingface_hub 0.x: requests
        name = "_GLOBAL_BACKEND_FACTORY" if legacy else "_GLOBAL_CLIENT_FACTORY"
        factory = getattr(http, name, None)
        if callable(factory) and not getattr(factory, "_xorweights_watched", False):

            def watched() -> Any:
                return _hooked(factory())

            watched._xorweights_watched = True  # type: ignore[attr-defined]
            (http.configure_http_backend if legacy else http.set_client_factory)(watched)
        _hooked(http.get_session())
        for name in _CHATTY:
            chatty = logging.getLogger(name)
            if _quieted not in chatty.filters:
                chatty.addFilter(_quieted)


#: huggingface_hub's loggers that warn of each retry and resume: under a watch, our info instead.
_CHATTY = ("huggingface_hub.utils._http", "huggingface_hub.file_download")


def _quieted(record: logging.LogRecord) -> bool:
    """A logging filter: a retry warning of huggingface_hub made under a watch is logged here at
    info level (the watch decides and reports the outcome in one error), else passed on."""
    if current() is None or record.levelno > logging.WARNING:
        return True
    logger.info("%s: %s", record.name, " ".join(record.getMessage().split())[:300])
    return False


def _hooked(client: Any) -> Any:
    """`client` (an httpx client or a requests session) with the response hook, its transports
    (adapters) sending through `_send_watched`."""
    if hasattr(client, "event_hooks"):  # httpx
        hooks = client.event_hooks
        if _on_response not in hooks["response"]:
            client.event_hooks = {**hooks, "response": [*hooks["response"], _on_response]}
        module = importlib.import_module(type(client).__module__.split(".")[0])
        transports = [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]
        for transport in transports:
            _wrap(transport, "handle_request", module.TimeoutException, _httpx_timeouts)
    else:
        hooks = client.hooks.setdefault("response", [])
        if _on_response not in hooks:
            hooks.append(_on_response)
        from requests.exceptions import Timeout

        for adapter in client.adapters.values():
            _wrap(adapter, "send", Timeout, _requests_timeouts)
    return client


def _wrap(
    sender: Any, method: str, timeouts: type, bound: Callable[[Watch, Any, dict[str, Any]], None]
) -> None:
    """Make `sender.method(request, **kw)` (an httpx transport's, a requests adapter's) send under
    the calling thread's watch: timeouts cut by `bound`, a wait asked before counted, silence counted."""
    if sender is None or getattr(sender, "_xorweights_watched", False):
        return
    send = getattr(sender, method)

    def watched(request: Any, *args: Any, **kwargs: Any) -> Any:
        watch = current()
        if watch is None:
            return send(request, *args, **kwargs)
        bound(watch, request, kwargs)
        watch.sending()
        try:
            return send(request, *args, **kwargs)
        except Exception as e:
            if (err := watch.silent(e, (timeouts,))) is e:
                raise
            raise err from e

    setattr(sender, method, watched)
    sender._xorweights_watched = True


def _httpx_timeouts(watch: Watch, request: Any, kwargs: dict[str, Any]) -> None:
    """Cut an httpx request's timeouts (the `timeout` extension) to the watch's `answer`."""
    given = request.extensions.get("timeout") or {}
    request.extensions["timeout"] = {
        k: watch.bounded(given.get(k)) for k in ("connect", "read", "write", "pool")
    }


def _requests_timeouts(watch: Watch, request: Any, kwargs: dict[str, Any]) -> None:
    """Cut a requests request's timeout (a number, a (connect, read) pair, None) to the watch's `answer`."""
    given = kwargs.get("timeout")
    if given is None or isinstance(given, (int, float)):
        kwargs["timeout"] = watch.bounded(given)
    elif isinstance(given, tuple) and len(given) == 2:
        kwargs["timeout"] = (watch.bounded(given[0]), watch.bounded(given[1]))


def describe(e: BaseException) -> str:
    """A network error in words, on one line: what happened, then the client's own message."""
    text = " ".join(str(e).split())[:200]
    if isinstance(e, XorWeightsError):  # ours says it all
        return text
    what = _KNOWN.get(type(e).__name__, type(e).__name__)
    if type(e).__name__ in _SAID_ALL:  # a timeout's text adds nothing (requests': a whole repr)
        return what
    return f"{what} ({text})" if text else what


#: Network errors by class name (httpx, requests, urllib3), in words.
_KNOWN = {
    "TooManyRedirects": "too many redirects (a redirect loop)",
    "DecodingError": "the body does not decode as its Content-Encoding says",
    "DecodeError": "the body does not decode as its Content-Encoding says",
    "ContentDecodingError": "the body does not decode as its Content-Encoding says",
    "RemoteProtocolError": "the server broke the HTTP protocol",
    "ChunkedEncodingError": "the connection broke off mid-body",
    "ReadTimeout": "no answer in time",
    "ConnectTimeout": "no connection in time",
    "ConnectError": "cannot connect",
    "ProtocolError": "the connection broke off",  # urllib3's (requests)
    "ConnectionError": "the connection failed",
}


#: Network errors whose words in `_KNOWN` say all there is.
_SAID_ALL = ("ReadTimeout", "ConnectTimeout")


def wait_for(finished: threading.Event, watch: Watch, each: Callable[[], object] | None = None) -> None:
    """Wait for `finished` in steps of `POLL`, polling `watch` (and calling `each`); an interrupt
    stops the watch."""
    try:
        while not finished.wait(POLL):
            watch.poll()
            if each is not None:
                each()
    except BaseException:
        if each is not None:  # once more, as things are before the connection is shut down
            each()
        watch.stop.set()
        watch.shutdown()
        raise


def from_http_client(e: BaseException) -> bool:
    """Whether `e` is an error of the HTTP client (`HTTP_MODULES`): the network's."""
    return type(e).__module__.split(".")[0] in HTTP_MODULES


def network_error(e: BaseException, label: str) -> BaseException:
    """The error to report for `e`, raised while reaching `label` on the Hub: an error of the HTTP
    client (a redirect loop, a body that does not decode, a protocol error, a timeout), or one of
    huggingface_hub caused by such an error, becomes one `HubError` naming it; ours (found in its
    chain too) and huggingface_hub's answers with a meaning (401, 404, ...) stay as they are."""
    seen: BaseException | None = e
    network = None
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, (XorWeightsError, Cancelled)):
            return seen
        if network is None and from_http_client(seen):
            network = seen
        seen = seen.__cause__ or seen.__context__
    status = getattr(getattr(e, "response", None), "status_code", None)
    if network is None or (isinstance(status, int) and 400 <= status < 500 and status != 429):
        return e  # not the network's, or an answer that means something (401, 404, ...)
    return HubError(f"{label}: {describe(network)}; try again later", path=label)
