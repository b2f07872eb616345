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
from .._version import installed_from, version
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
from ..hashing import git_blob_hasher, hash_file, hash_files
from ..outfolder.paths import check_regular_file
from ..pipeline import FileSource
from . import model_card
from .access import HubFile, list_repo, short_error
from .checksum_sources import checksums_from_hub
from .download import hub_bars_off
from .model_card import CARD_NAME
from .payload import git_blob_id
from .repo_spec import validate_repo_id, validate_revision
from .watch import PUBLISH_ANSWER, Watch, describe, from_http_client, stall_timeout
from .wheel import WHEEL_FOLDER, check_wheel

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
        base_name: the base model for the card (a Hub repo id becomes its `base_model`); default:
            the one `encode --base-name` recorded.
        license: the card's Hub license identifier; default `other` (the base's terms apply).
        license_name, license_link: for the license `other` only, both or neither: the name
            (`my-license-1.0`) and link (a URL or a repo file) of the terms, in the front matter.
        install_from: what the card says to `pip install` (a requirement, a git or wheel URL);
            default `xorweights==<this version>`, from the Python Package Index, as the card says.
        attach_wheel: the wheel of this xorweights version (`python -m build`), committed to the
            repo's `install/` folder; the card then says to download and install that file, which
            works for every reader of the repo (instead of `install_from`).
        allow_raw: the patterns the payload was encoded with, when its manifest stores fine-tuned
            tensors unmasked: each raw tensor must be named by one of them again.
        commit_message: default "Publish <name> with xorweights <version>".
        endpoint, token: as for `huggingface_hub` (default: `HF_ENDPOINT`, `HF_TOKEN`).
        jobs: files hashed at once.
        progress: show progress on stderr (a bar on a terminal, else a line every 30 s).

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
    install = model_card.check_install_from(install_from) if install_from is not None else None
    if install is not None and attach_wheel is not None:
        raise InputError("`install_from` and `attach_wheel` both say where to get xorweights: give one")
    extra = (
        {}
        if attach_wheel is None
        else {_wheel_path(check_wheel(attach_wheel, _version())): Path(attach_wheel)}
    )
    if install is None and not extra:
        install = _default_install()
    rel = _release(payload_dir, repo_id, checksums, allow_raw)
    release = _named_base(rel.checksums, base_name)
    names = rel.names
    for n in names:
        check_regular_file(payload_dir / n, payload_dir)
    sha256 = _hash_all(payload_dir, names, rel.want, jobs=jobs or default_jobs(), progress=progress)
    sizes = {n: (payload_dir / n).stat().st_size for n in names}
    extra_sha = {p: hash_file(f, ["sha256"])["sha256"] for p, f in extra.items()}
    payload_bytes = sum(sizes.values())
    branch = revision or "main"
    card = _card(repo_id, rel, release, payload_bytes, branch, terms, install, next(iter(extra), None))
    message = commit_message or f"Publish {repo_id.split('/')[-1]} with xorweights {_version()}"

    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    # Waits the Hub asks for: 60 s at most; a silent Hub: PUBLISH_ANSWER x T per request, 3 requests.
    with Watch(f"{repo_id}@{branch}", answer=PUBLISH_ANSWER * stall_timeout()).active():
        sent = _send(
            api, repo_id, branch, payload_dir, sizes, sha256, card, message, private, progress, extra
        )
    _check_listing(repo_id, sent.commit, sent.listed, payload_dir, sizes, sha256)
    _check_extra(repo_id, sent.commit, sent.listed, extra, extra_sha)
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
    extra: Mapping[str, Path],
) -> _Sent:
    """Create the repo and branch if missing, then commit the payload and card unless the branch
    already holds them; files of an earlier payload in `payload/` are deleted by the same commit.

    Raises:
        `HubError`: the Hub refused the repo or the upload (naming a token that may not write).
        `InputError`: `private` for an existing public repo.
    """
    existed = False
    try:
        existed = _ensure_repo(api, repo_id, private=private)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        head, before = list_repo(api, repo_id, branch)
        removed = tuple(sorted(p for p in before if p.startswith(_FOLDER) and p[len(_FOLDER) :] not in sizes))
        same_extra = all(_listed_as(before.get(p), f) for p, f in extra.items())
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
        if _status(e) in (401, 403):
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
            return _upload_folder(api, repo_id, staging, branch, message, delete=delete)


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


