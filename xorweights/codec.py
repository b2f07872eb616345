"""Decode and encode releases: plan, cheap checks, parallel XOR passes, verification, commit."""

from __future__ import annotations

import io
import logging
import os
import shutil
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from . import _cancel, hub, legacy, native, plausible
from ._atomic import AtomicFile, HashingWriter, fsync_dir
from ._display import shown
from ._line_endings import line_ending_hint
from ._outdir import STATE_DIGEST, Crc32, Done, OutputFolder, file_id
from ._outdir import hash_path as hash_file  # md5, sha256 and the state's crc32
from ._paths import check_not_escaping_link, check_regular_file
from ._progress import byte_bar
from ._space import check_outputs
from .base import GeneratedBase
from .checksums import ChecksumManifest, FileDigest, load_checksums
from .constants import (
    ENV_TEST_DIE_AFTER_RENAME,
    GZIP_MAGIC,
    INFLATE_SLACK,
    PIPELINE_DEPTH,
    PIPELINE_SLOTS,
    STAGING_DIR,
    TORCH_SUFFIXES,
    WEIGHT_SUFFIXES,
    default_jobs,
)
from .engine import Cancelled, Role, StreamError, xor_stream
from .errors import (
    BaseMismatchError,
    ChecksumMismatchError,
    FormatError,
    ImplausibleOutputError,
    InputChangedError,
    InputError,
    IOFailure,
    MissingFileError,
    OutputExistsError,
    XorWeightsError,
)
from .native_manifest import MANIFEST_NAME, NativeManifest, check_base_model, is_native, load_manifest

logger = logging.getLogger(__name__)


def _version() -> str:
    from . import __version__

    return __version__


Format = Literal["auto", "xorweights", "oasst"]
#: How legacy payload files are read: gzip by their magic bytes, never gzip, or always gzip.
PayloadCompression = Literal["auto", "none", "gzip"]


@dataclass(frozen=True)
class FileReport:
    """How one output file was made and what was proven about it."""

    name: str
    action: Literal["xor", "copy"]
    size: int
    """Bytes written."""
    compressed: bool = False
    """The payload was (decode) or is (encode) a gzip stream."""
    data_size: int | None = None
    """An encode's gzip payload: the bytes before compression (the fine-tuned file's size)."""
    base_size: int | None = None
    digests: Mapping[str, str] = field(default_factory=dict)
    """Digests of the output file's bytes."""
    input_digests: Mapping[str, str] = field(default_factory=dict)
    """Digests of the input the output is made from (payload, or fine-tuned file)."""
    base_digests: Mapping[str, str] = field(default_factory=dict)
    verified: bool = False
    """The output matched a published digest."""
    base_verified: bool = False
    """The base file matched a published digest."""
    kept: bool = False
    """The output was already in place (an earlier run made it, or it matched its digest)."""


@dataclass(frozen=True)
class _Report:
    files: tuple[FileReport, ...]
    seconds: float

    @property
    def bytes_written(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_processed(self) -> int:
        """Bytes of model data passed through (for a gzip encode, before compression)."""
        return sum(f.size if f.data_size is None else f.data_size for f in self.files)

    @property
    def throughput(self) -> float:
        """Model bytes per second (`bytes_processed`)."""
        return self.bytes_processed / self.seconds if self.seconds > 0 else 0.0

    def _summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "bytes_written": self.bytes_written,
            "bytes_processed": self.bytes_processed,
            "throughput_bytes_per_s": round(self.throughput),
            "files": [_file_dict(f) for f in self.files],
        }


@dataclass(frozen=True)
class DecodeReport(_Report):
    """What `decode` wrote and verified."""

    payload_dir: str
    base_dir: str
    out_dir: str
    release: str | None = None
    unverified: tuple[str, ...] = ()
    """Outputs with no published digest to check against (only when checksums were given)."""
    gzip_backend: str | None = None
    """The decompressor used, when any payload file was gzip (`isal` or `zlib`)."""
    format: str = "oasst"
    """`xorweights` (native, tensor-level) or `oasst` (legacy, file-level)."""
    source: str | None = None
    """The Hub repo and commit the payload came from (`owner/name@commit`), if any."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": "decode",
            "format": self.format,
            "payload_dir": self.payload_dir,
            "source": self.source,
            "base_dir": self.base_dir,
            "out_dir": self.out_dir,
            "release": self.release,
            "gzip_backend": self.gzip_backend,
            "unverified": list(self.unverified),
            **self._summary(),
        }


@dataclass(frozen=True)
class EncodeReport(_Report):
    """What `encode` wrote; `manifest` holds the release's checksums when they were computed."""

    finetuned_dir: str
    base_dir: str
    out_dir: str
    compress: str | None = None
    manifest: ChecksumManifest | None = None
    format: str = "oasst"
    native_manifest: NativeManifest | None = None
    """The `xorweights.json` written with a native payload."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": "encode",
            "format": self.format,
            "finetuned_dir": self.finetuned_dir,
            "base_dir": self.base_dir,
            "out_dir": self.out_dir,
            "compress": self.compress,
            **self._summary(),
        }


def _file_dict(f: FileReport) -> dict[str, Any]:
    d = dict(f.__dict__)
    for k in ("digests", "input_digests", "base_digests"):
        d[k] = dict(d[k])
    return d


# --- one file --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    planned: legacy.PlannedFile
    out: Path
    hashes: Mapping[Role, Sequence[str]]
    inputs: Mapping[str, tuple[int, int]]
    expect_base: FileDigest | None = None
    expect_out: FileDigest | None = None
    release: str = ""
    encoding: bool = False
    compress: str | None = None
    gzip_mtime: int = 0
    hash_written: Sequence[str] = ()
    gzip_backend: str = "zlib"
    fsync: bool = True
    drop_cache: bool = False
    inflate_limit: int | None = None
    native: bool = False
    """A native payload file: never gzip, so no magic-byte detection or check."""
    payload_compression: PayloadCompression = "auto"


def _converted(path: Path | None, want: FileDigest | None) -> str | None:
    """Converted line endings as the cause of a wrong file, when they are (see `_line_endings`)."""
    if path is None or want is None:
        return None
    return line_ending_hint(path, want.hexdigests(), expected_size=want.size)


def _out_cause(job: _Job) -> str:
    """Why an output is wrong: a copied payload file's line endings converted, when they were."""
    p = job.planned
    hint = _converted(p.source, job.expect_out) if p.action == "copy" else None
    return f"payload file {p.source}: {hint}" if hint else f"payload file {p.source} or its base is wrong"


def _check(kind: Literal["base", "out"], job: _Job, got: Mapping[str, str], want: FileDigest | None) -> bool:
    """Compare digests; raise on a mismatch; True when at least one published digest matched."""
    if want is None:
        return False
    bad = want.mismatch(got)
    if bad is None:
        return want.matched_by(got)
    algo, expected, actual = bad
    p = job.planned
    if kind == "base":
        cause = (
            f"{p.base_label.split(' generated from ')[-1]} is not the LLaMA copy the release "
            f"was made from ({p.base_detail})"
            if p.base_open is not None
            else _converted(p.base, want)
            or "the base must be the byte-exact output of the release's pinned conversion, or the "
            "original LLaMA weights (see `xorweights releases`)"
        )
        raise BaseMismatchError(
            f"base file {p.base_name}: {algo} {actual}, but {job.release} hf_base expects "
            f"{expected}; {cause}",
            path=p.base if p.base is not None else p.base_label,
            expected=expected,
            actual=actual,
            algorithm=algo,
            stage="hf_base",
        )
    raise ChecksumMismatchError(
        f"decoded {p.name}: {algo} {actual}, but {job.release} decoded expects {expected}; "
        f"{_out_cause(job)} (output discarded)",
        path=job.out,
        expected=expected,
        actual=actual,
        algorithm=algo,
        stage="decoded",
    )


