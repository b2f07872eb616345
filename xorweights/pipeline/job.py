"""One step: open its sources, run the XOR pass into a temporary, check it, rename it into place."""

from __future__ import annotations

import errno
import io
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import _cancel
from .._line_endings import line_ending_hint
from ..checksum_types import FileDigest
from ..errors import (
    BaseMismatchError,
    ChecksumMismatchError,
    ImplausibleOutputError,
    InputChangedError,
    IOFailure,
    XorWeightsError,
)
from ..hashing import Crc32
from ..outfolder.atomic import AtomicFile, HashingWriter
from ..outfolder.folder import STATE_DIGEST, OutputFolder
from ..outfolder.space import SpaceWatch
from .engine import StreamError, XorStats, xor_stream
from .plan import Step, Verb
from .report import FileReport
from .source import Source, explain, mismatch_cause, transcoding

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """A step as one run makes it: where it writes and what its inputs were at triage."""

    step: Step
    out: Path
    inputs: Mapping[str, tuple[int, int]]
    verb: Verb
    release: str
    fsync: bool = True
    drop_cache: bool = False
    space: SpaceWatch | None = None
    """Watches the free space as the output is written, when its size was not known in advance."""
    plausible: Callable[[Path, str], str | None] | None = None
    """For a decode: why the finished file is not what its name says (see `Plan.plausible`)."""

    def hashes(self) -> dict[str, Sequence[str]]:
        """What the pass hashes, by role. The output's digests include those of the bytes written
        when the sink writes them as they are (the engine hashes them alongside the pass)."""
        s = self.step
        base = s.expect_base.algorithms() if s.expect_base else ()
        out = s.expect_out.algorithms() if s.expect_out else ()
        return {
            "data": s.hash_inputs,
            "base": _union(base, s.hash_inputs if s.base.path is not None else ())
            if s.base is not None
            else (),
            "out": _union(out, s.sink.hash_written if s.sink.wrap is None else ()),
        }


def _union(*groups: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a for g in groups for a in g))


# --- messages ----------------------------------------------------------------------------------


def converted(source: Source | None, want: FileDigest | None) -> str | None:
    """Converted line endings as the cause of a wrong file, when they are (see `_line_endings`)."""
    if source is None or source.path is None or want is None:
        return None
    return line_ending_hint(source.path, want.hexdigests(), expected_size=want.size)


def out_cause(step: Step) -> str:
    """Why an output is wrong: the step's own cause, or a copied file's line endings converted."""
    if step.cause:
        return step.cause
    hint = converted(step.data, step.expect_out) if step.action == "copy" else None
    return (
        f"payload file {step.data.label}: {hint}"
        if hint
        else f"payload file {step.data.label} or its base is wrong"
    )


def _base_cause(step: Step) -> str:
    base = step.base
    return (
        mismatch_cause(base)
        or converted(base, step.expect_base)
        or (
            "the base must be the byte-exact output of the release's pinned conversion, or the "
            "original LLaMA weights (see `xorweights releases`)"
        )
    )


def out_mismatch(job: Job, algo: str, expected: str, actual: str) -> ChecksumMismatchError:
    """The error for an output that differs from what is expected of it (discarded)."""
    step = job.step
    got = f"{actual} bytes" if algo == "size" else f"{algo} {actual}"
    if job.verb == "base":
        return BaseMismatchError(
            f"generated base file {step.name}: {got}, but {job.release} hf_base expects "
            f"{expected}; {out_cause(step)}",
            path=step.name,
            expected=expected,
            actual=actual,
            algorithm=algo,
            stage="hf_base",
        )
    return ChecksumMismatchError(
        f"decoded {step.name}: {got}, but {job.release} decoded expects {expected}; "
        f"{out_cause(step)} (output discarded)",
        path=job.out,
        expected=expected,
        actual=actual,
        algorithm=algo,
        stage="decoded",
    )


