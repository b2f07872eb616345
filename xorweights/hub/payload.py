"""A payload from the Hub: find its folder in the repo listing, download only its files (or use
the cached copy offline), and check them against the Hub's sizes, git blob ids and sha256.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._display import quoted
from .._line_endings import line_ending_hint
from ..checksum_types import ChecksumManifest
from ..errors import BaseMismatchError, HubError, InputError, PayloadMismatchError, XorWeightsError
from ..formats.native_manifest import MANIFEST_NAME
from ..formats.payload_folder import PayloadHints, files_below, find_payload_dir, find_payload_in_listing
from ..hashing import GIT_BLOB, hash_file, hash_files
from ..outfolder.paths import check_name, check_regular_file
from .access import (
    HubAccess,
    HubFile,
    hf_lib,
    hub_error,
    is_unreachable,
    list_repo,
    offline_default,
    short_error,
)
from .checksum_sources import (
    bundled_checksums,
    card_checksums,
    card_readable,
    checksum_names,
    first_checksums,
)
from .download import (
    download_again,
    download_files,
    download_kwargs,
    drop_stale_aside,
    recorded_commit,
    recorded_etag,
    snapshot,
)
from .model_card import CARD_NAME
from .repo_spec import RepoSpec, is_repo_spec, parse_payload_spec
from .stream import HubFileSource
from .watch import describe, network_error

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubPayload:
    """A payload fetched from the Hub (or found complete in its cache)."""

    repo_id: str
    revision: str
    """The revision asked for (`main` by default)."""
    commit: str | None
    """The commit the files come from (None: a download folder without records)."""
    root: Path
    """The snapshot folder (Hub cache) or the download folder."""
    payload_dir: Path
    files: Mapping[str, HubFile]
    """The payload's files by name relative to `payload_dir`."""
    card: Path | None
    """The repo's README.md, when it has one."""
    checksums: ChecksumManifest | None = None
    """The release's checksums (given, bundled for the repo id, or from the card), if any."""
    streamed: Mapping[str, HubFileSource] = field(default_factory=dict)
    """Payload files read from the Hub as they are decoded (`stream`), by payload name: not on disk."""
    refetch: Callable[[str], None] | None = None
    """Downloads a repo path again, its damaged copy moved aside (None: offline, no second chance)."""
    role: str = "payload"
    """`payload`, or `base` (a base model's files): which error a mismatch is."""

    @property
    def source(self) -> str:
        """`owner/name@commit` (or `@revision` when the commit is not known), for messages."""
        return f"{self.repo_id}@{self.commit or self.revision}"


#: (such as the legacy `xor_codec.py`).
_NOT_PAYLOAD_AT_TOP = ("*.md", "*.py", "LICENSE*", "NOTICE*", "COPYING*")


def _payload_paths(
    listing: Iterable[str], where: str, hints: PayloadHints, *, card: bool
) -> tuple[str, list[str]]:
    """The payload folder in a listing and the repo paths to download: its files, and the card
    when `card` (and the repo has one)."""
    listing = list(listing)
    sub = find_payload_in_listing(listing, where, hints)
    prefix = f"{sub}/" if sub else ""
    names = [
        p
        for p in listing
        if p.startswith(prefix)
        and "/" not in p[len(prefix) :]
        and not p[len(prefix) :].startswith(".")
        and (sub or not any(fnmatch.fnmatch(p, pat) for pat in _NOT_PAYLOAD_AT_TOP))
    ]
    if not names:
        raise InputError(f"{where}: no payload files in {sub or 'the top folder'}", path=where)
    return sub, sorted(names) + ([CARD_NAME] if card and CARD_NAME in listing else [])


