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

from .checksum_folders import checksum, list_files, verify
from .checksum_lines import format_sum_lines, parse_sum_lines
from .checksum_manifests import (
    bundled_release,
    known_releases,
    load_checksums,
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
