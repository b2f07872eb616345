"""Hugging Face Hub names: repo ids and revisions are validated before they are used anywhere.

A repo spec is `owner/name` or `name`, optionally `@revision`. Each part is 1-96 characters of
letters, digits, `.`, `_` and `-`, starting and ending with a letter or digit, with no `--` or
`..`. A revision is a branch, tag, `refs/...` path or commit id following git's ref rules.
"""

from __future__ import annotations

import re

from .errors import InputError

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