def fetch(
    spec: str,
    access: HubAccess | None = None,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    checksums: ChecksumManifest | None = None,
    progress: bool = False,
    stream: bool = False,
) -> HubPayload:
    """Download the payload files of a Hub repo (only those), and check the small ones.

    The payload folder is found in the repo listing as on disk (`payload_folder`: up to three
    levels down; among several, the chosen subfolder, the native one, the one holding the files
    the checksums name, the one named like the repo). The checksums for that choice are
    `checksums`, else the bundled manifest for the repo id, else the model card's block. Only the
    payload's files and the card are fetched, one by one with `hf_hub_download`, into the Hub cache
    or `access.local_dir`. Sizes of all files and git blob ids of the non-LFS ones are checked here;
    LFS files are checked by `check_lfs_files` before use (a decode checks only the files it is
    about to read).

    Args:
        spec: `owner/name[@revision][:subfolder]`.
        access: where files go and how the Hub is reached (defaults: huggingface_hub's).
        revision, subfolder: as the CLI's `--revision`/`--subfolder` (must agree with `spec`).
        checksums: the release's checksums, when the caller has them.
        progress: show download progress.
        stream: download only the files outside LFS (manifest, configs, card); the LFS files are
            listed in `streamed`, to be read from the Hub as they are decoded.

    Raises:
        `HubError`: unknown repo or revision, no access, or the Hub unreachable (or offline)
            with no complete copy cached; the message also says no local folder has that name.
        `PayloadMismatchError`: a small file differs from its git blob id, or a size differs.
        `InputError`: several folders hold model files and nothing tells the payload apart.
    """
    rs = parse_payload_spec(spec, revision=revision, subfolder=subfolder)
    access = access or HubAccess()
    repo_id, revision = rs.repo_id, rs.revision or "main"
    hf = hf_lib()
    api = hf.HfApi(endpoint=access.endpoint, token=access.token)
    where = f"{repo_id}@{revision}"
    offline = offline_default() if access.offline is None else access.offline
    if stream and offline:
        raise InputError(
            f"{spec}: `stream` reads the payload from the Hub, which offline mode forbids; "
            "decode from the cache without `stream`",
            path=spec,
        )
    if access.force_download and offline:
        raise InputError(f"{spec}: `force_download` downloads again, which offline mode forbids", path=spec)
    kw = download_kwargs(access, progress)
    local = access.local_dir is not None
    choose = f"{repo_id}{'@' + rs.revision if rs.revision else ''}:SUBFOLDER (or `subfolder=SUBFOLDER`)"

    def hints(found: ChecksumManifest | None) -> PayloadHints:
        return PayloadHints(rs.subfolder, checksum_names(found), repo_id.split("/")[-1], choose)

    unreachable: Exception | None = None
    if not offline:
        try:
            commit, listing = list_repo(api, repo_id, revision)
        except Exception as e:  # huggingface_hub's errors, or its HTTP client's connection errors
            unreachable = _unreachable(e, repo_id, revision, api.endpoint, spec)
        else:
            found = checksums or bundled_checksums(repo_id)
            card = found is None and card_readable(listing, repo_id)
            if card:  # the card first: its checksums may pick the folder
                root = download_files(hf, repo_id, revision, [CARD_NAME], **kw)
                found = card_checksums(root / CARD_NAME, root, repo_id)
            sub, paths = _payload_paths(listing, where, hints(found), card=card)
            remote = _streamed(paths, listing, sub) if stream else []
            local_paths = [p for p in paths if p not in remote]
            logger.info("%s: downloading %d files of %s (commit %s)", repo_id, len(paths), sub or "/", commit)
            root = (
                download_files(hf, repo_id, revision, local_paths, **kw)
                if local_paths
                else _empty_snapshot(hf, repo_id, commit, kw)
            )
            got = recorded_commit(root, local, local_paths[0]) if local_paths else None
            if got is not None and got != commit:  # the branch moved between listing and download
                commit, listing = list_repo(api, repo_id, got)
                sub, paths = _payload_paths(listing, where, hints(found), card=card)
                remote = _streamed(paths, listing, sub) if stream else []
            files = {p: listing[p] for p in paths if p not in remote}
            if remote:  # every payload file may be streamed: the folder is then made here
                (root / sub).mkdir(parents=True, exist_ok=True)
            refetch = refetcher(hf, repo_id, commit, root, kw)
            fetched = checked_files(repo_id, revision, commit, root, sub, files, found, refetch)
            prefix = f"{sub}/" if sub else ""
            streamed = {
                p[len(prefix) :]: HubFileSource(repo_id, p, commit, listing[p], api.endpoint, access.token)
                for p in remote
            }
            return replace(fetched, streamed=streamed)
    return _from_cache(hf, rs, kw, local, unreachable, checksums, hints)


