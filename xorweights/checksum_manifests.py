"""Checksum manifests of releases: JSON manifests parsed strictly, line files read through
`checksum_lines`, the bundled manifests, and `load_checksums`, which resolves `--checksums`.

A manifest (`checksums/<release>.json`) lists digests per stage: `meta_original` (Meta's files),
`hf_base` (the pinned HF conversion the XOR was made against) and `decoded` (the fine-tuned
result). A line file holds one stage without saying which, so it applies to whichever is asked.
Every file name goes through `outfolder.paths.check_name`. `xorweights.checksums` re-exports all of this.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from . import _json
from ._display import quoted
from .checksum_lines import parse_sum_lines
from .checksum_types import (
    BASE_MODEL_RULE,
    HEX_LENGTH,
    MANIFEST_FORMAT,
    MAX_MANIFEST_BYTES,
    STAGES,
    ChecksumManifest,
    FileDigest,
    is_base_model,
)
from .errors import FormatError, InputError, MissingFileError, UnknownReleaseError
from .outfolder.paths import check_listed_name, read_bounded

logger = logging.getLogger("xorweights.checksums")  # the name it logged under before the split


def manifests_dir() -> Path:
    """Folder of the bundled manifests: inside the installed package, else the source tree's."""
    bundled = Path(str(resources.files("xorweights"))) / "checksums"
    if bundled.is_dir():
        return bundled
    # Running from a source checkout (editable install or tests): the top-level folder.
    return Path(__file__).resolve().parent.parent / "checksums"


def known_releases() -> list[ChecksumManifest]:
    """Every bundled release manifest, sorted by release name."""
    return sorted((load_manifest_file(p) for p in manifests_dir().glob("*.json")), key=lambda m: m.release)


#: Largest size a manifest may state (sizes are int64 on every platform we read files on).
_MAX_SIZE = 2**63 - 1


