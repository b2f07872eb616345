"""The one hashing module: its digests are hashlib's, zlib's and git's; many jobs in parallel count
their bytes on one bar, stop when cancelled, and raise the first failure."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import random_bytes
from xorweights import _cancel, hashing
from xorweights.errors import FormatError
from xorweights.hashing import GIT_BLOB, hash_file, hash_files, hash_many, hash_stream, new_hasher

#: Sizes around the chunk size the tests use (`CHUNK`): empty, one byte, a chunk, several.
CHUNK = 1 << 16
SIZES = (0, 1, CHUNK - 1, CHUNK, 5 * CHUNK + 7)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for i, n in enumerate(SIZES):
        p = tmp_path / f"f{n}.bin"
        p.write_bytes(random_bytes(n, i) if n > 1 else b"\n" * n)
        out[p.name] = p
    crlf = tmp_path / "text.txt"
    crlf.write_bytes(b"line one\r\nline two\n" * 5000)
    out[crlf.name] = crlf
    return out


def _git_blob_id(path: Path) -> str:
    done = subprocess.run(
        ["git", "hash-object", "--no-filters", str(path)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_file_digests_are_hashlib_zlib_and_git(files: dict[str, Path]) -> None:
    for path in files.values():
        data = path.read_bytes()
        got = hash_file(path, ["md5", "sha1", "sha256", "crc32", GIT_BLOB], chunk_size=CHUNK)
        assert got["md5"] == hashlib.md5(data).hexdigest()
        assert got["sha1"] == hashlib.sha1(data).hexdigest()
        assert got["sha256"] == hashlib.sha256(data).hexdigest()
        assert got["crc32"] == f"{zlib.crc32(data):08x}"
        if shutil.which("git"):
            assert got[GIT_BLOB] == _git_blob_id(path), path.name


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_blob_hasher_of_bytes_is_git_hash_object(tmp_path: Path) -> None:
    data = b"# card\r\n\xff\x00 bytes\n"
    (tmp_path / "card").write_bytes(data)
    h = new_hasher(GIT_BLOB, len(data))
    h.update(data)
    assert h.hexdigest() == _git_blob_id(tmp_path / "card")
    with pytest.raises(ValueError):
        new_hasher(GIT_BLOB)


def test_a_byte_range_and_a_stream(files: dict[str, Path]) -> None:
    path = files[f"f{5 * CHUNK + 7}.bin"]
    data = path.read_bytes()
    for start, length in ((0, 0), (3, CHUNK), (CHUNK - 1, 2 * CHUNK + 5), (len(data) - 9, 9)):
        part = data[start : start + length]
        got = hash_file(path, ["sha256", "crc32"], start=start, length=length, chunk_size=CHUNK)
        assert got == {"sha256": hashlib.sha256(part).hexdigest(), "crc32": f"{zlib.crc32(part):08x}"}
    tail = data[CHUNK:]
    assert hash_file(path, ["md5"], start=CHUNK)["md5"] == hashlib.md5(tail).hexdigest()
    with pytest.raises(FormatError, match="ends at byte"):
        hash_file(path, ["sha256"], start=len(data) - 4, length=5)
    seen: list[int] = []
    got = hash_stream(io.BytesIO(data), ["sha256", GIT_BLOB], size=len(data), on_progress=seen.append)
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)


class _Bar:
    """Stands in for `byte_bar`: records the total and what the jobs report, from any thread."""

    def __init__(self, total: int | None, desc: str, *, enabled: bool) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self.lock = threading.Lock()
        bars.append(self)

    def update(self, n: int = 1) -> None:
        with self.lock:
            self.n += n

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


bars: list[_Bar] = []


@pytest.fixture
def bar(monkeypatch: pytest.MonkeyPatch) -> Callable[[], _Bar]:
    bars.clear()
    monkeypatch.setattr(hashing, "byte_bar", _Bar)
    return lambda: bars[-1]


def test_many_files_in_parallel_count_their_bytes(files: dict[str, Path], bar: Callable[[], _Bar]) -> None:
    got = list(hash_files(files, ["md5", "sha256"], jobs=3, progress=True, desc="hash"))
    assert [name for name, _ in got] == list(files)  # in the order given, whatever finished first
    for name, digests in got:
        data = files[name].read_bytes()
        assert digests == {"md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}
    total = sum(p.stat().st_size for p in files.values())
    assert (bar().total, bar().n, bar().desc) == (total, total, "hash")


def test_nothing_to_hash_shows_no_bar(bar: Callable[[], _Bar]) -> None:
    assert list(hash_many([], jobs=2, progress=True, desc="none")) == []
    assert bars == []


class _Endless:
    """A stream of zeros without end: a job hashing it stops only when cancelled."""

    def __init__(self, started: threading.Event) -> None:
        self.started = started

    def readinto(self, b: Any) -> int:
        self.started.set()
        return len(memoryview(b).cast("B"))


def _endless_job(name: str, ended: dict[str, str]) -> tuple[threading.Event, Any]:
    started = threading.Event()

    def run(update: Callable[[int], None]) -> str:
        try:
            return hash_stream(_Endless(started), ["sha256"], buffer=bytearray(4096), on_progress=update)[
                "sha256"
            ]
        except BaseException as e:
            ended[name] = type(e).__name__
            raise

    return started, run


def _await(events: list[threading.Event]) -> None:
    for e in events:
        assert e.wait(60), "a job never started"


def test_leaving_the_loop_early_stops_the_running_jobs(bar: Callable[[], _Bar]) -> None:
    ended: dict[str, str] = {}
    (a_started, a), (b_started, b) = _endless_job("a", ended), _endless_job("b", ended)

    def quick(update: Callable[[int], None]) -> str:
        _await([a_started, b_started])
        return "done"

    gen = hash_many([("quick", quick, 1), ("a", a, 3), ("b", b, 2)], jobs=3, progress=True, desc="x")
    assert next(gen) == ("quick", "done")
    gen.close()  # returns once the running jobs have stopped
    assert ended == {"a": "Cancelled", "b": "Cancelled"}
    assert not _cancel.requested()  # re-armed: a later run is not stopped


def test_a_stopped_run_stops_the_running_jobs(bar: Callable[[], _Bar]) -> None:
    """The run's other pool (the CLI's main thread, interrupted) stops: the jobs hashed here stop
    too, and `hash_many` raises `Cancelled` in the thread that called it."""

    class Interrupted(Exception):
        pass

    ended: dict[str, str] = {}
    (a_started, a), (b_started, b) = _endless_job("a", ended), _endless_job("b", ended)
    outcome: dict[str, str] = {}

    def caller() -> None:
        try:
            list(hash_many([("a", a, 2), ("b", b, 1)], jobs=2, progress=True, desc="x"))
        except BaseException as e:
            outcome["error"] = type(e).__name__
            raise

    with pytest.raises(Interrupted):
        with ThreadPoolExecutor(1) as pool, _cancel.guard(pool):
            pool.submit(caller)
            _await([a_started, b_started])
            raise Interrupted()  # what the CLI's signal handler raises in the main thread
    assert ended == {"a": "Cancelled", "b": "Cancelled"}
    assert outcome == {"error": "Cancelled"}
    assert not _cancel.requested()


def test_the_first_failure_is_raised_and_stops_the_rest(tmp_path: Path, bar: Callable[[], _Bar]) -> None:
    ended: dict[str, str] = {}
    slow_started, slow = _endless_job("slow", ended)
    short = tmp_path / "short.bin"
    short.write_bytes(b"12345")
    failures: list[BaseException] = []

    def bad(update: Callable[[int], None]) -> str:
        _await([slow_started])
        try:
            return hash_file(short, ["sha256"], start=2, length=10, on_progress=update)["sha256"]
        except FormatError as e:
            failures.append(e)
            raise

    # The endless job comes first in the order given: the failure is raised without waiting for it.
    with pytest.raises(FormatError) as caught:
        dict(hash_many([("slow", slow, 2), ("bad", bad, 1)], jobs=2, progress=False, desc="x"))
    assert caught.value is failures[0]
    assert str(caught.value) == f"{short}: ends at byte 5, inside the 10 bytes hashed from byte 2"
    assert ended == {"slow": "Cancelled"}
    assert not _cancel.requested()


def test_a_missing_file_raises_what_open_raises(tmp_path: Path, bar: Callable[[], _Bar]) -> None:
    (tmp_path / "here").write_bytes(b"x")
    paths = {"here": tmp_path / "here", "gone": tmp_path / "gone"}
    with pytest.raises(FileNotFoundError):
        list(hash_files(paths, ["md5"], jobs=2, progress=False, desc="x"))