def _check(kind: Literal["base", "out"], job: Job, got: Mapping[str, str]) -> bool:
    """Compare digests; raise on a mismatch; True when at least one expected digest matched."""
    step = job.step
    want = step.expect_base if kind == "base" else step.expect_out
    if want is None:
        return False
    bad = want.mismatch(got)
    if bad is None:
        return want.matched_by(got)
    algo, expected, actual = bad
    if kind == "out":
        raise out_mismatch(job, algo, expected, actual)
    assert step.base is not None
    raise BaseMismatchError(
        f"base file {step.base.label}: {algo} {actual}, but {job.release} hf_base expects "
        f"{expected}; {_base_cause(step)}",
        path=step.base.path or step.base.label,
        expected=expected,
        actual=actual,
        algorithm=algo,
        stage="hf_base",
    )


def _stream_failure(e: StreamError, job: Job) -> BaseException:
    """Turn a failed read or write into an error that names the file and the operation."""
    step, cause = job.step, e.cause
    source = {"data": step.data, "base": step.base}.get(e.role)
    own = explain(source, cause) if source is not None else None  # a source may reword our own errors too
    if own is not None:
        return own
    if isinstance(cause, XorWeightsError):
        return cause
    where = job.out if e.role == "out" else (source.path or source.label) if source is not None else None
    if isinstance(cause, OSError) and e.role == "out" and e.op == "write":
        return _write_error(job, cause)
    if isinstance(cause, OSError) and where is not None:
        return IOFailure("writing" if e.op == "write" else "reading", where, cause)
    return cause


def _write_error(job: Job, e: OSError) -> XorWeightsError:
    """A failed write of the output; a full disk while writing one of unknown size is a `NoSpaceError`."""
    if e.errno == errno.ENOSPC and job.space is not None:
        return job.space.error()
    return IOFailure("writing", job.out, e)


def _check_unchanged(
    source: Source | None, stream: Any, at_open: tuple[int, int] | None, read: int | None
) -> None:
    """Refuse a file input whose size changed during the pass, or that yielded fewer bytes than it had."""
    if source is None or source.path is None or at_open is None:
        return
    now = os.fstat(stream.fileno()).st_size
    if now != at_open[0] or (read is not None and read != at_open[0]):
        raise InputChangedError(
            source.path, at_open[0], read if read is not None and read != at_open[0] else now
        )


def _stored_progress(stream: Any, bar: Any) -> Any:
    """Progress of a transcoded input (gzip, delta frames) in stored bytes (the bar's total)."""
    done = 0

    def update(_n: int) -> None:
        nonlocal done
        pos = stream.consumed()
        if pos > done:
            bar.update(pos - done)
            done = pos

    return update


class _CrcFile(io.BufferedWriter):
    """The output file, taking the CRC-32 every output's record holds (`STATE_DIGEST`) as bytes
    are written. A `BufferedWriter` itself, so the engine still starts writeback behind it."""

    def __init__(self, atomic: AtomicFile, space: SpaceWatch | None = None) -> None:
        super().__init__(atomic.file.raw)  # type: ignore[attr-defined]
        self.crc = Crc32()
        self.space = space

    def write(self, data: Any) -> int:
        if self.space is not None:
            self.space.wrote(memoryview(data).nbytes)
        self.crc.update(data)
        return super().write(data)

    def close(self) -> None:  # the AtomicFile closes the file
        try:
            self.flush()
        except (OSError, ValueError):  # already closed (a failed job's temporary is gone)
            pass


# --- the pass ----------------------------------------------------------------------------------


def _enter(stack: ExitStack, source: Source | None) -> Any:
    return stack.enter_context(source.open()) if source is not None else None  # type: ignore[arg-type]