def check_hex(value: Any, algorithm: str, where: str, source: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(f"[0-9a-fA-F]{{{HEX_LENGTH[algorithm]}}}", value):
        raise FormatError(
            f"{where}: {algorithm} must be {HEX_LENGTH[algorithm]} hex digits, got {quoted(value)}",
            path=source,
        )
    return value.lower()


def _parse_entry(value: Any, where: str, source: str) -> FileDigest:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: expected an object with md5/sha256/size", path=source)
    unknown = set(value) - {"md5", "sha256", "size"}
    if unknown:
        shown = ", ".join(quoted(k, 40) for k in sorted(unknown)[:5])
        raise FormatError(f"{where}: unknown keys {shown}", path=source)
    size = value.get("size")
    if size is not None and (type(size) is not int or not 0 <= size <= _MAX_SIZE):
        raise FormatError(f"{where}: size must be a non-negative integer (int64)", path=source)
    md5 = value.get("md5")
    sha = value.get("sha256")
    if md5 is None and sha is None:
        raise FormatError(f"{where}: needs md5 or sha256", path=source)
    return FileDigest(
        md5=None if md5 is None else check_hex(md5, "md5", where, source),
        sha256=None if sha is None else check_hex(sha, "sha256", where, source),
        size=size,
    )


def parse_manifest(doc: Any, source: str) -> ChecksumManifest:
    """Validate a decoded JSON manifest; raises `FormatError` naming `source` on any defect.

    A native payload's `xorweights.json` is read too: its sha256 per output file is the `decoded` stage.
    """
    if isinstance(doc, dict) and doc.get("format") == "xorweights":
        from .formats.native_manifest import parse_manifest as parse_native

        return parse_native(doc, source).to_checksums(
            Path(source).parent.name or source,
            f"decoded sha256 from the native payload manifest {source}",
            path=source,
        )
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise FormatError(
            f'{source}: not a checksum manifest (expected "format": "{MANIFEST_FORMAT}")', path=source
        )
    release = doc.get("release")
    if not isinstance(release, str) or not release:
        raise FormatError(f'{source}: missing "release"', path=source)
    stages_doc = doc.get("stages", {})
    if not isinstance(stages_doc, dict):
        raise FormatError(f'{source}: "stages" must be an object', path=source)
    stages: dict[str, dict[str, FileDigest]] = {}
    for stage, files in stages_doc.items():
        if stage not in STAGES:
            raise FormatError(
                f"{source}: unknown stage {quoted(stage)}; expected one of {', '.join(STAGES)}", path=source
            )
        if not isinstance(files, dict):
            raise FormatError(f"{source}: stage {stage!r} must map file names to digests", path=source)
        stages[stage] = {
            check_listed_name(n, f"{source} [{stage}]", source): _parse_entry(
                v, f"{source} [{stage}] {quoted(n)}", source
            )
            for n, v in files.items()
        }

    def _strs(key: str) -> tuple[str, ...]:
        v = doc.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise FormatError(f'{source}: "{key}" must be a list of strings', path=source)
        return tuple(v)

    def _strmap(key: str) -> dict[str, str]:
        v = doc.get(key, {})
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            raise FormatError(f'{source}: "{key}" must map names to strings', path=source)
        return dict(v)

    def _str(key: str) -> str | None:
        v = doc.get(key)
        if v is not None and not isinstance(v, str):
            raise FormatError(f'{source}: "{key}" must be a string', path=source)
        return v

    repo_id = _str("repo_id")
    base_model = _str("base_model")
    not_included = _strmap("not_included")
    for stage in not_included:
        if stage not in STAGES:
            raise FormatError(
                f'{source}: "not_included" names unknown stage {quoted(stage)}; expected one of '
                + ", ".join(STAGES),
                path=source,
            )
    if base_model is not None:
        if not is_base_model(base_model):
            raise FormatError(
                f'{source}: "base_model" {quoted(base_model, 60)}: expected {BASE_MODEL_RULE}', path=source
            )
    return ChecksumManifest(
        release=release,
        repo_id=repo_id,
        base_model=base_model,
        description=_str("description") or "",
        stages=stages,
        sources=_strmap("sources"),
        caveats=_strs("caveats"),
        needs=_strmap("needs"),
        not_included=not_included,
        raw_files=_strs("raw_files"),
        path=source,
    )


def load_manifest_file(path: os.PathLike[str] | str) -> ChecksumManifest:
    """Read a JSON manifest or a coreutils line file (told apart by content).

    Raises:
        `MissingFileError`: no such file.
        `InputError`: the file cannot be read.
        `FormatError`: anything malformed (strict JSON, see `_json`; lines, see `parse_sum_lines`).
        `ChecksumMismatchError`: a line file lists one name with two different digests.
    """
    path = Path(path)
    try:
        raw = read_bounded(path, MAX_MANIFEST_BYTES, "a checksum file")
    except MissingFileError:
        raise MissingFileError(f"checksum file not found: {path}", path=path) from None
    except OSError as e:
        raise InputError(f"cannot read checksum file {path}: {e.strerror}", path=path) from e
    if raw.lstrip().startswith(b"{"):
        return parse_manifest(_json.loads(raw, str(path)), str(path))
    # Names are bytes to coreutils: one that is not UTF-8 is kept as os.fsdecode gives it on disk.
    algorithm, entries = parse_sum_lines(raw.decode("utf-8", "surrogateescape"), source=str(path))
    digests = {n: FileDigest(**{algorithm: h}) for n, h in entries.items()}
    return ChecksumManifest(release=path.name, stages={}, unstaged=digests, path=str(path))


def bundled_release(name: str) -> ChecksumManifest | None:
    """The bundled manifest a release name or repo id names (`-xor` optional, any case); a repo
    id matches only the release published under that id."""
    key = name.strip().rstrip("/").lower()
    for m in known_releases():
        if "/" in key:
            names = {m.repo_id.lower().removesuffix("-xor")} if m.repo_id else set()
        else:
            names = {m.release.lower()}
            if m.repo_id:
                names.add(m.repo_id.split("/")[-1].lower().removesuffix("-xor"))
        if key in names or key.removesuffix("-xor") in names:
            return m
    return None


RemoteChecksums = Callable[[str, Any, "str | None"], "ChecksumManifest | None"]
"""Reads a repo's checksums from the Hub (its model card's block): `(spec, access, revision)` to
the manifest, or None when `spec` is not a repo id. `xorweights.checksums.load_checksums` passes
the Hub package's; this module imports no Hub code."""


def load_checksums(
    spec: os.PathLike[str] | str,
    *,
    access: Any = None,
    revision: str | None = None,
    remote: RemoteChecksums | None = None,
) -> ChecksumManifest:
    """Resolve `--checksums`: a file, a known release (name or repo id, `-xor` optional), or any
    Hub repo `owner/name[@revision]` whose model card holds a checksum block (`access`: how to
    reach it; `revision`: the repo's branch, tag or commit, as `owner/name@revision` does).

    Raises:
        `UnknownReleaseError`: `spec` is neither a file, a known release nor shaped like a repo id.
        `HubError`: a repo id that is not a known release, and its card cannot be read or has no
            checksum block.
    """
    if isinstance(spec, os.PathLike) or Path(spec).is_file():
        if revision is not None:
            raise InputError(f"`revision` applies to a Hub repo id, not to the file {spec}", path=spec)
        return load_manifest_file(spec)
    name, _, rev = str(spec).partition("@")
    found = bundled_release(name)
    if found is not None:
        if rev or revision:
            logger.warning("%s: the bundled manifest %s applies to every revision", spec, found.release)
        return found
    found = remote(str(spec), access, revision) if remote is not None else None
    if found is not None:
        return found
    raise UnknownReleaseError(
        f"no checksum file or known release named {quoted(str(spec))}; known releases: "
        + ", ".join(m.release for m in known_releases()),
        path=str(spec),
    )
