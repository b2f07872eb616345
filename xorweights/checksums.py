"""Checksum manifests of releases, coreutils `md5sum`/`sha256sum` line files, and verification.

A manifest (`checksums/<release>.json`) lists digests per stage: `meta_original` (Meta's files),
`hf_base` (the pinned HF conversion the XOR was made against) and `decoded` (the fine-tuned
result). A line file holds one stage without saying which, so it applies to whichever is asked.

This module is what the rest of xorweights imports from; the work is done in five others:

- `checksum_types`: the values (`FileDigest`, `ChecksumManifest`, `VerifyReport`, ...);
- `checksum_lines`: coreutils line files, parsed and written;
- `checksum_manifests`: JSON manifests parsed strictly, the bundled ones, `load_checksums`;
- `checksum_folders`: `verify` a folder against a stage, `checksum` a folder;
- `hashing`: hashing files (`hash_file`, `hash_files`, `git_blob_hasher`), shared by the package.

(It is a module, not a package: `xorweights/checksums/` is where the wheel ships the bundled
manifests.)
"""

from __future__ import annotations

import os
from typing import Any

from . import checksum_folders, checksum_manifests
from .checksum_folders import checksum, list_files
from .checksum_lines import format_sum_lines, parse_sum_lines
from .checksum_manifests import (
    bundled_release,
    known_releases,
    load_manifest_file,
    manifests_dir,
    parse_manifest,
)
from .checksum_types import ChecksumManifest, ChecksumReport, FileDigest, Mismatch, VerifyReport
from .hashing import git_blob_hasher, hash_file, hash_files

__all__ = [
    "ChecksumManifest",
    "ChecksumReport",
    "FileDigest",
    "Mismatch",
    "VerifyReport",
    "bundled_release",
    "checksum",
    "format_sum_lines",
    "git_blob_hasher",
    "hash_file",
    "hash_files",
    "known_releases",
    "list_files",
    "load_checksums",
    "load_manifest_file",
    "manifests_dir",
    "parse_manifest",
    "parse_sum_lines",
    "verify",
]


def load_checksums(
    spec: os.PathLike[str] | str, *, access: Any = None, revision: str | None = None
) -> ChecksumManifest:
    """`checksum_manifests.load_checksums`, reading a repo's model card from the Hub for a repo id
    that is not a bundled release (`access`: how to reach it)."""
    return checksum_manifests.load_checksums(spec, access=access, revision=revision, remote=_from_hub)


def verify(
    folder: os.PathLike[str] | str,
    checksums: os.PathLike[str] | str | ChecksumManifest,
    *,
    stage: str = "decoded",
    jobs: int | None = None,
    progress: bool = False,
) -> VerifyReport:
    """`checksum_folders.verify`, a repo id's checksums read as `load_checksums` does."""
    return checksum_folders.verify(
        folder, checksums, stage=stage, jobs=jobs, progress=progress, remote=_from_hub
    )


def _from_hub(spec: str, access: Any, revision: str | None) -> ChecksumManifest | None:
    from .hub.checksum_sources import checksums_from_hub  # the Hub client loads only for a repo id

    return checksums_from_hub(spec, access, revision)