def _unreachable(e: Exception, repo_id: str, revision: str, endpoint: str, spec: str) -> Exception:
    """`e`, a failed listing, when the Hub is out of reach (the cache may serve); else its error, raised."""
    err = hub_error(e, repo_id, revision, endpoint, spec=spec)
    if err is not None:
        raise err from e
    if not is_unreachable(e):
        if (err := network_error(e, f"{repo_id}@{revision} on {endpoint}")) is e:
            raise e
        raise err from e
    logger.info("cannot reach %s (%s); looking in the local cache", endpoint, short_error(e))
    return e


def refetcher(hf: Any, repo_id: str, commit: str, root: Path, kw: Mapping[str, Any]) -> Callable[[str], None]:
    """Downloads a repo path of `root` again (`download_again`), its damaged copy moved aside."""

    def refetch(path: str) -> None:
        download_again(hf, repo_id, commit, path, root, **kw)

    return refetch


def _empty_snapshot(hf: Any, repo_id: str, commit: str, kw: Mapping[str, Any]) -> Path:
    """The folder a download would have used, for a streamed payload with no file to download."""
    if "local_dir" in kw:
        root = Path(kw["local_dir"])
    else:
        cache = Path(kw.get("cache_dir") or hf.constants.HF_HUB_CACHE)
        root = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
    root.mkdir(parents=True, exist_ok=True)
    return root


def _streamed(paths: Iterable[str], listing: Mapping[str, HubFile], sub: str) -> list[str]:
    """The payload files a streaming decode reads from the Hub: those in LFS (the weights), but
    never the payload's manifest, which is read before anything else."""
    skip = {f"{sub}/{MANIFEST_NAME}" if sub else MANIFEST_NAME, CARD_NAME}
    return [p for p in paths if listing[p].sha256 and p not in skip]


def locate_payload(
    payload: os.PathLike[str] | str,
    access: HubAccess,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    checksums: ChecksumManifest | None = None,
    progress: bool = False,
    apart: Mapping[str, os.PathLike[str] | str] | None = None,
    stream: bool = False,
) -> tuple[Path, HubPayload | None]:
    """The payload folder of a local folder, or of a repo id (then fetched, and its
    `xorweights.json`, if any, checked against the Hub's sha256 before it is read).

    `apart`: folders by role (`base`, `out`) that `access.local_dir` must neither be, hold, nor
    sit inside: a download there would overwrite them.

    Raises:
        as `fetch` and `find_payload_dir`; `InputError`: a revision for a local folder, or a
        download folder overlapping a folder in `apart`.
    """
    if is_repo_spec(payload):
        if access.local_dir is not None:
            here = Path(access.local_dir).resolve()
            for role, folder in (apart or {}).items():
                there = Path(folder).resolve()
                if here == there or there in here.parents or here in there.parents:
                    raise InputError(
                        f"`local_dir` {access.local_dir} overlaps the {role} folder {folder}: the download "
                        "would overwrite it; choose another folder",
                        path=access.local_dir,
                    )
        fetched = fetch(
            str(payload),
            access,
            revision=revision,
            subfolder=subfolder,
            checksums=checksums,
            progress=progress,
            stream=stream,
        )
        check_lfs_files(fetched, [MANIFEST_NAME], jobs=1, progress=False)
        return fetched.payload_dir, fetched
    for option, given in (("`revision`", revision is not None), ("`stream`", stream)):
        if given:
            raise InputError(
                f"{option} applies to a Hub repo id, not to the local folder {payload}", path=payload
            )
    return find_payload_dir(payload, PayloadHints(subfolder, checksum_names(checksums))), None


