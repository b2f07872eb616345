"""Checking a folder against a manifest stage (`verify`) or writing its `md5sum`/`sha256sum` lines
(`checksum`), the files hashed by `hashing`. `xorweights.checksums` re-exports all of this.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from ._line_endings import line_ending_hint
from ._sizing import default_jobs
from .checksum_manifests import RemoteChecksums, load_checksums
from .checksum_types import ALGORITHMS, ChecksumManifest, ChecksumReport, Mismatch, VerifyReport
from .errors import InputError, MissingFileError
from .hashing import hash_files
from .outfolder.atomic import TEMP_PREFIX, AtomicFile

logger = logging.getLogger("xorweights.checksums")  # the name it logged under before the split


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
    if not entries and stage in manifest.not_included:
        raise InputError(
            f"{manifest.release} publishes {stage} checksums, but xorweights does not include them: "
            f"{manifest.not_included[stage]}",
            path=manifest.path,
        )
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
    hashed = hash_files(
        {n: folder / n for n in names},
        [algorithm],
        jobs=jobs or default_jobs(),
        progress=progress,
        desc=f"{algorithm}sum",
    )
    digests = {n: d[algorithm] for n, d in hashed}
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