def _stored_progress(stream: Any, bar: Any) -> Any:
    """Progress of a gzip payload in stored bytes (the bar's total), not decompressed ones."""
    fd = stream.fileno()
    done = 0

    def update(_n: int) -> None:
        nonlocal done
        pos = os.lseek(fd, 0, os.SEEK_CUR)
        if pos > done:
            bar.update(pos - done)
            done = pos

    return update


class _Limited:
    """Caps what a decompressing reader may yield: a gzip bomb stops at `limit` bytes."""

    def __init__(self, stream: Any, limit: int, path: Path) -> None:
        self.stream, self.limit, self.path, self.count = stream, limit, path, 0

    def readinto(self, b: Any) -> int:
        n = int(self.stream.readinto(b))
        self.count += n
        if self.count > self.limit:
            raise FormatError(
                f"payload {self.path}: gzip stream inflates beyond {self.limit} bytes, more than the "
                "output can be (a corrupt or hostile payload, or the wrong base)",
                path=self.path,
                expected=self.limit,
                actual=self.count,
            )
        return n

    def fileno(self) -> int:
        return int(self.stream.fileno())


def _open(op: str, path: Path, opener: Any) -> Any:
    try:
        return opener()
    except OSError as e:
        raise IOFailure(op, path, e) from e


def _stream_failure(e: StreamError, job: _Job, compressed: bool) -> BaseException:
    """Turn a failed read or write into an error that names the file and the operation."""
    p, cause = job.planned, e.cause
    if isinstance(cause, XorWeightsError):
        return cause
    if e.role == "data" and compressed and isinstance(cause, legacy.GZIP_ERRORS):
        hint = (
            "; if the file is a plain XOR that merely begins with 1f 8b 08, decode with "
            '--payload-compression none (payload_compression="none")'
            if job.payload_compression == "auto"
            else ""
        )
        return FormatError(
            f"payload {p.source}: gzip stream is corrupt or truncated ({cause}){hint}", path=p.source
        )
    path = {"data": p.source, "base": p.base or p.base_label, "out": job.out}[e.role]
    if isinstance(cause, OSError) and path is not None:
        return IOFailure("writing" if e.op == "write" else "reading", path, cause)
    return cause


def _check_unchanged(path: Path, stream: Any, at_open: tuple[int, int], read: int | None) -> None:
    """Refuse an input whose size changed during the pass, or that yielded fewer bytes than it had."""
    now = os.fstat(stream.fileno()).st_size
    if now != at_open[0] or (read is not None and read != at_open[0]):
        raise InputChangedError(path, at_open[0], read if read is not None and read != at_open[0] else now)


def _open_data(job: _Job) -> tuple[Any, bool]:
    """Open the job's data stream, gzip or not as `payload_compression` says (see `decode`)."""
    p = job.planned
    may_be_gzip = not job.encoding and not job.native and p.action == "xor"
    return _open(
        "opening",
        p.source,
        lambda: legacy.open_source(
            p.source,
            detect_gzip=may_be_gzip and job.payload_compression != "none",
            require_gzip=may_be_gzip and job.payload_compression == "gzip",
            backend=job.gzip_backend,
        ),
    )


_renamed = [0]
_renamed_lock = threading.Lock()


def _die_after_rename_for_tests() -> None:
    """`ENV_TEST_DIE_AFTER_RENAME=N`: exit at once after the Nth rename, before it is recorded."""
    n = os.environ.get(ENV_TEST_DIE_AFTER_RENAME)
    if not n:
        return
    with _renamed_lock:
        _renamed[0] += 1
        if _renamed[0] >= int(n):
            os._exit(9)


class _CrcFile(io.BufferedWriter):
    """The output file, taking the CRC-32 every output's record holds (`STATE_DIGEST`) as bytes
    are written. A `BufferedWriter` itself, so the engine still starts writeback behind it."""

    def __init__(self, atomic: AtomicFile) -> None:
        super().__init__(atomic.file.raw)  # type: ignore[attr-defined]
        self.crc = Crc32()

    def write(self, data: Any) -> int:
        self.crc.update(data)
        return super().write(data)

    def close(self) -> None:  # the AtomicFile closes the file
        try:
            self.flush()
        except (OSError, ValueError):  # already closed (a failed job's temporary is gone)
            pass


def _run_job(job: _Job, bar: Any, stop: threading.Event, depth: int, folder: OutputFolder) -> FileReport:
    p = job.planned
    hashes, hash_written = job.hashes, job.hash_written
    with ExitStack() as stack:
        data, compressed = _open_data(job)
        stack.enter_context(data)
        if p.base_open is not None:
            base = stack.enter_context(_open("generating", p.base_name, p.base_open))
        elif p.base is not None:
            base = stack.enter_context(_open("opening", p.base, lambda: open(p.base, "rb")))
        else:
            base = None
        atomic = stack.enter_context(_open("creating a file in", job.out.parent, lambda: AtomicFile(job.out)))
        out_file = _CrcFile(atomic)
        sink: Any = HashingWriter(out_file, hash_written) if hash_written else out_file
        gz = legacy.gzip_writer(sink, p.name, mtime=job.gzip_mtime) if job.compress else None
        reader = _Limited(data, job.inflate_limit, p.source) if compressed and job.inflate_limit else data
        try:
            stats = xor_stream(
                reader,  # type: ignore[arg-type]
                base,
                gz if gz is not None else sink,
                hashes=hashes,
                on_progress=_stored_progress(data, bar) if compressed else bar.update,
                should_stop=lambda: stop.is_set() or _cancel.requested(),
                depth=depth,
                drop_cache=job.drop_cache,
            )
            if gz is not None:
                gz.close()
            out_file.flush()
        except StreamError as e:
            raise _stream_failure(e, job, compressed) from e.cause
        except OSError as e:  # closing the gzip writer flushes its last block
            raise IOFailure("writing", job.out, e) from e
        _check_unchanged(p.source, data, job.inputs["payload"], None if compressed else stats.size)
        if base is not None and p.base is not None:  # a generated base has no file to change
            hashed_whole = bool(job.hashes.get("base"))
            expect_read = job.inputs["base"][0] if hashed_whole else min(job.inputs["base"][0], stats.size)
            _check_unchanged(p.base, base, job.inputs["base"], None)  # type: ignore[arg-type]
            if stats.base_read != expect_read:
                raise InputChangedError(p.base, expect_read, stats.base_read)  # type: ignore[arg-type]
        want_size = job.expect_out.size if job.expect_out is not None and not job.encoding else None
        if want_size is not None and stats.size != want_size:
            raise ChecksumMismatchError(
                f"decoded {p.name}: {stats.size} bytes, but {job.release} decoded expects {want_size}; "
                f"{_out_cause(job)} (output discarded)",
                path=job.out,
                expected=str(want_size),
                actual=str(stats.size),
                algorithm="size",
                stage="decoded",
            )
        base_ok = _check("base", job, stats.digests.get("base", {}), job.expect_base)
        out_ok = _check("out", job, stats.digests.get("out", {}), job.expect_out)
        if job.encoding and not job.native and job.compress is None and p.action == "xor":
            # Encoding: a plain payload that begins like gzip would be misread when decoded.
            atomic.file.flush()
            with open(atomic.temp, "rb") as head:
                if head.read(len(GZIP_MAGIC)) == GZIP_MAGIC:
                    raise FormatError(
                        f"payload {p.name} would start with the gzip magic bytes and be misread "
                        "when decoded; encode with --compress gzip",
                        path=p.source,
                    )
        if not job.encoding and not out_ok:
            _check_plausible(job, atomic.temp, atomic.file, stats.size)
        written = sink.hexdigests() if isinstance(sink, HashingWriter) else {}
        digests = {**stats.digests.get("out", {}), **written, STATE_DIGEST: out_file.crc.hexdigest()}
        try:
            atomic.file.flush()
            size = os.fstat(atomic.file.fileno()).st_size
        except OSError as e:
            raise IOFailure("writing", job.out, e) from e
        # An encode keeps the digests of what it read: a later run that keeps this payload file
        # needs them for the manifest.
        sources = {r: dict(stats.digests.get(r, {})) for r in ("data", "base")} if job.encoding else None
        # Before the rename:
        folder.intend(p.name, size, digests, job.inputs, durable=job.fsync, sources=sources)
        try:
            atomic.commit(durable=job.fsync)
        except OSError as e:
            raise IOFailure("saving", job.out, e) from e
    _die_after_rename_for_tests()
    folder.record(p.name, digests, job.inputs, sources)
    return FileReport(
        name=p.name,
        action=p.action,
        size=size,
        compressed=compressed or job.compress is not None,
        data_size=stats.size if job.encoding and job.compress is not None else None,
        base_size=stats.base_read if p.action == "xor" else None,
        digests=digests,
        input_digests=dict(stats.digests.get("data", {})),
        base_digests=dict(stats.digests.get("base", {})),
        verified=out_ok,
        base_verified=base_ok,
    )


