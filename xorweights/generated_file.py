"""A read-only stream of bytes that a producer writes in a thread of its own (a converted base
shard, a recovered delta shard): the pipeline reads it as it reads a file; it never exists on disk."""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable
from typing import Any


class GeneratedFile(io.RawIOBase):
    """A read-only stream of bytes that a producer writes in a thread of its own.

    The producer gets a writer; what it writes reaches the reader through a small queue (the
    producer waits when the reader lags), so a converted shard streams into the XOR pass
    without ever existing on disk. An error in the producer is raised by the reader.
    """

    def __init__(self, produce: Callable[[Any], None], name: str, *, depth: int = 4) -> None:
        super().__init__()
        self.name = name
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._chunk = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(
            target=self._run, args=(produce,), name=f"xorweights-gen-{name}", daemon=True
        )
        self._thread.start()

    class _Writer:
        def __init__(self, owner: GeneratedFile) -> None:
            self.owner = owner

        def write(self, data: Any) -> int:
            view = memoryview(data).cast("B")
            while not self.owner._stop.is_set():
                try:
                    self.owner._q.put(view, timeout=0.1)
                    return len(view)
                except queue.Full:
                    continue
            raise _Closed()

        def flush(self) -> None:
            pass

    def _run(self, produce: Callable[[Any], None]) -> None:
        try:
            produce(GeneratedFile._Writer(self))
            item: Any = None
        except _Closed:
            return
        except BaseException as e:  # noqa: BLE001 (handed to the reader)
            item = e
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._chunk:
            if self._done:
                return 0
            item = self._q.get()
            if item is None:
                self._done = True
                return 0
            if isinstance(item, BaseException):
                self._done = True
                raise item
            self._chunk = item
        n = min(len(b), len(self._chunk))
        memoryview(b).cast("B")[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        super().close()


class _Closed(Exception):
    """The reader went away; the producer stops."""