def run_job(job: Job, bar: Any, stop: threading.Event, depth: int, folder: OutputFolder) -> FileReport:
    """Make one output: the pass into a temporary, the checks, then the rename and its record."""
    step = job.step
    with ExitStack() as stack:
        data = _enter(stack, step.data)
        base = _enter(stack, step.base)
        atomic = stack.enter_context(_create(job.out, folder.own_dir))
        out_file = _CrcFile(atomic, job.space)
        wrapped = step.sink.wrap is not None
        written = (
            HashingWriter(out_file, step.sink.hash_written)
            if wrapped and step.sink.hash_written
            else out_file
        )
        stats = _pass(job, data, base, written, bar, stop, depth)
        base_ok, out_ok = _check_pass(job, data, base, stats)
        if step.sink.check is not None:
            _flushed(job, atomic)
            step.sink.check(atomic.temp)
        if job.plausible is not None and not out_ok:
            _check_plausible(job, atomic, job.plausible)
        digests = {
            **stats.digests.get("out", {}),
            **(written.hexdigests() if isinstance(written, HashingWriter) else {}),
            STATE_DIGEST: out_file.crc.hexdigest(),
        }
        size = _commit(job, atomic, folder, digests, stats)
    return FileReport(
        name=step.name,
        action=step.action,
        size=size,
        compressed=transcoding(data) or wrapped,
        data_size=_data_size(job, data, stats),
        base_size=stats.base_read if base is not None else None,
        digests=digests,
        input_digests=dict(stats.digests.get("data", {})),
        base_digests=dict(stats.digests.get("base", {})),
        verified=out_ok,
        base_verified=base_ok,
    )


def _data_size(job: Job, data: Any, stats: XorStats) -> int | None:
    """The model bytes an encode passed through, when not the size written (gzip, delta frames)."""
    if job.step.sink.wrap is not None:
        return stats.size
    return int(data.consumed()) if job.verb == "encode" and transcoding(data) else None


def _create(out: Path, temp_dir: Path) -> AtomicFile:
    try:
        return AtomicFile(out, temp_dir=temp_dir)
    except OSError as e:
        raise IOFailure("creating a file in", out.parent, e) from e


def _pass(
    job: Job, data: Any, base: Any, written: Any, bar: Any, stop: threading.Event, depth: int
) -> XorStats:
    wrap = job.step.sink.wrap
    gz = wrap(written) if wrap is not None else None
    try:
        stats = xor_stream(
            data,
            base,
            gz if gz is not None else written,
            hashes=job.hashes(),
            on_progress=_stored_progress(data, bar) if transcoding(data) else bar.update,
            should_stop=lambda: stop.is_set() or _cancel.requested(),
            depth=depth,
            drop_cache=job.drop_cache,
        )
        if gz is not None:
            gz.close()
        written.flush()
        return stats
    except StreamError as e:
        error = _failure(e, job)
    except OSError as e:  # closing the wrapping writer flushes its last block
        raise _write_error(job, e) from e
    try:
        raise error
    finally:
        del error


def _failure(e: StreamError, job: Job) -> BaseException:
    """The error to raise for a failed pass (see `_stream_failure`), caused by the stream's own.

    Callers raise it outside their handler, and with no local left holding it: an error whose
    context leads back to it (it may be the stream's cause itself), or whose traceback holds a frame
    that holds it, is a reference cycle, keeping the pass's buffers until a garbage collection.
    """
    error = _stream_failure(e, job)
    if error is not e.cause:
        error.__cause__ = e.cause
    return error


def _check_pass(job: Job, data: Any, base: Any, stats: XorStats) -> tuple[bool, bool]:
    """Inputs unchanged, output of the expected size and digests: `(base verified, output verified)`."""
    step = job.step
    _check_unchanged(step.data, data, job.inputs.get("payload"), None if transcoding(data) else stats.size)
    if base is not None and step.base is not None and step.base.path is not None:
        at_open = job.inputs["base"]
        expect_read = at_open[0] if job.hashes()["base"] else min(at_open[0], stats.size)
        _check_unchanged(step.base, base, at_open, None)
        if stats.base_read != expect_read:
            raise InputChangedError(step.base.path, expect_read, stats.base_read)
    want_size = step.expect_out.size if step.expect_out is not None else None
    if want_size is not None and stats.size != want_size:
        raise out_mismatch(job, "size", str(want_size), str(stats.size)) from None
    return _check("base", job, stats.digests.get("base", {})), _check(
        "out", job, stats.digests.get("out", {})
    )


def _flushed(job: Job, atomic: AtomicFile) -> None:
    try:
        atomic.file.flush()
    except OSError as e:
        raise _write_error(job, e) from e


