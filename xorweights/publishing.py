"""Publish an encoded release to the Hub: prove the payload, write its card, upload, check the upload.

The repo gets the payload in `payload/` and a generated `README.md` beside it holding the decode
command and the checksums, so `xorweights decode OWNER/NAME` needs nothing else.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import hub, model_card, native
from ._paths import check_regular_file
from .checksums import ChecksumManifest, FileDigest, hash_files, list_files, load_checksums
from .errors import ChecksumMismatchError, HubError, InputError, MissingFileError, XorWeightsError
from .native_manifest import MANIFEST_NAME, NativeManifest, is_native, load_manifest
from .raw_storage import RawItem, manifest_items, refuse_unallowed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishReport:
    """What was uploaded where, and what was proven about it."""

    repo_id: str
    revision: str
    commit: str
    url: str
    format: str
    files: tuple[str, ...]
    """Repo paths uploaded (the payload's files and README.md)."""
    payload_bytes: int
    card: str
    """The generated model card."""
    seconds: float

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
            "seconds": round(self.seconds, 3),
        }


def _version() -> str:
    from . import __version__

    return __version__


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
                native.payload_header(payload_dir / f.name, f)
        raw = manifest_items(manifest, payload_dir)
        refuse_unallowed(raw, allow_raw, where=payload_dir / MANIFEST_NAME, publishing=True)
        decoded = {f.name: FileDigest(sha256=f.sha256, size=f.size) for f in manifest.files}
        release = ChecksumManifest(
            release=repo_id.split("/")[-1],
            repo_id=repo_id,
            description=f"xorweights payload, published with xorweights {_version()}",
            stages={"decoded": decoded},
        )
        want: dict[str, str | None] = {f.name: f.payload_sha256 for f in manifest.files}
        want[MANIFEST_NAME] = None
        return _Release("xorweights", release, want, manifest, raw)
    if allow_raw:
        raise InputError(
            f"{payload_dir} is a file-level (oasst) payload: --allow-raw applies to native payloads",
            path=payload_dir,
        )
    if checksums is None:
        raise InputError(
            f"{payload_dir} is a file-level (oasst) payload: pass --checksums with the manifest "
            "`xorweights encode --manifest` wrote, so the card can carry the base and decoded checksums",
            path=payload_dir,
        )
    given = checksums if isinstance(checksums, ChecksumManifest) else load_checksums(checksums)
    names = list_files(payload_dir)
    decoded = given.stage("decoded")
    unlisted = [n for n in names if n not in decoded]
    if unlisted or not names:
        raise InputError(
            f"{payload_dir}: {', '.join(unlisted) or 'no files'} not in the decoded checksums of "
            f"{given.release}; wrong manifest?",
            path=payload_dir,
        )
    release = ChecksumManifest(
        release=repo_id.split("/")[-1],
        repo_id=repo_id,
        description=given.description or f"oasst payload, published with xorweights {_version()}",
        stages={k: v for k, v in given.stages.items() if k in ("hf_base", "decoded")},
        raw_files=given.raw_files,
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
) -> PublishReport:
    """Upload an encoded payload folder to a Hub repo with a generated model card.

    Before anything is sent, every payload file of a native payload is hashed and checked against
    `xorweights.json`; after the upload, the sha256 the Hub lists for each file is compared with
    the local one.

    Args:
        payload: the folder `xorweights encode` wrote.
        repo_id: `owner/name`; created if missing.
        private: create the repo private.
        revision: a branch to commit to (created from `main` if missing); default `main`.
        checksums: for a file-level (`oasst`) payload, the manifest `encode --manifest` wrote.
        allow_raw: the patterns the payload was encoded with, when its manifest stores fine-tuned
            tensors unmasked: each raw tensor must be named by one of them again.
        commit_message: default "Publish <name> with xorweights <version>".
        endpoint, token: as for `huggingface_hub` (default: `HF_ENDPOINT`, `HF_TOKEN`).
        jobs: files hashed at once.
        progress: show progress bars.

    Raises:
        `RawStorageError`: the payload stores fine-tuned tensors unmasked that `allow_raw` does
            not name (nothing is uploaded).
        `MissingFileError`: the folder or a payload file is missing.
        `ChecksumMismatchError`: a payload file differs from xorweights.json, or the Hub lists
            another sha256 after the upload.
        `HubError`: the Hub refused the repo or the upload.
    """
    started = time.perf_counter()
    hub.validate_repo_id(repo_id)
    if "/" not in repo_id:
        raise InputError(f"repo id {repo_id!r}: expected owner/name", path=repo_id)
    if revision is not None:
        hub.validate_revision(revision)
    payload_dir = Path(payload)
    if not payload_dir.is_dir():
        raise MissingFileError(f"payload folder not found: {payload_dir}", path=payload_dir)
    rel = _release(payload_dir, repo_id, checksums, allow_raw)
    names = rel.names
    for n in names:
        check_regular_file(payload_dir / n, payload_dir)
    sha256 = _hash_all(payload_dir, names, rel.want, jobs=jobs or os.cpu_count() or 1, progress=progress)
    size = sum((payload_dir / n).stat().st_size for n in names)
    branch = revision or "main"
    card = model_card.render(
        repo_id, rel.checksums, payload_format=rel.format, version=_version(), payload_bytes=size,
        native=rel.native, raw=rel.raw, revision=branch,
    )  # fmt: skip
    message = commit_message or f"Publish {repo_id.split('/')[-1]} with xorweights {_version()}"

    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="xorweights-publish-") as tmp:
            staging = Path(tmp)
            (staging / model_card.PAYLOAD_FOLDER).mkdir()
            for n in names:  # links: the upload reads the payload where it is
                (staging / model_card.PAYLOAD_FOLDER / n).symlink_to((payload_dir / n).resolve())
            (staging / hub.CARD_NAME).write_text(card, encoding="utf-8")
            info = api.upload_folder(
                repo_id=repo_id, folder_path=staging, revision=branch, commit_message=message
            )
        commit = info.oid
        listed = hub.list_repo(api, repo_id, commit)[1]
    except XorWeightsError:
        raise
    except Exception as e:  # huggingface_hub's errors, its HTTP client's, or reading a file
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = "; check HF_TOKEN (a write token is needed)" if status in (401, 403) else ""
        raise HubError(
            f"publishing to {repo_id} on {api.endpoint} failed: {hub.short_error(e)}{hint}", path=repo_id
        ) from e
    for n in names:
        got = listed.get(f"{model_card.PAYLOAD_FOLDER}/{n}")
        size = (payload_dir / n).stat().st_size
        if got is None or got.size != size or (got.sha256 is not None and got.sha256 != sha256[n]):
            raise ChecksumMismatchError(
                f"{repo_id}@{commit}: {model_card.PAYLOAD_FOLDER}/{n} is listed with sha256 "
                f"{got.sha256 if got else 'none (missing)'}, but the local file has {sha256[n]}",
                path=payload_dir / n, expected=sha256[n], actual=got.sha256 if got else None,
                algorithm="sha256", stage="payload",
            )  # fmt: skip
    logger.info("published %s files to %s@%s", len(names), repo_id, commit)
    return PublishReport(
        repo_id=repo_id,
        revision=branch,
        commit=commit,
        url=f"{api.endpoint}/{repo_id}",
        format=rel.format,
        files=tuple([*(f"{model_card.PAYLOAD_FOLDER}/{n}" for n in names), hub.CARD_NAME]),
        payload_bytes=size,
        card=card,
        seconds=time.perf_counter() - started,
    )


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
                path=folder / n, expected=expected, actual=got["sha256"], algorithm="sha256", stage="payload",
            )  # fmt: skip
        out[n] = got["sha256"]
    return out
