"""Hugging Face Hub names: repo ids and revisions are validated before they are used anywhere.

A repo spec is `owner/name` or `name`, optionally `@revision`, and for a payload optionally
`:subfolder`. Each part of the id is 1-96 characters of letters, digits, `.`, `_` and `-`,
starting and ending with a letter or digit, with no `--` or `..`. A revision is a branch, tag,
`refs/...` path or commit id following git's ref rules (which exclude `:`).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from .._display import quoted
from ..errors import InputError
from ..outfolder.paths import check_name

logger = logging.getLogger(__name__)

_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_REVISION = re.compile(r"[A-Za-z0-9._/-]{1,255}")


def validate_repo_id(repo_id: str) -> str:
    """Return `repo_id` if it is a well-formed Hub repo id.

    Raises:
        `InputError`: naming the id and the rule it breaks.
    """
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if not 1 <= len(parts) <= 2 or not all(_PART.fullmatch(p) for p in parts):
        raise InputError(
            f"invalid repo id {str(repo_id)[:100]!r}: expected owner/name of letters, digits, '.', '_', '-'",
            path=str(repo_id),
        )
    if any("--" in p or ".." in p for p in parts):
        raise InputError(f"invalid repo id {repo_id!r}: '--' and '..' are not allowed", path=repo_id)
    return repo_id


def validate_revision(revision: str) -> str:
    """Return `revision` if it is a safe branch, tag or commit name (git's ref rules).

    Raises:
        `InputError`: naming the revision.
    """
    if (
        not isinstance(revision, str)
        or not _REVISION.fullmatch(revision)
        or ".." in revision
        or "//" in revision
        or revision.startswith(("/", "-", "."))
        or revision.endswith(("/", ".", ".lock"))
        or "/." in revision
    ):
        raise InputError(f"invalid revision {str(revision)[:100]!r}", path=str(revision))
    return revision


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """Split `owner/name[@revision]` into a validated repo id and revision (None: the default)."""
    repo_id, sep, revision = spec.partition("@")
    validate_repo_id(repo_id)
    if sep:
        validate_revision(revision)
        return repo_id, revision
    return repo_id, None


@dataclass(frozen=True)
class RepoSpec:
    """`owner/name[@revision][:subfolder]`, validated."""

    repo_id: str
    revision: str | None = None
    """None: the default branch."""
    subfolder: str | None = None
    """The payload folder within the repo, when the user chose it."""

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.repo_id}{rev}" + (f":{self.subfolder}" if self.subfolder is not None else "")


def parse_payload_spec(spec: str, *, revision: str | None = None, subfolder: str | None = None) -> RepoSpec:
    """Parse `owner/name[@revision][:subfolder]`; `revision`/`subfolder` (the CLI options) fill the
    parts the spec leaves out.

    Raises:
        `InputError`: a malformed part, or an option that contradicts the spec.
    """
    head, colon, sub = spec.partition(":")
    repo_id, rev = parse_repo_spec(head)
    given = (("revision", rev, revision), ("subfolder", sub if colon else None, subfolder))
    for what, in_spec, option in given:
        if in_spec is not None and option is not None and in_spec.strip("/") != option.strip("/"):
            says = f"but --{what} says {quoted(option)}"
            raise InputError(f"{quoted(spec)} names {what} {quoted(in_spec)}, {says}", path=spec)
    if revision is not None:
        validate_revision(revision)
    chosen = sub if colon else subfolder  # "" (`owner/name:`): the top folder
    if chosen is not None:
        chosen = chosen.strip("/")
        if chosen:
            check_name(chosen, spec)
    return RepoSpec(repo_id, rev or revision, chosen)


def looks_local(arg: str) -> bool:
    """Whether `arg` is a local path whatever else it looks like: it starts with `./`, `../`, `/` or
    `~`, or its first component exists on disk (`small/paylaod` beside a folder `small`)."""
    if arg.startswith(("./", "../", "/", "~", ".\\", "..\\")) or arg in (".", ".."):
        return True
    first = arg.split("/", 1)[0].split("\\", 1)[0]
    return bool(first) and os.path.lexists(first)


def is_repo_spec(arg: object) -> bool:
    """Whether `arg` names a Hub repo (`owner/name[@revision][:subfolder]`), not a local path.

    A `Path` is local; so is a string naming an existing path or looking local (`looks_local`), and
    anything not shaped like `owner/name`: such a string is never sent to the Hub.
    """
    if not isinstance(arg, str) or os.path.lexists(arg) or looks_local(arg):
        return False
    parts = arg.partition(":")[0].partition("@")[0].split("/")
    return len(parts) == 2 and all(_PART.fullmatch(p) for p in parts)
