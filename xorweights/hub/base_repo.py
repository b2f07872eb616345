"""A base model from the Hub (`--base OWNER/NAME[@REVISION]`): only the files a decode reads are
taken from the Hub cache or downloaded, each checked against the Hub's size and digest (a damaged
cached copy is downloaded again once), for gated bases as for public ones.

Which files: those the payload reads by name; the weight files holding the tensors it reads (all of
them, or by the repo's index only the shards that hold them), in one container: safetensors when
the repo has any, else `.bin`, else Meta's `consolidated.*.pth`; their index and `config.json`;
for Meta's files or a base generated from LLaMA weights, `params.json` and `tokenizer.model` too.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import _json
from .._display import abridged
from ..errors import HubError, InputError, XorWeightsError
from ..outfolder.paths import read_bounded
from .access import HubAccess, HubFile, hf_lib, hub_error, is_unreachable, list_repo, offline_default
from .download import download_files, download_kwargs, recorded_commit, recorded_etag, snapshot
from .payload import HubPayload, check_lfs_files, checked_files, refetcher
from .repo_spec import parse_repo_spec
from .watch import describe

logger = logging.getLogger(__name__)

#: Weight containers in the order a base is read from (the first the repo has wins), with their index.
_CONTAINERS = (
    (("*.safetensors",), "model.safetensors.index.json"),
    (("pytorch_model*.bin", "*.bin", "*.pt"), "pytorch_model.bin.index.json"),
    (("consolidated.*.pth",), None),
)
_CONFIGS = ("config.json",)
_LLAMA_EXTRA = ("params.json", "tokenizer.model")
#: An index of a few thousand tensors is well under this.
_INDEX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class BaseWants:
    """What a decode reads of its base, so that a base on the Hub is fetched in part."""

    files: Collection[str] = ()
    """Base files read by name (those the repo lacks are not fetched; the decode names them)."""
    tensors: Collection[str] | None = ()
    """Base tensors read by name; None: every tensor (the whole model)."""
    generate: bool = False
    """Files the repo lacks may be generated from its LLaMA weights (`base_mode`)."""


def fetch_base(
    spec: str, access: HubAccess, wants: BaseWants, *, jobs: int, progress: bool = False
) -> HubPayload:
    """The files of the base `spec` (`owner/name[@revision]`) that `wants` names, in the Hub cache
    (`access.cache_dir`; never `local_dir`, which holds the payload), each checked against the
    Hub's size and sha256 (git blob id outside LFS) before it is read.

    Raises:
        `HubError`: unknown or gated repo without access, or not cached offline (one line each).
        `InputError`: `force_download` offline.
        `BaseMismatchError`: a file still differs from the Hub's listing after a second download.
    """
    if ":" in spec:
        raise InputError(
            f"base {spec}: a base repo is OWNER/NAME[@REVISION], without a subfolder (its files are read "
            "from the repo's top folder)",
            path=spec,
        )
    repo_id, revision = parse_repo_spec(spec)
    revision = revision or "main"
    access = replace(access, local_dir=None)
    offline = offline_default() if access.offline is None else access.offline
    if access.force_download and offline:
        raise InputError(f"{spec}: `force_download` downloads again, which offline mode forbids", path=spec)
    hf = hf_lib()
    kw = download_kwargs(access, progress)
    why = "offline mode (HF_HUB_OFFLINE)"
    if not offline:
        api = hf.HfApi(endpoint=access.endpoint, token=access.token)
        try:
            commit, listing = list_repo(api, repo_id, revision)
        except Exception as e:  # huggingface_hub's errors, or its HTTP client's connection errors
            err = hub_error(e, repo_id, revision, api.endpoint, spec=spec)
            if err is not None:
                raise err from e
            if not is_unreachable(e):
                raise
            why = f"{api.endpoint} is unreachable ({describe(e)})"
            logger.warning("%s; looking for %s in the Hub cache", why, spec)
        else:
            read_index = _IndexReader(hf, repo_id, revision, commit, listing, kw, jobs)
            paths = base_paths(listing, wants, read_index, where=f"{repo_id}@{commit}")
            logger.info("%s: %d files of the base (commit %s)", repo_id, len(paths), commit)
            # By the revision asked for, so that the cache records where it points (for offline use).
            rest = [p for p in paths if p not in read_index.fetched]  # never empty: weights are not
            root = download_files(hf, repo_id, revision, rest, **kw)
            if root.name != commit:  # the branch moved between listing and download: list again
                commit, listing = list_repo(api, repo_id, root.name)
                paths = [p for p in paths if p in listing]
            return _checked(
                hf, repo_id, (revision, commit), root, {p: listing[p] for p in paths}, kw, jobs, progress
            )
    return _cached_base(hf, repo_id, revision, spec, wants, kw, jobs, why)


def _cached_base(
    hf: Any,
    repo_id: str,
    revision: str,
    spec: str,
    wants: BaseWants,
    kw: dict[str, Any],
    jobs: int,
    why: str,
) -> HubPayload:
    """The base as an earlier run left it in the Hub cache (offline, or the Hub out of reach: `why`)."""
    kw = {k: v for k, v in kw.items() if k not in ("endpoint", "token", "force_download")}
    try:
        root = snapshot(hf, repo_id, revision, [], local_files_only=True, **kw)
        on_disk = {e.name: HubFile(0) for e in os.scandir(root) if not e.name.startswith(".")}
        paths = base_paths(
            on_disk,
            wants,
            lambda p: read_bounded(root / p, _INDEX_BYTES, "a weights index"),
            where=str(root),
            complete=False,
        )
        files = {}
        for p in paths:
            etag = recorded_etag(root, False, p)
            if etag is None:
                raise FileNotFoundError(root / p)
            lfs = len(etag) == 64
            files[p] = HubFile((root / p).stat().st_size, None if lfs else etag, etag if lfs else None)
    except XorWeightsError:
        raise
    except Exception as e:  # LocalEntryNotFoundError, missing files
        raise HubError(
            f"no local folder {spec!r}, and the base {repo_id}@{revision} is not in the Hub cache with the "
            f"files this payload reads: {why}; run once online to download them",
            path=spec,
        ) from e
    got = checked_files(
        repo_id, revision, recorded_commit(root, False, ""), root, "", files, None, role="base"
    )
    check_lfs_files(got, list(files), jobs=jobs, progress=False)
    return got


class _IndexReader:
    """Reads a small file of the repo (a weights index), downloaded into the cache first and checked
    against the listing as every base file is (a damaged cached copy downloaded again once)."""

    def __init__(
        self,
        hf: Any,
        repo_id: str,
        revision: str,
        commit: str,
        listing: Mapping[str, HubFile],
        kw: Mapping[str, Any],
        jobs: int,
    ) -> None:
        self.hf, self.repo_id, self.revision, self.commit, self.kw = hf, repo_id, revision, commit, kw
        self.listing, self.jobs = listing, jobs
        self.fetched: set[str] = set()

    def __call__(self, path: str) -> bytes:
        root = download_files(self.hf, self.repo_id, self.commit, [path], **self.kw)
        self.fetched.add(path)
        at = (self.revision, self.commit)
        _checked(self.hf, self.repo_id, at, root, {path: self.listing[path]}, self.kw, self.jobs, False)
        return read_bounded(root / path, _INDEX_BYTES, "a weights index")


def _checked(
    hf: Any,
    repo_id: str,
    at: tuple[str, str],
    root: Path,
    files: Mapping[str, HubFile],
    kw: Mapping[str, Any],
    jobs: int,
    progress: bool,
) -> HubPayload:
    """The downloaded `files` under `root` checked against the listing (size, git blob id, sha256),
    a damaged copy downloaded again once; `at` is the revision asked for and its commit."""
    revision, commit = at
    refetch = refetcher(hf, repo_id, commit, root, kw)
    got = checked_files(repo_id, revision, commit, root, "", dict(files), None, refetch, role="base")
    check_lfs_files(got, list(files), jobs=jobs, progress=progress)
    return got


def base_paths(
    listing: Mapping[str, HubFile], wants: BaseWants, read_index: Any, *, where: str, complete: bool = True
) -> list[str]:
    """The repo paths (top folder only) a decode reads of a base whose files are `listing`.

    `complete`: `listing` is the repo's (else the files a cache holds, which may lack some).

    Raises:
        `InputError`: the decode reads tensors and the repo holds no weights.
        `FileNotFoundError`: `listing` is not `complete` and lacks a shard the index names.
    """
    top = sorted(p for p in listing if "/" not in p)
    named = [n for n in wants.files if n in listing]
    absent = [n for n in wants.files if n not in listing]
    reads_tensors = wants.tensors is None or bool(wants.tensors) or (wants.generate and bool(absent))
    if not reads_tensors:
        return sorted(set(named))
    for patterns, index in _CONTAINERS:  # noqa: B007 (the container found, and its index)
        weights = [p for p in top if any(fnmatch.fnmatch(p, pat) for pat in patterns)]
        if weights:
            break
    else:
        raise InputError(
            f"{where} holds no weights (*.safetensors, *.bin or consolidated.*.pth) to read "
            + (f"{abridged(sorted(wants.tensors), 3)} from" if wants.tensors else "the base from")
            + (f", nor {abridged(absent, 3)}" if absent else ""),
            path=where,
        )
    extra = [*_CONFIGS, *(_LLAMA_EXTRA if index is None or wants.generate else ())]
    if index in listing and wants.tensors and not (wants.generate and absent):
        shards = _index_shards(_json.loads(read_index(index), f"{where}:{index}"), wants.tensors)
        if shards is not None and not complete and not shards <= set(weights):
            raise FileNotFoundError(f"{where}: no {abridged(sorted(shards - set(weights)), 3)}")
        if shards is not None and shards <= set(weights):
            weights = sorted(shards)
        extra.append(index)
    return sorted({*named, *weights, *(p for p in extra if p in listing)})


def _index_shards(doc: Any, tensors: Collection[str]) -> set[str] | None:
    """The files a weights index names for `tensors`; None when it does not name them all (a
    malformed index is no index: every weight file is read)."""
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        return None
    named = [weight_map.get(t) for t in tensors]
    return set(named) if all(isinstance(s, str) for s in named) else None  # type: ignore[arg-type]
