"""Writing to a Hub repo: create it if missing (refusing a public one asked to be private), and
commit a folder, also with a huggingface_hub that cannot read the commit URL a self-hosted Hub
returns."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ..errors import HubError, InputError

logger = logging.getLogger(__name__)


def http_status(e: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub error (None: no HTTP answer)."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def ensure_repo(api: Any, repo_id: str, *, private: bool) -> bool:
    """Create `repo_id` unless it exists; whether it existed. An existing repo is used as it is
    (whether this token may write to it shows at the commit); a public one is refused when
    `private` was asked for.

    Raises:
        `HubError`: the repo cannot be created under its owner with this token.
        `InputError`: `private` for an existing public repo.
    """
    from huggingface_hub.utils import RepositoryNotFoundError

    try:
        info = api.repo_info(repo_id)
    except RepositoryNotFoundError:
        info = None
    if info is not None:
        if private and not info.private:
            raise InputError(
                f"{repo_id} exists and is public: publishing would not make it private; change its "
                "visibility on the Hub first, or publish without `private`",
                path=repo_id,
            )
        return True
    try:  # exist_ok: a repo made meanwhile, or one this token cannot see, answers 409
        api.create_repo(repo_id, private=private, exist_ok=True)
    except Exception as e:
        if http_status(e) not in (401, 403):
            raise
        owner = repo_id.split("/")[0]
        raise HubError(
            f"cannot create {repo_id} on {api.endpoint} (HTTP {http_status(e)}): this token may not create "
            f"repos under {owner!r}, or the repo is someone else's; create it there first, or check HF_TOKEN",
            path=repo_id,
        ) from e
    return False


def upload_folder(
    api: Any, repo_id: str, folder: Path, branch: str, message: str, delete: list[str] | None = None
) -> str:
    """Commit `folder` to `branch` of `repo_id`, deleting the repo files `delete` matches that the
    folder does not have; returns the commit id.

    An older huggingface_hub (0.x, 1.0) makes the commit, then cannot parse a commit URL on a
    host other than `HF_ENDPOINT`'s (a self-hosted Hub given as `endpoint=`): the commit is then
    taken as the head of `branch`, whose files the caller checks.
    """
    try:
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=branch,
            commit_message=message,
            delete_patterns=delete,
        )
    except ValueError as e:
        import huggingface_hub
        from huggingface_hub.hf_api import CommitInfo

        if not str(e).startswith("Unable to retrieve user and repo ID") or "_endpoint" in {
            f.name for f in dataclasses.fields(CommitInfo)
        }:
            raise
        logger.info(
            "huggingface_hub %s cannot read the commit URL %s returned (not on HF_ENDPOINT); "
            "taking the head of %s as the commit",
            huggingface_hub.__version__,
            api.endpoint,
            branch,
        )
        return str(api.repo_info(repo_id, revision=branch).sha)
    return str(info.oid)