def _check_plausible(job: _Job, temp: Path, file: Any, size: int) -> None:
    """Refuse a decoded file that is not what its name says (only outputs no digest vouches for)."""
    p = job.planned
    try:
        file.flush()
        why = plausible.problem(temp, p.name)
    except OSError as e:
        raise IOFailure("checking", job.out, e) from e
    if why is None:
        return
    base_size = job.inputs.get("base", (None, 0))[0] if p.base is not None else None
    if base_size is not None and size < base_size and not p.name.endswith(".json"):
        cause = (
            f"payload file {p.source} is shorter than its base ({size} < {base_size} bytes): truncated?, "
            "or payload and base are not the pair this release was made from"
        )
    else:
        cause = "payload and base are not the pair this release was made from"
    raise ImplausibleOutputError(
        f"decoded {p.name} is not a valid {plausible.kind(p.name)} ({why}); likely cause: {cause} "
        "(output discarded)",
        path=job.out,
        algorithm="plausibility",
        stage="decoded",
    )


def _refuse_plain_payload(payload_dir: Path, raw: Sequence[str], only: Collection[str] | None) -> None:
    """Refuse a legacy payload whose weight files are valid model files as they are (never XOR-ed)."""
    weights = (".safetensors", *TORCH_SUFFIXES)
    for entry in sorted(os.scandir(payload_dir), key=lambda e: e.name):
        name = entry.name
        if not name.endswith(weights) or legacy.is_raw(name, raw) or (only is not None and name not in only):
            continue
        if not check_regular_file(Path(entry.path), payload_dir):  # Hub cache files are links: followed
            continue
        try:
            plain = plausible.problem(Path(entry.path), name) is None
        except OSError as e:
            raise IOFailure("reading", entry.path, e) from e
        if plain:
            raise ImplausibleOutputError(
                f"payload file {entry.path} is a valid {plausible.kind(name)} as it is, so it was not "
                f"XOR-ed: {payload_dir} looks like a model (or a native payload missing its "
                f"{MANIFEST_NAME}), not a payload",
                path=entry.path,
                algorithm="plausibility",
                stage="payload",
            )