def _commit(
    job: Job, atomic: AtomicFile, folder: OutputFolder, digests: dict[str, str], stats: XorStats
) -> int:
    """Journal the output, rename it into place, record it; returns its size."""
    name = job.step.name
    try:
        atomic.file.flush()
        size = os.fstat(atomic.file.fileno()).st_size
    except OSError as e:
        raise _write_error(job, e) from e
    # An encode keeps the digests of what it read: a later run that keeps this payload file
    # needs them for the manifest.
    sources = {r: dict(stats.digests.get(r, {})) for r in ("data", "base")} if job.verb == "encode" else None
    folder.intend(name, size, digests, job.inputs, durable=job.fsync, sources=sources)  # before the rename
    try:
        atomic.commit(durable=job.fsync)
    except OSError as e:
        raise IOFailure("saving", job.out, e) from e
    folder.record(name, digests, job.inputs, sources)
    return size


def _check_plausible(job: Job, atomic: AtomicFile, plausible: Callable[[Path, str], str | None]) -> None:
    """Refuse a decoded file that is not what its name says (only outputs no digest vouches for)."""
    step = job.step
    try:
        atomic.file.flush()
        size = os.fstat(atomic.file.fileno()).st_size
        why = plausible(atomic.temp, step.name)
    except OSError as e:
        raise IOFailure("checking", job.out, e) from e
    if why is None:
        return
    base_size = job.inputs["base"][0] if step.base is not None and step.base.path is not None else None
    if base_size is not None and size < base_size and not step.name.endswith(".json"):
        cause = (
            f"payload file {step.data.label} is shorter than its base ({size} < {base_size} bytes): "
            "truncated?, or payload and base are not the pair this release was made from"
        )
    else:
        cause = "payload and base are not the pair this release was made from"
    raise ImplausibleOutputError(
        f"decoded {step.name} is {why}; likely cause: {cause} (output discarded)",
        path=job.out,
        algorithm="plausibility",
        stage="decoded",
    )


class _Discard:
    """A sink that keeps nothing: only the digests of what passes through are wanted."""

    def write(self, b: Any) -> int:
        return len(b)

    def flush(self) -> None:
        pass


class _Compare:
    """A sink that compares what passes through with a file, byte for byte, instead of writing it."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.same = True
        self.crc = Crc32()

    def write(self, b: Any) -> int:
        n = len(b)
        if self.same and self.file.read(n) != bytes(b):
            self.same = False
        self.crc.update(b)
        return n

    def flush(self) -> None:
        pass


def same_output(step: Step, path: Path, algorithms: Sequence[str]) -> dict[str, str] | None:
    """The digests of the file at `path` when it holds exactly the bytes `step` makes (computed
    again from its sources, compared byte for byte, nothing written), else None.

    Raises:
        What making the output raises (a corrupt payload, a failed read).
    """
    with open(path, "rb") as file:
        sink = _Compare(file)
        hashes = [a for a in algorithms if a != STATE_DIGEST]
        stats = _make_into(sink, step, path, hashes, should_stop=_cancel.requested)
        if not sink.same or file.read(1):
            return None
    return {**stats.digests.get("out", {}), STATE_DIGEST: sink.crc.hexdigest()}


def output_digests(step: Step, algorithms: Sequence[str], out: Path) -> dict[str, str]:
    """The digests of the output `step` would make, computed without writing it."""
    return dict(_make_into(_Discard(), step, out, algorithms).digests.get("out", {}))


def _make_into(
    sink: Any, step: Step, out: Path, algorithms: Sequence[str], should_stop: Callable[[], bool] | None = None
) -> XorStats:
    """Make the output of `step` into `sink` instead of a file (`out` names it in errors), hashing it."""
    job = Job(step=step, out=out, inputs={}, verb="decode", release="")
    with ExitStack() as stack:
        data = _enter(stack, step.data)
        base = _enter(stack, step.base)
        try:
            return xor_stream(
                data,
                base,
                sink,
                hashes={"out": algorithms},
                chunk_size=1 << 20,
                depth=2,
                should_stop=should_stop,
            )  # type: ignore[arg-type]
        except StreamError as e:
            error = _failure(e, job)
    try:
        raise error
    finally:
        del error
