"""The values of the checksum modules: published digests (`FileDigest`, `ChecksumManifest`) and
the reports of checking a folder against them (`VerifyReport`, `Mismatch`) or hashing one
(`ChecksumReport`). `xorweights.checksums` re-exports them all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .checksum_lines import format_sum_lines
from .errors import InputError

#: Checksum algorithms understood everywhere, with the hex length that identifies them.
ALGORITHMS = ("md5", "sha256")

HEX_LENGTH = {"md5": 32, "sha256": 64}

#: Checksum stages of a release, in the order a user meets them.
STAGES = ("meta_original", "hf_base", "decoded")

#: Checksum files, manifests and state files larger than this are refused unread.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

#: Schema tag of the JSON checksum manifests in `checksums/`.
MANIFEST_FORMAT = "xorweights-checksums/1"

BASE_MODEL_RULE = (
    "a Hub repo id (owner/name) or a plain name: one line of at most 200 letters, digits, spaces "
    "and ._-/()+:,@"
)

_BASE_MODEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._/()+:,@-]{0,198}[A-Za-z0-9._)+-])?")


def is_base_model(name: object) -> bool:
    """Whether `name` is a well-formed base model name (see `BASE_MODEL_RULE`)."""
    return isinstance(name, str) and _BASE_MODEL.fullmatch(name) is not None


@dataclass(frozen=True)
class FileDigest:
    """Published facts about one file: any of md5, sha256 and size."""

    md5: str | None = None
    sha256: str | None = None
    size: int | None = None

    def algorithms(self) -> tuple[str, ...]:
        """The digest algorithms this entry has a value for."""
        return tuple(a for a in ALGORITHMS if getattr(self, a))

    def get(self, algorithm: str) -> str | None:
        return getattr(self, algorithm) if algorithm in ALGORITHMS else None

    def hexdigests(self) -> dict[str, str]:
        """The digests this entry has, by algorithm."""
        return {a: str(self.get(a)) for a in self.algorithms()}

    def mismatch(self, got: Mapping[str, str]) -> tuple[str, str, str] | None:
        """The first `(algorithm, expected, actual)` where `got` has a digest that differs."""
        for algo in self.algorithms():
            actual = got.get(algo)
            if actual is not None and actual != self.get(algo):
                return algo, str(self.get(algo)), actual
        return None

    def matched_by(self, got: Mapping[str, str]) -> bool:
        """Whether `got` has at least one of these digests, and all it has agree."""
        return self.mismatch(got) is None and any(got.get(a) == self.get(a) for a in self.algorithms())

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in (("md5", self.md5), ("sha256", self.sha256), ("size", self.size)) if v}


@dataclass(frozen=True)
class ChecksumManifest:
    """Digests of a release by stage, with where they came from."""

    release: str
    stages: Mapping[str, Mapping[str, FileDigest]]
    repo_id: str | None = None
    description: str = ""
    sources: Mapping[str, str] = field(default_factory=dict)
    caveats: tuple[str, ...] = ()
    needs: Mapping[str, str] = field(default_factory=dict)
    raw_files: tuple[str, ...] = ()
    unstaged: Mapping[str, FileDigest] | None = None
    """Entries of a line file, which applies to any stage."""
    path: str | None = None
    base_model: str | None = None
    """The base the release was made against, as its publisher named it (informational)."""
    not_included: Mapping[str, str] = field(default_factory=dict)
    """Stages the release publishes that this manifest does not carry, each with why (informational:
    "not published" is said only of a stage found neither in `stages` nor here)."""

    def stage(self, name: str) -> Mapping[str, FileDigest]:
        """Entries of stage `name` (empty when the release publishes none)."""
        if name not in STAGES:
            raise InputError(f"unknown stage {name!r}; expected one of {', '.join(STAGES)}")
        if self.unstaged is not None:
            return self.unstaged
        return self.stages.get(name, {})

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": MANIFEST_FORMAT, "release": self.release}
        if self.repo_id:
            doc["repo_id"] = self.repo_id
        if self.description:
            doc["description"] = self.description
        if self.base_model:
            doc["base_model"] = self.base_model
        if self.raw_files:
            doc["raw_files"] = list(self.raw_files)
        if self.needs:
            doc["needs"] = dict(self.needs)
        doc["stages"] = {
            stage: {name: d.to_json() for name, d in sorted(files.items())}
            for stage, files in self.stages.items()
        }
        if self.sources:
            doc["sources"] = dict(self.sources)
        if self.caveats:
            doc["caveats"] = list(self.caveats)
        if self.not_included:
            doc["not_included"] = dict(self.not_included)
        return doc


@dataclass(frozen=True)
class Mismatch:
    """One file whose digest (or size) differs from the published value."""

    name: str
    algorithm: str
    expected: str
    actual: str
    hint: str | None = None
    """A likely cause, when one is proven (line endings converted, see `_line_endings`)."""


@dataclass(frozen=True)
class VerifyReport:
    """Result of checking a folder against one stage of a manifest."""

    folder: str
    stage: str
    release: str
    checked: tuple[str, ...]
    matched: tuple[str, ...]
    mismatches: tuple[Mismatch, ...]
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    digests: Mapping[str, Mapping[str, str]]

    @property
    def ok(self) -> bool:
        """True when every listed file is present and matches."""
        return not self.mismatches and not self.missing and bool(self.checked)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "stage": self.stage,
            "release": self.release,
            "ok": self.ok,
            "checked": list(self.checked),
            "matched": list(self.matched),
            "mismatches": [m.__dict__ for m in self.mismatches],
            "missing": list(self.missing),
            "extra": list(self.extra),
            "digests": {k: dict(v) for k, v in self.digests.items()},
        }


@dataclass(frozen=True)
class ChecksumReport:
    """Digests of every file in a folder, as `checksum` computed them."""

    folder: str
    algorithm: str
    entries: Mapping[str, str]
    output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "algorithm": self.algorithm,
            "entries": dict(self.entries),
            "output": self.output,
        }

    def lines(self) -> str:
        """The report as `md5sum`/`sha256sum` lines."""
        return format_sum_lines(self.entries)

    def data(self) -> bytes:
        """The lines as the bytes `md5sum` writes: each name as its bytes on disk, UTF-8 or not."""
        return self.lines().encode("utf-8", "surrogateescape")