def _from_cache(
    hf: Any,
    rs: RepoSpec,
    kw: dict[str, Any],
    local: bool,
    unreachable: Exception | None,
    checksums: ChecksumManifest | None,
    hints: Callable[[ChecksumManifest | None], PayloadHints],
) -> HubPayload:
    """The payload as cached by an earlier download; offline, or with the Hub unreachable."""
    repo_id, revision = rs.repo_id, rs.revision or "main"
    where = f"{repo_id}@{revision}"
    why = "offline mode (HF_HUB_OFFLINE)"
    if unreachable is not None:
        why = f"the Hub is unreachable ({describe(unreachable)})"
    kw = {k: v for k, v in kw.items() if k not in ("endpoint", "token", "force_download")}
    try:
        root = snapshot(hf, repo_id, revision, [], local_files_only=True, **kw)
        if local and not (root / ".cache" / "huggingface" / "download").is_dir():
            raise FileNotFoundError(root)
        listing = files_below(root)
        if not [p for p in listing if p != CARD_NAME]:  # only the card (fetched for its checksums)
            raise FileNotFoundError(root)
        found = first_checksums(repo_id, checksums, root / CARD_NAME if CARD_NAME in listing else None, root)
        sub, paths = _payload_paths(listing, where, hints(found), card=CARD_NAME in listing)
        # Lets huggingface_hub say whether the snapshot is complete (it knows when it kept the listing).
        root = snapshot(hf, repo_id, revision, [glob.escape(p) for p in paths], local_files_only=True, **kw)
    except XorWeightsError:
        raise
    except Exception as e:  # LocalEntryNotFoundError, IncompleteSnapshotError, missing folders
        raise HubError(
            f"no local folder {quoted(str(rs))}, and {where} is not fully in the "
            + (f"download folder {kw['local_dir']}" if local else "Hub cache")
            + f": {why}; run once online to download it",
            path=str(rs),
        ) from e
    files: dict[str, HubFile] = {}
    for p in paths:
        etag = recorded_etag(root, local, p)
        if etag is None:  # nothing to check the file against: not taken on trust
            raise HubError(
                f"{root / p} has no download record of huggingface_hub (not downloaded there, or the record "
                f"is gone), so it cannot be checked offline; run once online to download {where}",
                path=root / p,
            )
        size = (root / p).stat().st_size
        lfs = etag is not None and len(etag) == 64
        files[p] = HubFile(size, None if lfs else etag, etag if lfs else None)
    commit = recorded_commit(root, local, paths[0]) if paths else None
    (logger.warning if unreachable is not None else logger.info)(
        "%s: using the cached copy at %s (%s)", repo_id, root, why
    )
    return checked_files(repo_id, revision, commit, root, sub, files, found)


def checked_files(
    repo_id: str,
    revision: str,
    commit: str | None,
    root: Path,
    sub: str,
    files: dict[str, HubFile],
    checksums: ChecksumManifest | None = None,
    refetch: Callable[[str], None] | None = None,
    role: str = "payload",
) -> HubPayload:
    """Check every file's size and each non-LFS file's git blob id; key files by payload name. A
    file that fails is downloaded again once (`refetch`); only a second failure is an error."""
    prefix = f"{sub}/" if sub else ""
    for path, f in files.items():
        check_name(path, f"{repo_id} listing")
        mismatch = _file_mismatch(repo_id, commit, root, path, f, role)
        if mismatch is not None and refetch is not None:
            logger.warning("%s; downloading it again", mismatch)
            refetch(path)
            mismatch = _file_mismatch(repo_id, commit, root, path, f, role)
        if mismatch is not None:
            raise mismatch
        drop_stale_aside(root, path)
    named = {p[len(prefix) :]: f for p, f in files.items() if p.startswith(prefix) and p != CARD_NAME}
    card = root / CARD_NAME if CARD_NAME in files else None
    return HubPayload(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        root=root,
        payload_dir=root / sub if sub else root,
        files=named,
        card=card,
        checksums=checksums,
        refetch=refetch,
        role=role,
    )


