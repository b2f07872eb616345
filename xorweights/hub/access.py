"""Reaching the Hub: where files go (`HubAccess`), the client, a repo's listing, and what its errors mean.

huggingface_hub is imported inside the functions that use it, so that importing xorweights
costs nothing of it until a repo id is given.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from .._display import quoted
from ..errors import HubError, XorWeightsError
from .watch import Watch, from_http_client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubAccess:
    """How to reach the Hub and where files go; every field defaults to huggingface_hub's own."""

    local_dir: os.PathLike[str] | str | None = None
    """A plain folder for the files instead of the Hub cache (`hf download --local-dir`)."""
    cache_dir: os.PathLike[str] | str | None = None
    endpoint: str | None = None
    token: str | bool | None = None
    """None: `HF_TOKEN` or the saved login; False: send none."""
    offline: bool | None = None
    """None: `HF_HUB_OFFLINE`."""
    force_download: bool = False
    """Download every file again, even when a cached copy looks complete (`hf download --force-download`)."""


@dataclass(frozen=True)
class HubFile:
    """A file of a repo as the Hub lists it (keyed by its path): size, git blob id, LFS sha256."""

    size: int
    blob_id: str | None = None
    sha256: str | None = None


def hf_lib() -> Any:
    """The huggingface_hub module, imported on first use."""
    import huggingface_hub

    return huggingface_hub


def offline_default() -> bool:
    """Whether huggingface_hub is in offline mode (`HF_HUB_OFFLINE`), as it decides."""
    from huggingface_hub import constants

    check = getattr(hf_lib(), "is_offline_mode", None)
    return bool(check()) if callable(check) else bool(constants.HF_HUB_OFFLINE)


def hub_error(
    e: Exception, repo_id: str, revision: str, endpoint: str, *, spec: str | None = None, kind: str = "folder"
) -> HubError | None:
    """Our error for a Hub answer that no cache can make up for (None: try the cache).

    `spec` is the argument as typed and `kind` what a local path would have been (`folder`,
    `file`): an unknown repo may be a mistyped local path.
    """
    from huggingface_hub import utils as hf

    if isinstance(e, hf.RevisionNotFoundError):
        return HubError(f"{repo_id} on {endpoint} has no revision {revision!r}", path=repo_id)
    if isinstance(e, hf.GatedRepoError):
        return HubError(
            f"{repo_id} on {endpoint} is gated and "
            + ("no token was sent" if _sent_no_token(e) else "this token has no access to it")
            + f": ask for access at {endpoint.rstrip('/')}/{repo_id}, then set HF_TOKEN (or `hf auth login`)",
            path=repo_id,
        )
    if isinstance(e, hf.RepositoryNotFoundError):
        return HubError(
            f"no local {kind} {quoted(spec or repo_id)}, and no Hub repo {repo_id} on {endpoint} "
            "(a private repo needs HF_TOKEN or `hf auth login`)",
            path=repo_id,
        )
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, hf.HfHubHTTPError) and status in (401, 403):
        return HubError(f"{endpoint} refused {repo_id} (HTTP {status}); check HF_TOKEN", path=repo_id)
    if isinstance(e, hf.HfHubHTTPError) and isinstance(status, int) and 400 <= status < 500 and status != 429:
        return HubError(f"{endpoint} answered HTTP {status} for {repo_id}: {short_error(e)}", path=repo_id)
    return None


def _sent_no_token(e: BaseException) -> bool:
    """Whether the request a Hub error answers carried no token (an anonymous request)."""
    request = getattr(getattr(e, "response", None), "request", None)
    headers = getattr(request, "headers", None) or {}
    return not any(k.lower() == "authorization" for k in headers)


def is_unreachable(e: BaseException) -> bool:
    """Whether an error means the Hub could not be asked (then the cache may answer instead); not
    our own (a `HubError` of the watch: the Hub answered, asking to wait too long, say)."""
    if isinstance(e, XorWeightsError) or type(e).__name__ in _ANSWERED:
        return False
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500
    return isinstance(e, OSError) or from_http_client(e) or type(e).__name__ == "OfflineModeIsEnabled"


#: Errors of the HTTP client about an answer the Hub gave (a redirect loop, a body that does not decode).
_ANSWERED = ("TooManyRedirects", "DecodingError", "DecodeError", "ContentDecodingError")


def list_repo(api: Any, repo_id: str, revision: str) -> tuple[str, dict[str, HubFile]]:
    """The commit a revision points to and every file at it, with the Hub's digests."""
    from huggingface_hub.hf_api import RepoFile

    with Watch(f"{repo_id}@{revision} (listing)").active():  # waits asked for, stalls: bounded
        commit = api.repo_info(repo_id, revision=revision).sha
        files = {}
        for f in api.list_repo_tree(repo_id, revision=commit, recursive=True):
            # Names are checked where used (`find_payload_in_listing`, `_checked`).
            if isinstance(f, RepoFile):
                lfs = f.lfs  # a dict in huggingface_hub < 0.21, an object since
                sha256 = (lfs.get("sha256") if isinstance(lfs, dict) else lfs.sha256) if lfs else None
                files[f.path] = HubFile(f.size, f.blob_id, sha256)
    return commit, files


def short_error(e: BaseException | None, limit: int = 300) -> str:
    """An error's text on one line; a long one is cut at a word boundary, marked with `...`."""
    lines = str(e).splitlines() if e is not None else []
    # httpx's pointer to a page on HTTP status codes says nothing about this error.
    text = " ".join(" ".join(ln for ln in lines if not ln.startswith("For more information check")).split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
