"""Publish an encoded release to the Hub: prove the payload, write its card, upload, check the upload.

The repo gets the payload in `payload/` and a generated `README.md` beside it holding the decode
command and the checksums, so `xorweights decode OWNER/NAME` needs nothing else.

Publishing again to the same branch is safe: a branch already holding this very release gets no
commit, and a changed payload's commit deletes the files of `payload/` it no longer has, so the
branch never holds a mix of two payloads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._display import abridged
from .._progress import bars_shown
from .._sizing import default_jobs
from .._version import version
from ..checksum_folders import list_files
from ..checksum_manifests import load_checksums
from ..checksum_types import ChecksumManifest
from ..errors import ChecksumMismatchError, HubError, InputError, MissingFileError, XorWeightsError
from ..formats import native
from ..formats.native_manifest import (
    MANIFEST_NAME,
    NativeManifest,
    check_base_model,
    is_native,
    load_manifest,
)
from ..formats.raw_storage import RawItem, manifest_items, refuse_unallowed
from ..hashing import git_blob_hasher, hash_files
from ..outfolder.paths import check_regular_file
from ..pipeline import FileSource
from . import model_card
from .access import HubFile, list_repo, short_error
from .checksum_sources import checksums_from_hub
from .download import hub_bars_off
from .model_card import CARD_NAME
from .repo_spec import validate_repo_id, validate_revision
from .upload import ensure_repo, http_status, upload_folder
from .watch import PUBLISH_ANSWER, Watch, describe, from_http_client, stall_timeout
from .wheel import WHEEL_FOLDER, check_attached, install_plan, listed_as, local_sha256

logger = logging.getLogger(__name__)

#: The repo folder of the payload's files, as a path prefix.
_FOLDER = f"{model_card.PAYLOAD_FOLDER}/"


@dataclass(frozen=True)
class PublishReport:
    """What was uploaded where, and what was proven about it."""

    repo_id: str
    revision: str
    commit: str
    url: str
    format: str
    files: tuple[str, ...]
    """Repo paths of the release (the payload's files and README.md)."""
    payload_bytes: int
    """Total size of the payload files."""
    card: str
    """The generated model card."""
    seconds: float
    unchanged: bool = False
    """The branch already held this very release: nothing was committed (`commit` is its head)."""
    removed: tuple[str, ...] = ()
    """Repo paths of an earlier payload that the commit deleted."""
    base_model: str | None = None
    license: str = model_card.DEFAULT_LICENSE
    license_name: str | None = None
    license_link: str | None = None
    install: str = ""
    """What the card tells its reader to `pip install`, or the repo path of the wheel it carries
    (`install/...`), which the card says to download and install."""

    def to_dict(self) -> dict[str, object]:
        return {
            "operation": "publish",
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "url": self.url,
            "format": self.format,
            "files": list(self.files),
            "payload_bytes": self.payload_bytes,
            "unchanged": self.unchanged,
            "removed": list(self.removed),
            "base_model": self.base_model,
            "license": self.license,
            "license_name": self.license_name,
            "license_link": self.license_link,
            "install": self.install,
            "card": self.card,
            "seconds": round(self.seconds, 3),
        }


def _version() -> str:
    """The installed xorweights version (for the card and the commit message)."""
    return version()


@dataclass(frozen=True)
class _Release:
    """What a payload folder publishes."""

    format: str
    checksums: ChecksumManifest
    want: dict[str, str | None]
    """Each payload file and the sha256 it must have (None: not known beforehand)."""
    native: NativeManifest | None = None
    raw: Sequence[RawItem] = ()
    """What the payload stores unmasked (native payloads)."""

    @property
    def names(self) -> list[str]:
        return sorted(self.want)


def _release(
    payload_dir: Path,
    repo_id: str,
    checksums: os.PathLike[str] | str | ChecksumManifest | None,
    allow_raw: Sequence[str] = (),
) -> _Release:
    """Format, release checksums, and the payload files with the sha256 each must have."""
    if check_regular_file(payload_dir / MANIFEST_NAME, payload_dir) and is_native(payload_dir):
        manifest = load_manifest(payload_dir / MANIFEST_NAME)
        native.check_payload_files(manifest, payload_dir)
        for f in manifest.files:  # the tensors the manifest lists are the ones the payload holds
            if f.method == "tensor-xor":
                native.payload_header(FileSource(payload_dir / f.name), f)
        raw = manifest_items(manifest, payload_dir, publishing=True)  # every frame checked, too
        refuse_unallowed(raw, allow_raw, where=payload_dir / MANIFEST_NAME, publishing=True)
        release = manifest.to_checksums(
            repo_id.split("/")[-1],
            f"xorweights payload, published with xorweights {_version()}",
            repo_id=repo_id,
        )
        want: dict[str, str | None] = {f.name: f.payload_sha256 for f in manifest.files}
        want[MANIFEST_NAME] = None
        return _Release("xorweights", release, want, manifest, raw)
    if allow_raw:
        raise InputError(
            f"{payload_dir} is a file-level (oasst) payload: `allow_raw` applies to native payloads",
            path=payload_dir,
        )
    if checksums is None:
        raise InputError(
            f"{payload_dir} is a file-level (oasst) payload: pass `checksums` with the manifest "
            "`xorweights encode --manifest` wrote, so the card can carry the base and decoded checksums",
            path=payload_dir,
        )
    given = (
        checksums
        if isinstance(checksums, ChecksumManifest)
        else load_checksums(checksums, remote=checksums_from_hub)
    )
    names = list_files(payload_dir)
    decoded = given.stage("decoded")
    unlisted = [n for n in names if n not in decoded]
    if unlisted or not names:
        raise InputError(
            f"{payload_dir}: {abridged(unlisted) or 'no files'} not in the decoded checksums of "
            f"{given.release}; wrong manifest?",
            path=payload_dir,
        )
    release = ChecksumManifest(
        release=repo_id.split("/")[-1],
        repo_id=repo_id,
        description=given.description or f"oasst payload, published with xorweights {_version()}",
        stages={k: v for k, v in given.stages.items() if k in ("hf_base", "decoded")},
        raw_files=given.raw_files,
        base_model=given.base_model,
    )
    return _Release("oasst", release, dict.fromkeys(names))


def publish(
    payload: os.PathLike[str] | str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    checksums: os.PathLike[str] | str | ChecksumManifest | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    allow_raw: Sequence[str] = (),
    jobs: int | None = None,
    progress: bool = False,
    base_name: str | None = None,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
    install_from: str | None = None,
    attach_wheel: os.PathLike[str] | str | None = None,
) -> PublishReport:
    """Upload an encoded payload folder to a Hub repo with a generated model card.

    Before anything is sent, every payload file of a native payload is hashed and checked against
    `xorweights.json`; after the upload, the sha256 the Hub lists for each file is compared with
    the local one. A branch that already holds this release gets no commit (`report.unchanged`);
    files of an earlier payload in `payload/` are deleted by the same commit (`report.removed`).

    Args:
        payload: the folder `xorweights encode` wrote.
        repo_id: `owner/name`; created if missing, else it must be writable with `token`.
        private: create the repo private; an existing public repo is then refused, not changed.
        revision: a branch to commit to (created from `main` if missing); default `main`.
        checksums: for a file-level (`oasst`) payload, the manifest `encode --manifest` wrote.
        base_name: the card's base model (a Hub repo id is its `base_model`); default: encode's.
        license, license_name, license_link: the card's Hub license (default `other`: the base's
            terms), and for `other` the terms' name and link (both or neither).
        install_from, attach_wheel: where the card says to get xorweights: any `pip install`
            argument, or this version's wheel, committed to `install/` (docs/hub.md).
        allow_raw: the patterns the payload was encoded with, when its manifest stores fine-tuned
            tensors unmasked: each raw tensor must be named by one of them again.
        commit_message: default "Publish <name> with xorweights <version>".
        endpoint, token, jobs, progress: `HF_ENDPOINT`, `HF_TOKEN`; files hashed at once; bars.

    Raises:
        `RawStorageError`: the payload stores fine-tuned tensors unmasked that `allow_raw` does
            not name (nothing is uploaded); `UnmaskedFrameError`, a compressed file holds a tensor
            its manifest masks in stored frames.
        `MissingFileError`: the folder or a payload file is missing.
        `ChecksumMismatchError`: a payload file differs from xorweights.json, or the Hub lists
            another sha256 after the upload.
        `HubError`: the Hub refused the repo or the upload, or the repo is someone else's.
        `InputError`: a malformed repo id, branch, base name, license or `install_from`, license
            terms the Hub's card rules refuse, or `private` for an existing public repo.
    """
    started = time.perf_counter()
    payload_dir = _checked_arguments(payload, repo_id, revision, base_name)
    terms = model_card.check_license_terms(license, license_name, license_link)
    install, extra = install_plan(install_from, attach_wheel, _version())
    rel = _release(payload_dir, repo_id, checksums, allow_raw)
    release = _named_base(rel.checksums, base_name)
    names = rel.names
    for n in names:
        check_regular_file(payload_dir / n, payload_dir)
    sha256 = _hash_all(payload_dir, names, rel.want, jobs=jobs or default_jobs(), progress=progress)
    attached = _Attached(extra, local_sha256(extra))
    sizes = {n: (payload_dir / n).stat().st_size for n in names}
    payload_bytes = sum(sizes.values())
    branch = revision or "main"
    card = _card(repo_id, rel, release, payload_bytes, branch, terms, install, next(iter(extra), None))
    message = commit_message or f"Publish {repo_id.split('/')[-1]} with xorweights {_version()}"

    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    # Waits the Hub asks for: 60 s at most; a silent Hub: PUBLISH_ANSWER x T per request, 3 requests.
    with Watch(f"{repo_id}@{branch}", answer=PUBLISH_ANSWER * stall_timeout()).active():
        sent = _send(
            api, repo_id, branch, payload_dir, sizes, sha256, card, message, private, progress, attached
        )
    _check_listing(repo_id, sent.commit, sent.listed, payload_dir, sizes, sha256)
    check_attached(repo_id, sent.commit, sent.listed, extra, attached.sha256)
    logger.info("published %s files to %s@%s", len(names), repo_id, sent.commit)
    return PublishReport(
        repo_id=repo_id,
        revision=branch,
        commit=sent.commit,
        url=f"{api.endpoint}/{repo_id}",
        format=rel.format,
        files=tuple([*(f"{_FOLDER}{n}" for n in names), *extra, CARD_NAME]),
        payload_bytes=payload_bytes,
        card=card,
        seconds=time.perf_counter() - started,
        unchanged=sent.unchanged,
        removed=sent.removed,
        base_model=release.base_model,
        license=terms.id,
        license_name=terms.name,
        license_link=terms.link,
        install=next(iter(extra), None) or install or model_card.default_install(_version()),
    )


def _card(
    repo_id: str,
    rel: _Release,
    release: ChecksumManifest,
    payload_bytes: int,
    branch: str,
    terms: model_card.License,
    install_from: str | None,
    wheel: str | None = None,
) -> str:
    """The release's model card (`install_from` None: this version, from the package index;
    `wheel`: the repo path of the wheel it carries)."""
    return model_card.render(
        repo_id,
        release,
        payload_format=rel.format,
        version=_version(),
        payload_bytes=payload_bytes,
        native=rel.native,
        raw=rel.raw,
        revision=branch,
        base_model=release.base_model,
        license=terms,
        install_from=install_from,
        wheel=wheel,
    )


def _checked_arguments(
    payload: os.PathLike[str] | str,
    repo_id: str,
    revision: str | None,
    base_name: str | None,
) -> Path:
    """The payload folder, once the arguments of `publish` are found good.

    Raises:
        `InputError`: a malformed repo id, branch or base name.
        `MissingFileError`: the payload folder is missing.
    """
    validate_repo_id(repo_id)
    if "/" not in repo_id:
        raise InputError(f"repo id {repo_id!r}: expected owner/name", path=repo_id)
    if revision is not None:
        validate_revision(revision)
    if base_name is not None:
        check_base_model(base_name)
    payload_dir = Path(payload)
    if not payload_dir.is_dir():
        raise MissingFileError(f"payload folder not found: {payload_dir}", path=payload_dir)
    return payload_dir


def _named_base(release: ChecksumManifest, base_name: str | None) -> ChecksumManifest:
    """`release` with `base_name` as its base model, when one is given (else the one `encode` recorded)."""
    if base_name is None or base_name == release.base_model:
        return release
    if release.base_model is not None:
        logger.info("base model %s instead of the recorded %s", base_name, release.base_model)
    return dataclasses.replace(release, base_model=base_name)


@dataclass(frozen=True)
class _Sent:
    """What the branch holds once `_send` is done."""

    commit: str
    listed: Mapping[str, HubFile]
    """The Hub's listing at `commit`."""
    removed: tuple[str, ...]
    """Repo paths of an earlier payload that the commit deleted."""
    unchanged: bool
    """The branch already held this release: nothing was committed."""


@dataclass(frozen=True)
class _Attached:
    """The files a release carries beside its payload (a wheel), by repo path, with their sha256."""

    files: Mapping[str, Path]
    sha256: Mapping[str, str]


def _send(
    api: Any,
    repo_id: str,
    branch: str,
    payload_dir: Path,
    sizes: Mapping[str, int],
    sha256: Mapping[str, str],
    card: str,
    message: str,
    private: bool,
    progress: bool,
    attached: _Attached,
) -> _Sent:
    """Create the repo and branch if missing, then commit the payload and card unless the branch
    already holds them; files of an earlier payload in `payload/` are deleted by the same commit.

    Raises:
        `HubError`: the Hub refused the repo or the upload (naming a token that may not write).
        `InputError`: `private` for an existing public repo.
    """
    existed = False
    try:
        existed = ensure_repo(api, repo_id, private=private)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        head, before = list_repo(api, repo_id, branch)
        removed = tuple(sorted(p for p in before if p.startswith(_FOLDER) and p[len(_FOLDER) :] not in sizes))
        extra = attached.files
        same_extra = all(listed_as(before.get(p), f, attached.sha256[p]) for p, f in extra.items())
        if not removed and same_extra and _holds(before, payload_dir, sizes, sha256, card.encode()):
            logger.info("%s@%s already holds this release; nothing to commit", repo_id, branch)
            return _Sent(head, before, removed, unchanged=True)
        commit = _upload_release(
            api, repo_id, branch, payload_dir, list(sizes), card, message, progress, extra
        )
        return _Sent(commit, list_repo(api, repo_id, commit)[1], removed, unchanged=False)
    except XorWeightsError:
        raise
    except Exception as e:  # huggingface_hub's errors, its HTTP client's, or reading a file
        hint, said = "", short_error(e)
        if from_http_client(e):  # the network's: in words
            hint, said = "; try again later", describe(e)
        if http_status(e) in (401, 403):
            hint = "; check HF_TOKEN (a write token is needed)"
            if existed:
                hint = f"; {repo_id} exists, but this token may not write to it (someone else's?){hint}"
        raise HubError(f"publishing to {repo_id} on {api.endpoint} failed: {said}{hint}", path=repo_id) from e


def _upload_release(
    api: Any,
    repo_id: str,
    branch: str,
    payload_dir: Path,
    names: list[str],
    card: str,
    message: str,
    progress: bool,
    extra: Mapping[str, Path],
) -> str:
    """Commit the payload files to `payload/`, the card beside it and the `extra` files (a wheel)
    at their repo paths; returns the commit id."""
    with tempfile.TemporaryDirectory(prefix="xorweights-publish-") as tmp:
        staging = Path(tmp)
        (staging / model_card.PAYLOAD_FOLDER).mkdir()
        for n in names:  # links: the upload reads the payload where it is
            (staging / model_card.PAYLOAD_FOLDER / n).symlink_to((payload_dir / n).resolve())
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
        for repo_path, local in extra.items():
            (staging / repo_path).parent.mkdir(parents=True, exist_ok=True)
            (staging / repo_path).symlink_to(local.resolve())
        # Whatever else `payload/` (or `install/`) holds is an earlier release's: deleted in the same commit.
        delete = [f"{_FOLDER}*", f"{WHEEL_FOLDER}/*"]
        with contextlib.nullcontext() if bars_shown(progress) else hub_bars_off(None):
            return upload_folder(api, repo_id, staging, branch, message, delete=delete)


def _check_listing(
    repo_id: str,
    commit: str,
    listed: Mapping[str, HubFile],
    payload_dir: Path,
    sizes: Mapping[str, int],
    sha256: Mapping[str, str],
) -> None:
    """Check that `payload/` at `commit` holds this payload only, each file with its size and sha256.

    Raises:
        `HubError`: `payload/` holds files not in this payload.
        `ChecksumMismatchError`: a file is missing, or listed with another size or sha256.
    """
    mixed = sorted(p for p in listed if p.startswith(_FOLDER) and p[len(_FOLDER) :] not in sizes)
    if mixed:
        raise HubError(
            f"{repo_id}@{commit}: {_FOLDER} still holds {len(mixed)} files not in this payload "
            f"({', '.join(mixed[:3])}{', ...' if len(mixed) > 3 else ''})",
            path=repo_id,
        )
    for n, size in sizes.items():
        got = listed.get(f"{_FOLDER}{n}")
        if got is None or got.size != size or (got.sha256 is not None and got.sha256 != sha256[n]):
            raise ChecksumMismatchError(
                f"{repo_id}@{commit}: {model_card.PAYLOAD_FOLDER}/{n} is listed with sha256 "
                f"{got.sha256 if got else 'none (missing)'}, but the local file has {sha256[n]}",
                path=payload_dir / n,
                expected=sha256[n],
                actual=got.sha256 if got else None,
                algorithm="sha256",
                stage="payload",
            )


def _holds(
    listed: Mapping[str, HubFile],
    payload_dir: Path,
    sizes: Mapping[str, int],
    sha256: Mapping[str, str],
    card: bytes,
) -> bool:
    """Whether a listing holds this very card and every payload file (sha256, or git blob id for
    files not in LFS)."""
    for n in sizes:
        if not listed_as(listed.get(f"{model_card.PAYLOAD_FOLDER}/{n}"), payload_dir / n, sha256[n]):
            return False
    listed_card = listed.get(CARD_NAME)
    h = git_blob_hasher(len(card))
    h.update(card)
    blob = h.hexdigest()
    return listed_card is not None and listed_card.size == len(card) and listed_card.blob_id == blob


def _hash_all(
    folder: Path, names: list[str], want: dict[str, str | None], *, jobs: int, progress: bool
) -> dict[str, str]:
    """sha256 of every payload file; a native payload's must match its manifest."""
    out: dict[str, str] = {}
    paths = {n: folder / n for n in names}
    for n, got in hash_files(paths, ("sha256",), jobs=jobs, progress=progress, desc="hash payload"):
        expected = want.get(n)
        if expected is not None and got["sha256"] != expected:
            raise ChecksumMismatchError(
                f"{folder / n}: sha256 {got['sha256']}, but {MANIFEST_NAME} gives {expected}; "
                "the payload changed since it was encoded, nothing was uploaded",
                path=folder / n,
                expected=expected,
                actual=got["sha256"],
                algorithm="sha256",
                stage="payload",
            )
        out[n] = got["sha256"]
    return out