def _file_mismatch(
    repo_id: str, commit: str | None, root: Path, path: str, f: HubFile, role: str
) -> PayloadMismatchError | BaseMismatchError | None:
    """How the downloaded copy of `path` differs from the listing (size; git blob id outside LFS),
    naming the blob it is; None when it matches."""
    local = root / path
    check_regular_file(local, root)  # a link out of the download, or a FIFO, is refused
    blob = os.path.realpath(local)
    size = local.stat().st_size
    if size != f.size:
        hint = line_ending_hint(local, {"git-sha1": f.blob_id, "sha256": f.sha256}, expected_size=f.size)
        return _mismatch(role)(
            f"{blob}: {size} bytes, but {repo_id}@{commit} lists {f.size} for {path}"
            + (f"; {hint}" if hint else ""),
            path=local,
            expected=str(f.size),
            actual=str(size),
            algorithm="size",
            stage=_STAGES[role],
        )
    if f.sha256 is None and f.blob_id is not None:
        actual = git_blob_id(local)
        if actual != f.blob_id:
            hint = line_ending_hint(local, {"git-sha1": f.blob_id})
            return _mismatch(role)(
                f"{blob}: git blob id {actual}, but {repo_id}@{commit} lists {f.blob_id} for {path}"
                + (f"; {hint}" if hint else ""),
                path=local,
                expected=f.blob_id,
                actual=actual,
                algorithm="git-sha1",
                stage=_STAGES[role],
            )
    return None


#: The stage a mismatch of a downloaded file is reported at, by the file's role.
_STAGES: dict[str, Any] = {"payload": "payload", "base": "hf_base"}


def _mismatch(role: str) -> type[PayloadMismatchError] | type[BaseMismatchError]:
    """The error class of a downloaded file that differs from the Hub's listing, by its role."""
    return BaseMismatchError if role == "base" else PayloadMismatchError


def git_blob_id(path: Path) -> str:
    """The git blob id of a file: sha1 of `blob <size>\\0` and its bytes."""
    return hash_file(path, [GIT_BLOB])[GIT_BLOB]


def check_lfs_files(payload: HubPayload, names: Iterable[str], *, jobs: int, progress: bool) -> None:
    """Hash the named LFS payload files and compare with the sha256 the Hub reports, in parallel. A
    file that differs is downloaded again once (when online); only a second mismatch is an error.

    Raises:
        `PayloadMismatchError`: naming the blob, the repo commit, and both digests.
    """
    todo = {
        n: payload.payload_dir / n
        for n in names
        if n in payload.files and payload.files[n].sha256 and n not in payload.streamed
    }
    for name, got in hash_files(todo, ("sha256",), jobs=jobs, progress=progress, desc="check payload"):
        mismatch = _sha256_mismatch(payload, todo[name], payload.files[name].sha256, got["sha256"])
        if mismatch is not None and payload.refetch is not None:
            logger.warning("%s; downloading it again", mismatch)
            payload.refetch(todo[name].relative_to(payload.root).as_posix())
            again = hash_file(todo[name], ["sha256"])["sha256"]
            mismatch = _sha256_mismatch(payload, todo[name], payload.files[name].sha256, again)
        if mismatch is not None:
            raise mismatch
    logger.info("%d payload files match the sha256 the Hub reports", len(todo))


def _sha256_mismatch(
    payload: HubPayload, path: Path, want: str | None, actual: str
) -> PayloadMismatchError | None:
    """The error of a downloaded file whose sha256 is not the Hub's (naming its blob), or None."""
    if actual == want:
        return None
    hint = line_ending_hint(path, {"sha256": want})
    return _mismatch(payload.role)(
        f"{os.path.realpath(path)}: sha256 {actual}, but {payload.source} reports {want} for "
        f"{path.relative_to(payload.root).as_posix()}"
        + (f" ({hint})" if hint else "")
        + ("" if payload.refetch is not None else "; run online to download it again"),
        path=path,
        expected=want,
        actual=actual,
        algorithm="sha256",
        stage=_STAGES[payload.role],
    )