def _check_extra(
    repo_id: str,
    commit: str,
    listed: Mapping[str, HubFile],
    extra: Mapping[str, Path],
    sha256: Mapping[str, str],
) -> None:
    """Check that each `extra` file (a wheel) is listed at `commit` with its size and sha256.

    Raises:
        `ChecksumMismatchError`: a file is missing, or listed with another size or sha256.
    """
    for path, local in extra.items():
        got = listed.get(path)
        if not _listed_as(got, local):
            raise ChecksumMismatchError(
                f"{repo_id}@{commit}: {path} is "
                + (f"listed with sha256 {got.sha256}" if got else "missing")
                + f", but the local file has {sha256[path]}",
                path=local,
                expected=sha256[path],
                actual=got.sha256 if got else None,
                algorithm="sha256",
                stage="payload",
            )


def _default_install() -> str | None:
    """What the card says to install when the publisher names nothing: this xorweights from the
    git URL and commit it was installed from, if so; else None (this version from the package
    index), said in a warning to be unproven when it was installed from a local copy."""
    origin = installed_from()
    if origin is None:
        return None
    vcs = origin.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs") == "git" and isinstance(vcs.get("commit_id"), str):
        return f"xorweights@git+{origin['url']}@{vcs['commit_id']}"
    logger.warning(
        "xorweights %s was installed from %s, not from a package index: the card says `pip install "
        "xorweights==%s`, which works for its readers once that version is on PyPI; to be sure, attach "
        "its wheel (`attach_wheel=`, built with `python -m build`) or name its source (`install_from=`)",
        _version(),
        origin["url"],
        _version(),
    )
    return None


def _listed_as(got: HubFile | None, local: Path) -> bool:
    """Whether a listed file is `local` (its size, and its sha256 or git blob id)."""
    if got is None or got.size != local.stat().st_size:
        return False
    if got.sha256 is not None:
        return got.sha256 == hash_file(local, ["sha256"])["sha256"]
    return got.blob_id == git_blob_id(local)


def _wheel_path(wheel: Path) -> str:
    """The repo path of a release's wheel."""
    return f"{WHEEL_FOLDER}/{wheel.name}"


def _status(e: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub error (None: no HTTP answer)."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _ensure_repo(api: Any, repo_id: str, *, private: bool) -> bool:
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
        if _status(e) not in (401, 403):
            raise
        owner = repo_id.split("/")[0]
        raise HubError(
            f"cannot create {repo_id} on {api.endpoint} (HTTP {_status(e)}): this token may not create "
            f"repos under {owner!r}, or the repo is someone else's; create it there first, or check HF_TOKEN",
            path=repo_id,
        ) from e
    return False


def _holds(
    listed: Mapping[str, HubFile],
    payload_dir: Path,
    sizes: Mapping[str, int],
    sha256: Mapping[str, str],
    card: bytes,
) -> bool:
    """Whether a listing holds this very card and every payload file (sha256, or git blob id for
    files not in LFS)."""
    for n, size in sizes.items():
        got = listed.get(f"{model_card.PAYLOAD_FOLDER}/{n}")
        if got is None or got.size != size:
            return False
        if got.sha256 is not None:
            if got.sha256 != sha256[n]:
                return False
        elif got.blob_id != git_blob_id(payload_dir / n):
            return False
    listed_card = listed.get(CARD_NAME)
    h = git_blob_hasher(len(card))
    h.update(card)
    blob = h.hexdigest()
    return listed_card is not None and listed_card.size == len(card) and listed_card.blob_id == blob


def _upload_folder(
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