def _run_jobs(
    jobs: list[_Job], n_jobs: int | None, folder: OutputFolder, *, progress: bool, desc: str
) -> list[FileReport]:
    """Run file jobs in parallel, largest first; the first failure stops the others."""
    if not jobs:
        return []
    jobs = sorted(jobs, key=lambda j: -j.inputs["payload"][0])
    total = sum(j.inputs["payload"][0] for j in jobs)
    stop = threading.Event()
    results: dict[str, FileReport] = {}
    errors: list[BaseException] = []
    workers = max(1, min(n_jobs or default_jobs(), len(jobs)))
    depth = max(2, min(PIPELINE_DEPTH, PIPELINE_SLOTS // workers))
    # An interrupt (or any exception here) sets the run's cancellation event: queued jobs are
    # dropped and the running ones stop at their next chunk, removing their temporaries.
    with (
        byte_bar(total, desc, enabled=progress) as bar,
        ThreadPoolExecutor(workers) as pool,
        _cancel.guard(pool),
    ):
        futures = {pool.submit(_run_job, j, bar, stop, depth, folder): j for j in jobs}
        try:
            for fut in as_completed(futures):
                if fut.cancelled():
                    continue
                try:
                    rep = fut.result()
                except Cancelled:
                    continue
                except BaseException as e:  # noqa: BLE001 (re-raised below, after the others stop)
                    if not errors:
                        stop.set()
                        for other in futures:  # queued jobs are not started
                            other.cancel()
                    errors.append(e)
                    continue
                results[rep.name] = rep
        except BaseException:
            stop.set()
            raise
    if errors:
        for extra in errors[1:]:
            logger.debug("also failed: %s", extra)
        raise errors[0]
    return list(results.values())


def _inputs(p: legacy.PlannedFile, generated_id: tuple[int, int] | None = None) -> dict[str, tuple[int, int]]:
    ids = {"payload": file_id(p.source)}
    if p.base is not None:
        ids["base"] = file_id(p.base)
    elif p.base_open is not None and generated_id is not None:
        ids["base"] = generated_id
    return ids


def _keep(
    folder: OutputFolder,
    name: str,
    inputs: Mapping[str, tuple[int, int]],
    want: Mapping[str, str],
    size: int | None,
    *,
    force: bool,
    rehash: bool,
) -> Done | None:
    """The record of an output in place that can be kept, else None (it is made again).

    Kept unread: what an earlier run recorded and nothing has touched since (`OutputFolder.kept`;
    never with `rehash`). Otherwise the file is hashed and kept if it matches its published
    digests or, with none, the digests recorded from the same inputs. A file no run recorded is
    hashed only against published digests, and not with `force`.
    """
    if not rehash:
        done = folder.kept(name, inputs, want, size)
        if done is not None:
            return done
    record = folder.done.get(name)
    if record is None and (force or not want):
        return None
    compare = dict(want) or (dict(record.digests) if record and dict(record.inputs) == dict(inputs) else {})
    final = folder.path / name
    st = os.lstat(final) if final.is_file() and not final.is_symlink() else None
    if not compare or st is None or (size is not None and st.st_size != size):
        return None
    got = hash_file(final, sorted({*compare, STATE_DIGEST}))
    if any(got[a] != d for a, d in compare.items()):
        if record is not None:
            source = "published" if want else "recorded"
            logger.warning("%s: no longer matches its %s digests; making it again", name, source)
        return None
    return folder.record(name, got, inputs, record.sources if record is not None else None)


def _triage(
    planned: Sequence[legacy.PlannedFile],
    folder: OutputFolder,
    expected: Mapping[str, FileDigest],
    force: bool,
    *,
    keep: bool,
    generated_id: tuple[int, int] | None = None,
    rehash: bool = False,
    inputs: Mapping[str, Mapping[str, tuple[int, int]]] | None = None,
) -> tuple[list[legacy.PlannedFile], list[FileReport]]:
    """Split the plan into files to make and outputs already in place that can be kept.

    Kept (see `_keep`): outputs a previous run recorded and nothing touched since, and outputs
    that hash to their published (or, for ours, recorded) digests. With `rehash`, every output is
    hashed. Files in the way that are neither ours nor proven are refused unless `force`; a
    symlink out of the folder is always refused. `inputs` overrides what identifies each file's
    inputs (an encode adds the options the bytes depend on).
    """
    todo: list[legacy.PlannedFile] = []
    kept: list[FileReport] = []
    taken: list[str] = []
    for p in planned:
        final = folder.path / p.name
        check_not_escaping_link(final, folder.path)
        want = (
            {a: expected[p.name].get(a) or "" for a in expected[p.name].algorithms()}
            if p.name in expected
            else {}
        )
        ids = inputs[p.name] if inputs is not None else _inputs(p, generated_id)
        size = expected[p.name].size if p.name in expected else None
        done = _keep(folder, p.name, ids, want, size, force=force, rehash=rehash) if keep else None
        if done is not None:
            logger.info("%s: already in place and %s; kept", p.name, "verified" if want else "complete")
            kept.append(
                FileReport(
                    name=p.name,
                    action=p.action,
                    size=done.size,
                    digests=dict(done.digests),
                    input_digests=dict(done.sources.get("data", {})),
                    base_digests=dict(done.sources.get("base", {})),
                    verified=bool(want),
                    kept=True,
                )
            )
            continue
        if (final.exists() or final.is_symlink()) and not folder.is_ours(p.name) and not force:
            taken.append(p.name)
        todo.append(p)
    if taken:
        raise OutputExistsError(
            f"{folder.path} already holds {', '.join(taken)}, not made by xorweights"
            + (" and not matching the published checksums" if expected else "")
            + "; refusing to overwrite (use --force)",
            path=folder.path / taken[0],
        )
    return todo, kept


@dataclass(frozen=True)
class _Trial:
    """What trying one reading of a payload file needs (see `_settle_by_digest`)."""

    base_dir: Path
    out_dir: Path
    release: str
    backend: str
    compression: PayloadCompression


class _Discard:
    """A sink that keeps nothing: only the digests of what passes through are wanted."""

    def write(self, b: Any) -> int:
        return len(b)


def _trial_digests(p: legacy.PlannedFile, want: FileDigest, trial: _Trial) -> dict[str, str]:
    """The digests of the output `p` would make, computed without writing it."""
    job = _Job(
        planned=p, out=trial.out_dir / p.name, hashes={}, inputs={}, gzip_backend=trial.backend,
        payload_compression=trial.compression,
    )  # fmt: skip
    with ExitStack() as stack:
        data, compressed = _open_data(job)
        stack.enter_context(data)
        base, limit, base_path = None, INFLATE_SLACK, p.base
        if base_path is not None:
            base = stack.enter_context(_open("opening", base_path, lambda: open(base_path, "rb")))
            limit += 2 * base_path.stat().st_size
        reader = _Limited(data, limit, p.source) if compressed else data
        try:
            stats = xor_stream(
                reader,  # type: ignore[arg-type]
                base,
                _Discard(),  # type: ignore[arg-type]
                hashes={"out": want.algorithms()},
                chunk_size=1 << 20,
                depth=2,
            )
        except StreamError as e:
            raise _stream_failure(e, job, compressed) from e.cause
    return dict(stats.digests.get("out", {}))


def _settle_by_digest(
    p: legacy.PlannedFile, want: FileDigest | None, raw: Sequence[str], trial: _Trial
) -> legacy.PlannedFile:
    """Make a file under the legacy raw rule (`added_tokens.json`) the way its published digest says.

    Without a digest, `legacy.raw_rule_action` has decided. With one, each reading is tried (the
    rule's first): as stored, and XOR-ed with the base's file of that name when there is one; the
    one whose output matches wins.

    Raises:
        `ChecksumMismatchError`: no reading matches (before anything is written); the message
            names the rule.
    """
    if want is None or not legacy.follows_raw_rule(p.name, raw):
        return p
    base_file = trial.base_dir / p.name
    readings = [p]
    if p.action == "xor":
        readings.append(replace(p, base=None, action="copy"))
    elif base_file.is_file():
        readings.append(replace(p, base=base_file, action="xor"))
    tried: list[tuple[legacy.PlannedFile, dict[str, str]]] = []
    for reading in readings:
        got = _trial_digests(reading, want, trial)
        if want.matched_by(got):
            if reading is not p:
                logger.info("%s: %s matches the published digest", p.name, _reading(reading))
            return reading
        tried.append((reading, got))
    algo = want.algorithms()[0]
    expected = want.get(algo)
    gives = "; ".join(f"{_reading(r)} gives {got.get(algo)}" for r, got in tried)
    if len(tried) == 1:
        gives += f"; the base has no {p.name} to XOR with"
    hint = _converted(p.source, want)  # the file as stored is one of the readings
    cause = (
        f"Payload file {p.source}: {hint}" if hint else f"The payload file or the base's {p.name} is wrong"
    )
    raise ChecksumMismatchError(
        f"decoded {p.name}: {trial.release} decoded expects {algo} {expected}, but no reading of payload "
        f"file {p.source} gives it ({gives}). Rule: {legacy.raw_rule(p.name)}. {cause} (nothing written)",
        path=p.source,
        expected=expected,
        actual=tried[0][1].get(algo),
        algorithm=algo,
        stage="decoded",
    )


def _reading(p: legacy.PlannedFile) -> str:
    return f"XOR-ed with {p.base}" if p.action == "xor" else "as stored"


def _check_space(
    out_dir: Path,
    todo: Sequence[legacy.PlannedFile],
    published: Mapping[str, FileDigest],
    *,
    gzip: bool = False,
) -> None:
    """Refuse, before anything is written, outputs that `out_dir`'s file system cannot hold.

    Each output's size is its published size; else its source's (an XOR output is as long as its
    payload file, an encoded payload as its fine-tuned file, a gzip one at most about as long);
    for a legacy gzip payload file (with `gzip`), the larger of it and its base, since what it
    inflates to is known only once read.

    Raises:
        `NoSpaceError`: both figures, e.g. `not enough free space in out: 12.3 GiB needed for 5
            outputs, 4.1 GiB free`.
    """
    sizes: dict[str, int] = {}
    for p in todo:
        want = published.get(p.name)
        if want is not None and want.size is not None:
            sizes[p.name] = want.size
            continue
        try:
            size = p.source.stat().st_size
            if gzip and p.action == "xor":
                with open(p.source, "rb") as f:
                    if f.read(len(GZIP_MAGIC)) == GZIP_MAGIC:
                        size = max(size, p.base.stat().st_size if p.base is not None else 0)
        except OSError as e:
            raise IOFailure("reading", p.source, e) from e
        sizes[p.name] = size
    check_outputs(out_dir, sizes)


def _require_gzip(planned: Sequence[legacy.PlannedFile]) -> None:
    """Refuse, before anything is written, an XOR-ed payload file that is not gzip.

    Raises:
        `FormatError`: naming the first such file.
    """
    for p in planned:
        if p.action != "xor":
            continue
        try:
            with open(p.source, "rb") as f:
                head = f.read(len(GZIP_MAGIC))
        except OSError as e:
            raise IOFailure("reading", p.source, e) from e
        legacy.check_gzip_head(p.source, head)


def _generated_base(payload_dir: Path, base_dir: Path, raw: Sequence[str], mode: str) -> Any:
    """The generated base to decode against, or None to use the base folder's files."""
    if mode not in ("auto", "files", "generate"):
        raise InputError(f"unknown base mode {mode!r}; expected auto, files or generate")
    if mode == "files" or not base_dir.is_dir():
        return None
    if not GeneratedBase.looks_like(base_dir):
        if mode == "generate":
            raise InputError(f"{base_dir} holds no LLaMA weights to generate a base from", path=base_dir)
        return None
    if mode == "auto":
        needed = [e.name for e in os.scandir(payload_dir) if e.is_file() and not legacy.is_raw(e.name, raw)]
        if all((base_dir / n).is_file() for n in needed if not n.startswith(".")):
            return None
    logger.info("generating the base from the LLaMA weights in %s", base_dir)
    return GeneratedBase(base_dir)


#: Inside a payload folder's staging folder: the record of the payload files in `--out` itself
#: (the payload folder gets published as it is, so it holds no state file of its own).
_PAYLOAD_STATE = ".payload-state"


def _payload_state(out_dir: Path) -> Path:
    return out_dir / STAGING_DIR / _PAYLOAD_STATE


def _fresh_staging(out_dir: Path) -> Path:
    """The staging folder inside `out_dir`. What a killed encode staged there is kept: its records
    (the folder's own state file) say which staged files are complete and from which inputs."""
    staging = out_dir / STAGING_DIR
    try:
        if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
            staging.unlink()
        staging.mkdir(exist_ok=True)
    except OSError as e:
        raise IOFailure("preparing", staging, e) from e
    return staging


@contextmanager
def _drop_empty_staging(staging: Path) -> Iterator[None]:
    """On a failure, remove a staging folder that holds no file (only the folders a refused run made)."""
    try:
        yield
    except Exception:
        if staging.is_dir() and not staging.is_symlink() and not any(p.is_file() for p in staging.rglob("*")):
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _has_sources(f: FileReport, p: legacy.PlannedFile, algos: Sequence[str], written: Sequence[str]) -> bool:
    """Whether a kept payload file's record holds every digest the encode reports for it."""
    have = [(f.digests, written), (f.input_digests, algos)]
    if p.base is not None:
        have.append((f.base_digests, algos))
    return all(a in d for d, want in have for a in want)


def _split_kept(
    kept: Sequence[FileReport],
    planned: Sequence[legacy.PlannedFile],
    algos: Sequence[str],
    written: Sequence[str] = ("sha256",),
) -> tuple[list[FileReport], list[legacy.PlannedFile]]:
    """Kept payload files whose records hold the digests needed, and the plan of the others
    (recorded without them: made again)."""
    by_name = {p.name: p for p in planned}
    ok = [f for f in kept if _has_sources(f, by_name[f.name], algos, written)]
    names = {f.name for f in ok}
    return ok, [by_name[f.name] for f in kept if f.name not in names]


def _publish_staged(
    stage: OutputFolder,
    folder: OutputFolder,
    staged: Sequence[FileReport],
    inputs: Mapping[str, Mapping[str, tuple[int, int]]],
) -> None:
    """Move finished payload files from the staging folder into `--out`, each recorded in the
    payload folder's journal before its rename (a kill after it leaves a file the next run
    recognises) and dropped from the staging records after it. `xorweights.json` is removed
    first: the caller writes it last, so a half-made payload never passes for a finished one."""
    out_dir = folder.path
    try:
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
        for f in staged:
            sources = {"data": f.input_digests, "base": f.base_digests}
            folder.intend(f.name, f.size, f.digests, inputs[f.name], sources=sources)
            os.replace(stage.path / f.name, out_dir / f.name)
            _die_after_rename_for_tests()
            folder.record(f.name, f.digests, inputs[f.name], sources)
            stage.discard([f.name])
        fsync_dir(out_dir)
    except OSError as e:
        raise IOFailure("saving the payload in", out_dir, e) from e


def _recognise_payload(
    prep: native.EncodePlan, src_dir: Path, base_dir: Path, out_dir: Path
) -> tuple[list[FileReport], NativeManifest] | None:
    """The files and manifest of a finished payload in `out_dir` made from these very inputs, or None.

    Its `xorweights.json` is the record: every payload file, fine-tuned file and whole base file
    is hashed (once) against it, and the manifest these would give must be the one in place.
    """
    try:
        old = load_manifest(out_dir / MANIFEST_NAME)
    except XorWeightsError:
        return None
    by_name = {p.name: p for p in prep.planned}
    if sorted(f.name for f in old.files) != sorted(by_name):
        return None
    reports = []
    try:
        for entry in old.files:
            out_file, src = out_dir / entry.name, src_dir / entry.name
            if not out_file.is_file() or out_file.is_symlink():
                return None
            if out_file.stat().st_size != entry.payload_size or src.stat().st_size != entry.size:
                return None
            got = hash_file(out_file, ["sha256", STATE_DIGEST])
            if got["sha256"] != entry.payload_sha256 or hash_file(src, ["sha256"])["sha256"] != entry.sha256:
                return None
            base = hash_file(base_dir / entry.name, ["sha256"]) if entry.base_file is not None else {}
            if entry.base_file is not None and base["sha256"] != entry.base_file.sha256:
                return None
            reports.append(
                FileReport(
                    name=entry.name,
                    action=by_name[entry.name].action,
                    size=entry.payload_size,
                    digests=got,
                    input_digests={"sha256": entry.sha256},
                    base_digests=base,
                    kept=True,
                )
            )
        new = native.build_manifest(prep, reports, src_dir, base_dir, out_dir, encoder=old.encoder)
    except OSError:
        return None
    return (reports, old) if replace(new, base_model=old.base_model) == old else None


def _check_listed(
    published: ChecksumManifest,
    listed: Collection[str],
    decoded: Collection[str],
    names: set[str],
    where: Path,
) -> None:
    """The payload's outputs `names` are those the checksums describe: some of them listed (else a
    wrong release), and every `decoded` output among them (else an incomplete payload).

    Raises:
        `InputError`: no output is listed. `MissingFileError`: a listed output has no payload file.
    """
    weights = {n for n in names if n.endswith(WEIGHT_SUFFIXES)}
    if not set(listed) & (weights or names):
        raise InputError(
            f"none of the payload's {'weight ' if weights else ''}files "
            f"({', '.join(sorted(weights or names)[:3])}, ...) is listed in the checksums of "
            f"{published.release}; wrong release?",
            path=published.path or published.release,
        )
    absent = sorted(set(decoded) - names)
    if absent:
        first = ", ".join(shown(n) for n in absent[:3]) + (", ..." if len(absent) > 3 else "")
        raise MissingFileError(
            f"the checksums of {published.release} list {len(absent)} outputs that {where} has no "
            f"payload file for ({first}); an incomplete download or copy?",
            path=where / absent[0],
        )


def _check_out_dir(out: Path, inputs: Mapping[str, Path]) -> None:
    for role, folder in inputs.items():
        if out.resolve() == folder.resolve():
            raise InputError(f"--out must differ from the {role} folder ({folder})", path=out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out must be a folder: {out}", path=out)


# --- decode / encode ---------------------------------------------------------------------------


def decode(
    payload: os.PathLike[str] | str,
    *,
    base: os.PathLike[str] | str,
    out: os.PathLike[str] | str,
    checksums: os.PathLike[str] | str | ChecksumManifest | None = None,
    format: Format = "auto",
    jobs: int | None = None,
    force: bool = False,
    fsync: bool = True,
    drop_cache: bool = False,
    gzip_backend: str | None = None,
    payload_compression: PayloadCompression = "auto",
    base_mode: Literal["auto", "files", "generate"] = "auto",
    verify: bool = False,
    download_dir: os.PathLike[str] | str | None = None,
    cache_dir: os.PathLike[str] | str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    offline: bool | None = None,
    progress: bool = False,
    revision: str | None = None,
    subfolder: str | None = None,
    local_dir: os.PathLike[str] | str | None = None,
) -> DecodeReport:
    """Rebuild fine-tuned files from an XOR payload and the base they were made against.

    Args:
        payload: the payload folder (or a repo download holding it a few levels down), or a Hub
            repo `owner/name[@revision][:subfolder]`: then only the payload's files are downloaded
            (Hub cache or `local_dir`), each one decoded is checked against the sha256 the Hub
            reports before it is read, and the checksums come from `checksums/` (by repo id)
            or from the repo's model card.
        base: the folder with the base files, named as in the payload.
        out: where the decoded files go; created if needed.
        checksums (*optional*): a release name, repo id, manifest or `md5sum` file. Every base
            file is checked against its `hf_base` digest and every output against its `decoded`
            digest in the same pass; an output is renamed into place only when both match. An
            `md5sum`/`sha256sum` line file lists the decoded outputs.
        format: `auto` or `oasst` (the legacy file-level XOR; gzip payloads recognised).
        jobs: files decoded at once (default: the cores, at most 4). Memory does not grow with file
            size: one job uses 4 slots of 32 MiB, 2-4 jobs share 8, more jobs take 2 each.
        force: overwrite files already in `out`.
        fsync: make each output durable before it is renamed into place (off: faster, but a
            power failure may leave a final name over missing data).
        drop_cache: drop inputs' and outputs' cached pages behind the cursor, so a 65 GB decode
            does not evict the machine's page cache.
        gzip_backend: `auto` (python-isal when installed), `isal` or `zlib`.
        payload_compression: legacy payloads only: `auto` reads a file starting with `1f 8b 08`
            as gzip; `none` never decompresses (a plain XOR that happens to start that way);
            `gzip` requires every XOR-ed payload file to be gzip.
        base_mode: `files` XORs with the base folder's files as they are; `generate` treats the
            base folder as LLaMA weights in any form (Meta's original, any HF copy) and streams
            the pinned conversion's files from it into the XOR pass; `auto` generates when the
            folder lacks files the payload needs and holds LLaMA weights.
        verify: outputs already in place (an earlier run's, recorded in the folder's state
            file with unchanged size, modification and change time) are kept unread; with
            `verify` they are hashed again too, and remade if they no longer match.
        local_dir (alias `download_dir`), cache_dir, endpoint, token, offline: Hub access for a
            repo id (defaults: the Hub cache, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`).
        revision: the repo's branch, tag or commit (or `owner/name@revision`).
        subfolder: the payload folder, when several folders of the repo (or local folder) hold
            model files (or `owner/name:subfolder`). Otherwise the payload is the one native
            payload, else the folder holding the files the checksums name, else the one named
            like the repo.
        progress: show progress on stderr (a bar on a terminal, else a line every 30 s).

    Returns:
        `DecodeReport` with every file's size and digests; `out_dir` holds the verified files.

    Raises:
        `MissingFileError`: the payload, the base folder or a base file is missing (named,
            before anything is written).
        `HubError`: the repo cannot be fetched (unknown, no access, offline without a cache).
        `PayloadMismatchError`: a downloaded payload file differs from the Hub's sha256.
        `BaseMismatchError`: a base file is not the one the release was made against.
        `ChecksumMismatchError`: an output differs from its published digest.
        `OutputExistsError`: `out` already holds an output file and `force` is false.
        `FormatError`: a payload file is corrupt (e.g. a truncated gzip stream).
    """
    if format not in ("auto", "xorweights", "oasst"):
        raise InputError(f"unknown payload format {format!r}; expected auto, xorweights or oasst")
    if payload_compression not in ("auto", "none", "gzip"):
        raise InputError(f"unknown payload compression {payload_compression!r}; expected auto, none or gzip")
    started = time.perf_counter()
    if local_dir is not None and download_dir is not None and Path(local_dir) != Path(download_dir):
        raise InputError("local_dir and download_dir (its old name) name different folders", path=local_dir)
    access = hub.HubAccess(
        local_dir=local_dir if local_dir is not None else download_dir,
        cache_dir=cache_dir, endpoint=endpoint, token=token, offline=offline,
    )  # fmt: skip
    manifest = (
        checksums
        if isinstance(checksums, ChecksumManifest) or checksums is None
        else load_checksums(checksums, access=access)
    )
    payload_dir, fetched = hub.locate_payload(
        payload, access, revision=revision, subfolder=subfolder, checksums=manifest, progress=progress,
        apart={"base": base, "out": out},
    )  # fmt: skip
    if fetched is not None:
        manifest = manifest or fetched.checksums  # bundled for the repo id, or the card's: found by fetch
    check_regular_file(payload_dir / MANIFEST_NAME, payload_dir)  # a link out, or a FIFO: refused unread
    base_dir, out_dir = Path(base), Path(out)
    if is_native(payload_dir) and format != "oasst":
        if payload_compression == "gzip":
            raise InputError(
                f"{payload_dir} is a native payload, never gzip; --payload-compression gzip applies to "
                "legacy payloads",
                path=payload_dir,
            )
        return _decode_native(
            payload_dir, base_dir, out_dir, manifest, started,
            jobs=jobs, force=force, fsync=fsync, drop_cache=drop_cache, progress=progress,
            fetched=fetched, verify=verify,
        )  # fmt: skip
    if format == "xorweights":
        raise InputError(
            f"{payload_dir} has no {MANIFEST_NAME}: not a native payload (try --format auto)",
            path=payload_dir,
        )
    raw = manifest.raw_files if manifest else ()
    _refuse_plain_payload(payload_dir, raw, fetched.files if fetched else None)
    generated = _generated_base(payload_dir, base_dir, raw, base_mode)
    planned = legacy.plan(
        payload_dir, base_dir, raw_patterns=raw, generated=generated, only=fetched.files if fetched else None
    )
    generated_id = generated.identity() if generated is not None else None
    _check_out_dir(out_dir, {"payload": payload_dir, "base": base_dir})

    # A line file names no stage: given to decode, it lists the decoded outputs.
    line_file = manifest is not None and manifest.unstaged is not None
    hf_base = manifest.stage("hf_base") if manifest and not line_file else {}
    decoded = manifest.stage("decoded") if manifest else {}
    if manifest is not None:
        _check_listed(manifest, set(hf_base) | set(decoded), decoded, {p.name for p in planned}, payload_dir)
        for p in planned:  # cheap checks first: sizes where published
            want = hf_base.get(p.name)
            if p.base is not None and want is not None and want.size is not None:
                size = p.base.stat().st_size
                if size != want.size:
                    cause = _converted(p.base, want) or (
                        "the base must be the byte-exact output of the pinned conversion"
                    )
                    raise BaseMismatchError(
                        f"base file {p.base}: {size} bytes, but {manifest.release} hf_base expects "
                        f"{want.size}; {cause}",
                        path=p.base,
                        expected=str(want.size),
                        actual=str(size),
                        algorithm="size",
                        stage="hf_base",
                    )
    backend = legacy.gzip_backend(gzip_backend)
    trial = _Trial(base_dir, out_dir, manifest.release if manifest else "", backend, payload_compression)
    planned = [_settle_by_digest(p, decoded.get(p.name), raw, trial) for p in planned]
    if payload_compression == "gzip":
        _require_gzip(planned)
    with OutputFolder(out_dir) as folder:
        todo, kept = _triage(
            planned, folder, decoded, force, keep=True, generated_id=generated_id, rehash=verify
        )
        _check_space(out_dir, todo, decoded, gzip=payload_compression != "none")
        if fetched is not None:
            hub.check_lfs_files(
                fetched, [p.name for p in todo], jobs=jobs or default_jobs(), progress=progress
            )
        job_list = []
        for p in todo:
            eb = hf_base.get(p.name) if p.action == "xor" else None
            eo = decoded.get(p.name)
            inputs = _inputs(p, generated_id)
            limit = (
                eo.size if eo and eo.size is not None else 2 * inputs.get("base", (0, 0))[0] + INFLATE_SLACK
            )
            job_list.append(
                _Job(
                    planned=p,
                    out=out_dir / p.name,
                    hashes={"base": eb.algorithms() if eb else (), "out": eo.algorithms() if eo else ()},
                    inputs=inputs,
                    expect_base=eb,
                    expect_out=eo,
                    release=manifest.release if manifest else "",
                    gzip_backend=backend,
                    fsync=fsync,
                    drop_cache=drop_cache,
                    inflate_limit=limit,
                    payload_compression=payload_compression,
                )
            )
        try:
            made = _run_jobs(job_list, jobs, folder, progress=progress, desc="decode")
        except ImplausibleOutputError:  # the pair is wrong: what it made without a digest is garbage too
            suspects = [p.name for p in todo if not (decoded.get(p.name) and decoded[p.name].algorithms())]
            for name in folder.discard(suspects):
                logger.warning(
                    "%s: removed (made from the same payload and base, with no digest)", shown(name)
                )
            raise
    files = sorted([*made, *kept], key=lambda f: f.name)
    unverified = tuple(f.name for f in files if manifest is not None and not f.verified)
    for name in unverified:
        logger.warning("%s: no published decoded digest, output not verified", name)
    return DecodeReport(
        files=tuple(files),
        seconds=time.perf_counter() - started,
        payload_dir=str(payload_dir),
        base_dir=str(base_dir),
        out_dir=str(out_dir),
        release=manifest.release if manifest else None,
        unverified=unverified,
        gzip_backend=backend if any(f.compressed for f in files) else None,
        source=fetched.source if fetched else None,
    )


def _decode_native(
    payload_dir: Path,
    base_dir: Path,
    out_dir: Path,
    published: ChecksumManifest | None,
    started: float,
    *,
    jobs: int | None,
    force: bool,
    fsync: bool,
    drop_cache: bool,
    progress: bool,
    fetched: hub.HubPayload | None = None,
    verify: bool = False,
) -> DecodeReport:
    """Decode a native payload: prove the base tensors, then rebuild every file in one pass each."""
    manifest = load_manifest(payload_dir / MANIFEST_NAME)
    native.check_payload_files(manifest, payload_dir)
    if published is not None:
        decoded = published.stage("decoded")
        _check_listed(published, decoded, decoded, {f.name for f in manifest.files}, payload_dir)
    _check_out_dir(out_dir, {"payload": payload_dir, "base": base_dir})
    if not base_dir.is_dir() and (manifest.base_tensors or any(f.base_file for f in manifest.files)):
        raise MissingFileError(f"base folder not found: {base_dir}", path=base_dir)
    store = native.open_store(manifest, base_dir)
    planned = native.decode_plan(manifest, payload_dir, base_dir, store)
    expected = native.expected_outputs(manifest, published)
    identity = store.identity() if store is not None else None
    where = str(payload_dir / MANIFEST_NAME)
    with OutputFolder(out_dir) as folder:
        todo, kept = _triage(
            planned, folder, expected, force, keep=True, generated_id=identity, rehash=verify
        )
        _check_space(out_dir, todo, expected)
        names = {p.name for p in todo}
        if fetched is not None:
            hub.check_lfs_files(fetched, sorted(names), jobs=jobs or default_jobs(), progress=progress)
        needed = {t.base for f in manifest.files if f.name in names for t in f.tensors if t.base}
        native.check_base(
            manifest, store, base_dir, jobs=jobs or default_jobs(), progress=progress, names=needed,
            files=names,
        )  # fmt: skip
        job_list = [
            _Job(
                planned=p,
                out=out_dir / p.name,
                hashes={"out": expected[p.name].algorithms()},
                inputs=_inputs(p, identity),
                expect_out=expected[p.name],
                release=where,
                fsync=fsync,
                drop_cache=drop_cache,
                native=True,
            )
            for p in todo
        ]
        made = _run_jobs(job_list, jobs, folder, progress=progress, desc="decode")
    made = [replace(f, base_verified=f.action == "xor") for f in made]
    files = sorted([*made, *kept], key=lambda f: f.name)
    return DecodeReport(
        files=tuple(files),
        seconds=time.perf_counter() - started,
        payload_dir=str(payload_dir),
        base_dir=str(base_dir),
        out_dir=str(out_dir),
        release=published.release if published else None,
        format="xorweights",
        source=fetched.source if fetched else None,
    )


def _encode_native_files(
    prep: native.EncodePlan,
    folder: OutputFolder,
    staging: Path,
    src_dir: Path,
    base_dir: Path,
    *,
    force: bool,
    jobs: int | None,
    progress: bool,
    base_name: str | None = None,
) -> tuple[list[FileReport], NativeManifest]:
    """Stage the payload files not already in place, move them into `--out`, write the manifest."""
    out_dir = folder.path
    inputs = {p.name: _inputs(p, prep.identity) for p in prep.planned}
    todo, kept = _triage(prep.planned, folder, {}, force, keep=True, generated_id=prep.identity)
    kept, again = _split_kept(kept, prep.planned, ("sha256",))
    todo += again
    _fresh_staging(out_dir)
    try:
        with OutputFolder(staging) as stage:
            # Staged files are ours whatever their records say (force): only complete ones are kept.
            todo, staged = _triage(todo, stage, {}, True, keep=True, generated_id=prep.identity)
            staged, again = _split_kept(staged, prep.planned, ("sha256",))
            todo += again
            _check_space(out_dir, todo, {})
            job_list = [
                _Job(
                    planned=p,
                    out=staging / p.name,
                    hashes={"data": ("sha256",), "base": ("sha256",) if p.base is not None else ()},
                    inputs=inputs[p.name],
                    encoding=True,
                    hash_written=("sha256",),
                    native=True,
                )
                for p in todo
            ]
            made = _run_jobs(job_list, jobs, stage, progress=progress, desc="encode")
            _publish_staged(stage, folder, [*staged, *made], inputs)
            files = [*kept, *staged, *made]
            native_manifest = native.build_manifest(
                prep, files, src_dir, base_dir, out_dir, encoder=f"xorweights {_version()}"
            )
            native_manifest = replace(native_manifest, base_model=base_name)
            with AtomicFile(out_dir / MANIFEST_NAME) as atomic:
                atomic.write(native_manifest.dumps())
                atomic.commit()
    except Exception:  # a failure (not a kill or an interrupt): nothing half-made stays behind
        folder.close_state()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files, native_manifest


def encode(
    finetuned: os.PathLike[str] | str,
    *,
    base: os.PathLike[str] | str,
    out: os.PathLike[str] | str,
    format: Literal["xorweights", "oasst"] = "xorweights",
    compress: Literal["gzip"] | None = None,
    release: str | None = None,
    with_checksums: bool = False,
    jobs: int | None = None,
    force: bool = False,
    gzip_mtime: int = 0,
    allow_raw: Sequence[str] = (),
    progress: bool = False,
    base_name: str | None = None,
) -> EncodeReport:
    """Make an XOR payload from fine-tuned files and their base.

    Args:
        finetuned: folder of the fine-tuned files (flat).
        base: folder of the base: for `xorweights`, its tensors in any container; for `oasst`,
            files named as the fine-tuned ones.
        out: folder for the payload.
        format: `xorweights` (tensor-level XOR with `xorweights.json`) or `oasst` (legacy
            file-level XOR, as the published script does).
        compress (*optional*): `gzip` to store each XOR-ed file as a gzip stream (level 9; `oasst` only).
        release (*optional*): name for the checksum manifest (default: the out folder's name).
        with_checksums: compute the `hf_base` and `decoded` digests (md5 and sha256) in the
            same pass and return them as `report.manifest`, ready for `decode --checksums`.
        jobs: files encoded at once (default: the cores, at most 4).
        force: overwrite files already in `out`.
        gzip_mtime: timestamp stored in gzip headers (the legacy script stores the current time).
        allow_raw: fnmatch patterns naming fine-tuned tensors (or weight files) that may be stored
            unmasked because the base has no counterpart (`xorweights` only); any other such item
            makes the encode refuse. The manifest records each raw item and its pattern.
        progress: show progress on stderr (a bar on a terminal, else a line every 30 s).
        base_name (*optional*): what the base is, for people: a Hub repo id (`owner/name`) or a
            plain name, recorded as `base_model` in `xorweights.json` (when not given, a payload
            found complete from the same inputs keeps the name it has; one made anew records
            none) or, for `oasst`, in the checksum manifest (needs `with_checksums`);
            `publish` puts it on the model card.

    Raises:
        `RawStorageError`: fine-tuned tensors or weight files would be stored unmasked and no
            `allow_raw` pattern names them (before anything is written).
        `MissingFileError`: a base counterpart is missing (named, before anything is written).
        `FormatError`: a plain payload would begin with the gzip magic bytes.
    """
    if format not in ("xorweights", "oasst"):
        raise InputError(f"unknown payload format {format!r}; expected xorweights or oasst")
    if compress not in (None, "gzip"):
        raise InputError(f"unknown compression {compress!r}; expected gzip")
    started = time.perf_counter()
    src_dir, base_dir, out_dir = Path(finetuned), Path(base), Path(out)
    if not src_dir.is_dir():
        raise MissingFileError(f"fine-tuned folder not found: {src_dir}", path=src_dir)
    if allow_raw and format != "xorweights":
        raise InputError("allow_raw applies to native payloads; a legacy payload needs every base file")
    if base_name is not None:
        check_base_model(base_name)
        if format == "oasst" and not with_checksums:
            raise InputError(
                "a legacy (oasst) payload records its base name in the checksum manifest: "
                "pass --manifest too, or give the name to `publish --base-name`"
            )
    if format == "xorweights":
        if compress is not None:
            raise InputError("native payloads are not compressed (compress them for transfer if you wish)")
        if not base_dir.is_dir():
            raise MissingFileError(f"base folder not found: {base_dir}", path=base_dir)
        _check_out_dir(out_dir, {"fine-tuned": src_dir, "base": base_dir})

        prep = native.prepare_encode(
            src_dir, base_dir, jobs=jobs or default_jobs(), progress=progress, allow_raw=allow_raw
        )
        # The payload folder's records live in its hidden staging folder, removed once the payload
        # is finished: `xorweights.json` is then the record. A rerun after a kill keeps the payload
        # files already in place and the complete staged ones, and makes only the rest.
        staging = out_dir / STAGING_DIR
        with _drop_empty_staging(staging), OutputFolder(out_dir, state_dir=_payload_state(out_dir)) as folder:
            found = None
            if os.path.lexists(out_dir / MANIFEST_NAME):
                found = _recognise_payload(prep, src_dir, base_dir, out_dir)
                if found is None and not force:
                    raise OutputExistsError(
                        f"{out_dir} already holds {MANIFEST_NAME}, not of a payload made from these "
                        "inputs; refusing to overwrite (use --force)",
                        path=out_dir / MANIFEST_NAME,
                    )
            if found is not None:
                logger.info("%s already holds this payload, made from the same inputs; kept", out_dir)
                files, native_manifest = found
                if base_name is not None and base_name != native_manifest.base_model:
                    native_manifest = replace(native_manifest, base_model=base_name)
                    with AtomicFile(out_dir / MANIFEST_NAME) as atomic:
                        atomic.write(native_manifest.dumps())
                        atomic.commit()
            else:
                files, native_manifest = _encode_native_files(
                    prep, folder, staging, src_dir, base_dir, force=force, jobs=jobs, progress=progress,
                    base_name=base_name,
                )  # fmt: skip
            folder.close_state()
            try:
                shutil.rmtree(staging)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise IOFailure("removing", staging, e) from e
        published = None
        if with_checksums:
            published = native_manifest.to_checksums(
                release or out_dir.resolve().name, "checksums written by xorweights encode (native payload)"
            )
        return EncodeReport(
            files=tuple(sorted(files, key=lambda f: f.name)),
            seconds=time.perf_counter() - started,
            finetuned_dir=str(src_dir),
            base_dir=str(base_dir),
            out_dir=str(out_dir),
            manifest=published,
            format="xorweights",
            native_manifest=native_manifest,
        )
    planned = legacy.plan(src_dir, base_dir, encoding=True)
    _check_out_dir(out_dir, {"fine-tuned": src_dir, "base": base_dir})
    algos = ("md5", "sha256") if with_checksums else ()
    # A payload folder gets published: its records live in a hidden folder inside it (skipped by
    # every listing). A rerun keeps the payload files an earlier run made from the same inputs
    # with the same options (and, with checksums, recorded the digests of); the lock and the
    # overwrite rules are as for decode.
    options = {"gzip": (1, gzip_mtime)} if compress else {}
    inputs = {p.name: {**_inputs(p), **(options if p.action == "xor" else {})} for p in planned}
    with (
        _drop_empty_staging(out_dir / STAGING_DIR),
        OutputFolder(out_dir, state_dir=_payload_state(out_dir)) as folder,
    ):
        todo, kept = _triage(planned, folder, {}, force, keep=True, inputs=inputs)
        kept, again = _split_kept(kept, planned, algos, written=())
        todo += again
        _check_space(out_dir, todo, {})
        job_list = [
            _Job(
                planned=p,
                out=out_dir / p.name,
                hashes={"data": algos, "base": algos if p.base is not None else ()},
                inputs=inputs[p.name],
                encoding=True,
                compress=compress if p.action == "xor" else None,
                gzip_mtime=gzip_mtime,
                hash_written=("sha256",) if with_checksums else (),
            )
            for p in todo
        ]
        made = _run_jobs(job_list, jobs, folder, progress=progress, desc="encode")
        kept = [replace(f, compressed=compress is not None and f.action == "xor") for f in kept]
        files = sorted([*made, *kept], key=lambda f: f.name)
    for p in todo:
        if legacy.follows_raw_rule(p.name) and p.action == "xor" and legacy.parses_as_json(out_dir / p.name):
            logger.warning(
                "payload %s parses as JSON although it is XOR-ed: a decoder without its published digest "
                "would take it as stored; publish the decoded checksums (--manifest)",
                p.name,
            )
    manifest = None
    if with_checksums:

        def entry(d: Mapping[str, str], size: int | None) -> FileDigest:
            return FileDigest(md5=d.get("md5"), sha256=d.get("sha256"), size=size)

        by_name = {p.name: p for p in planned}
        manifest = ChecksumManifest(
            release=release or out_dir.resolve().name,
            description="checksums written by xorweights encode",
            base_model=base_name,
            stages={
                "hf_base": {
                    f.name: entry(f.base_digests, by_name[f.name].base.stat().st_size)  # type: ignore[union-attr]
                    for f in files
                    if f.action == "xor"
                },
                "decoded": {f.name: entry(f.input_digests, by_name[f.name].source_size) for f in files},
            },
        )
    return EncodeReport(
        files=tuple(files),
        seconds=time.perf_counter() - started,
        finetuned_dir=str(src_dir),
        base_dir=str(base_dir),
        out_dir=str(out_dir),
        compress=compress,
        manifest=manifest,
    )
