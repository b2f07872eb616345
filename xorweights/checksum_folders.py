"""Hashing files and folders, and checking a folder against a manifest stage (`verify`) or
writing its `md5sum`/`sha256sum` lines (`checksum`). `xorweights.checksums` re-exports all of this.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import _cancel
from ._line_endings import line_ending_hint
from ._progress import byte_bar
from .checksum_manifests import RemoteChecksums, load_checksums
from .checksum_types import ChecksumManifest, ChecksumReport, Mismatch, VerifyReport
from .constants import ALGORITHMS, CHUNK_SIZE, TEMP_PREFIX, default_jobs
from .errors import InputError, MissingFileError
from .outfolder.atomic import AtomicFile

logger = logging.getLogger("xorweights.checksums")  # the name it logged under before the split


def git_blob_hasher(size: int) -> Any:
    """sha1 begun with git's blob header: fed the `size` bytes of a file, its hexdigest is the file's
    git blob id (what the Hub lists for files not in LFS)."""
    return hashlib.sha1(b"blob %d\0" % size)


def hash_file(
    path: os.PathLike[str] | str,
    algorithms: Iterable[str],
    *,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Any = None,
) -> dict[str, str]:
    """Digests of a file, all algorithms in one read."""
    hs = {a: hashlib.new(a) for a in algorithms}
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            _cancel.check()
            for h in hs.values():
                h.update(view[:n])
            if on_progress is not None:
                on_progress(n)
    return {a: h.hexdigest() for a, h in hs.items()}


def hash_files(
    paths: Mapping[str, Path], algorithms: Sequence[str], *, jobs: int, progress: bool, desc: str
) -> Iterator[tuple[str, dict[str, str]]]:
    """Digests of several files, `jobs` at once, under one byte progress bar; yields in order."""
    total = sum(p.stat().st_size for p in paths.values())
    with byte_bar(total, desc, enabled=progress) as bar:

        def work(name: str) -> tuple[str, dict[str, str]]:
            return name, hash_file(paths[name], algorithms, on_progress=bar.update)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, _cancel.guard(pool):
            yield from pool.map(work, paths)


def list_files(root: os.PathLike[str] | str) -> list[str]:
    """Relative POSIX names of the regular files below `root`, skipping hidden ones and our temps."""
    root = Path(root)
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.startswith(".") or f.startswith(TEMP_PREFIX):
                continue
            p = Path(dirpath, f)
            if p.is_file():
                names.append(p.relative_to(root).as_posix())
    return sorted(names)


def verify(
    folder: os.PathLike[str] | str,
    checksums: os.PathLike[str] | str | ChecksumManifest,
    *,
    stage: str = "decoded",
    jobs: int | None = None,
    progress: bool = False,
    remote: RemoteChecksums | None = None,
) -> VerifyReport:
    """Check every file a manifest stage lists against the files in `folder`.

    Args:
        folder: the folder holding the files.
        checksums: a release name or repo id, a manifest or line file, or a loaded manifest; or a
            per-tensor manifest (`xorweights-tensors.json`): then every tensor of the model in
            `folder` is checked, whatever its container, sharding or file names.
        stage: `decoded`, `hf_base` or `meta_original`.
        jobs: files hashed at once (default: number of cores).
        progress: show progress on stderr (a bar on a terminal, else a line every 30 s).
        remote: reads a repo id's checksums from the Hub (see `checksum_manifests.load_checksums`).

    Returns:
        `VerifyReport`; its `ok` is false on any mismatch or missing file.

    Raises:
        `MissingFileError`: `folder` does not exist.
        `InputError`: the manifest has no entries for `stage`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"folder not found: {folder}", path=folder)
    if not isinstance(checksums, ChecksumManifest):
        from .tensor_manifest import tensor_manifest_at, verify_tensors

        tensors = tensor_manifest_at(checksums)
        if tensors is not None:
            return verify_tensors(folder, tensors, jobs=jobs, progress=progress)
    manifest = (
        checksums if isinstance(checksums, ChecksumManifest) else load_checksums(checksums, remote=remote)
    )
    entries = manifest.stage(stage)
    if not entries:
        raise InputError(
            f"{manifest.release} publishes no {stage} checksums"
            + (f" (it has: {', '.join(manifest.stages)})" if manifest.stages else ""),
            path=manifest.path,
        )
    present = set(list_files(folder))
    missing = sorted(n for n in entries if n not in present)
    extra = sorted(present - set(entries))
    todo = sorted(n for n in entries if n in present)

    mismatches: list[Mismatch] = []
    sized: list[str] = []
    for name in todo:
        want = entries[name].size
        actual_size = (folder / name).stat().st_size
        if want is not None and actual_size != want:
            mismatches.append(Mismatch(name, "size", str(want), str(actual_size)))
        else:
            sized.append(name)

    algorithms = sorted({a for n in sized for a in entries[n].algorithms()})
    digests = dict(
        hash_files(
            {n: folder / n for n in sized},
            algorithms,
            jobs=jobs or default_jobs(),
            progress=progress,
            desc=f"verify {stage}",
        )
    )
    for name in sized:
        for algo, actual in digests[name].items():
            expected = entries[name].get(algo)
            if expected and expected != actual:
                mismatches.append(Mismatch(name, algo, expected, actual))
    bad = {m.name for m in mismatches}
    hints = {
        n: line_ending_hint(folder / n, entries[n].hexdigests(), expected_size=entries[n].size) for n in bad
    }
    mismatches = [replace(m, hint=hints[m.name]) for m in mismatches]
    logger.info("verified %d file(s) in %s against %s %s", len(todo), folder, manifest.release, stage)
    return VerifyReport(
        folder=str(folder),
        stage=stage,
        release=manifest.release,
        checked=tuple(todo),
        matched=tuple(n for n in todo if n not in bad),
        mismatches=tuple(sorted(mismatches, key=lambda m: m.name)),
        missing=tuple(missing),
        extra=tuple(extra),
        digests=digests,
    )


def checksum(
    folder: os.PathLike[str] | str,
    *,
    algorithm: str = "md5",
    output: os.PathLike[str] | str | None = None,
    jobs: int | None = None,
    progress: bool = False,
) -> ChecksumReport:
    """Hash every file below `folder`; optionally write the lines to `output` (atomically).

    The lines are what `md5sum`/`sha256sum` print when run inside `folder`, so
    `cd folder && md5sum -c FILE` accepts them.

    Raises:
        `InputError`: unknown algorithm.
        `MissingFileError`: `folder` does not exist.
    """
    if algorithm not in ALGORITHMS:
        raise InputError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"folder not found: {folder}", path=folder)
    names = list_files(folder)
    if output is not None:
        out_path = Path(output).resolve()
        names = [n for n in names if (folder / n).resolve() != out_path]
    total = sum((folder / n).stat().st_size for n in names)
    with byte_bar(total, f"{algorithm}sum", enabled=progress) as bar:
        with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool, _cancel.guard(pool):
            digests = dict(
                pool.map(
                    lambda n: (n, hash_file(folder / n, [algorithm], on_progress=bar.update)[algorithm]),
                    names,
                )
            )
    report = ChecksumReport(
        folder=str(folder),
        algorithm=algorithm,
        entries=digests,
        output=None if output is None else str(output),
    )
    if output is not None:
        with AtomicFile(output) as f:
            f.write(report.data())
            f.commit()
    return report
