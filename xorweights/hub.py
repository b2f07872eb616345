"""Hugging Face Hub names: repo ids and revisions are validated before they are used anywhere.

A repo spec is `owner/name` or `name`, optionally `@revision`, and for a payload optionally
`:subfolder`. Each part of the id is 1-96 characters of letters, digits, `.`, `_` and `-`,
starting and ending with a letter or digit, with no `--` or `..`. A revision is a branch, tag,
`refs/...` path or commit id following git's ref rules (which exclude `:`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import glob
import importlib
import inspect
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _cancel, model_card
from ._display import quoted
from ._line_endings import line_ending_hint
from ._paths import check_name, check_regular_file
from ._progress import bars_shown, tqdm_class
from .checksums import ChecksumManifest, bundled_release, git_blob_hasher, hash_files
from .constants import MAX_MANIFEST_BYTES
from .engine import Cancelled
from .errors import FormatError, HubError, InputError, PayloadMismatchError, XorWeightsError
from .native_manifest import MANIFEST_NAME
from .payload_folder import PayloadHints, files_below, find_payload_dir, find_payload_in_listing

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


# --- fetching a payload ----------------------------------------------------------------------

#: The model card at the top of a repo; fetched with the payload (it may hold the checksums).
CARD_NAME = "README.md"


def is_repo_spec(payload: object) -> bool:
    """Whether `payload` names a Hub repo (`owner/name[@revision][:subfolder]`), not a local folder.

    A `Path`, or a string naming an existing path, is local; so is anything not shaped like
    `owner/name`.
    """
    if not isinstance(payload, str) or Path(payload).exists():
        return False
    parts = payload.partition(":")[0].partition("@")[0].split("/")
    return len(parts) == 2 and all(_PART.fullmatch(p) for p in parts)


@dataclass(frozen=True)
class HubFile:
    """A file of a repo as the Hub lists it (keyed by its path): size, git blob id, LFS sha256."""

    size: int
    blob_id: str | None = None
    sha256: str | None = None


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

    @property
    def source(self) -> str:
        return f"{self.repo_id}@{self.commit or self.revision}"


def _hf() -> Any:
    import huggingface_hub

    return huggingface_hub


def _offline_default() -> bool:
    from huggingface_hub import constants

    check = getattr(_hf(), "is_offline_mode", None)
    return bool(check()) if callable(check) else bool(constants.HF_HUB_OFFLINE)


def _hub_error(
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
            f"{repo_id} on {endpoint} is gated: accept its terms on the Hub, then set HF_TOKEN", path=repo_id
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
    return None


def _unreachable(e: BaseException) -> bool:
    """Whether an error means the Hub could not be asked (then the cache may answer instead)."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500
    module = type(e).__module__.split(".")[0]
    return isinstance(e, OSError) or module in _HTTP_MODULES or (type(e).__name__ == "OfflineModeIsEnabled")


#: The HTTP clients huggingface_hub uses (by version): their errors are the network's.
_HTTP_MODULES = ("httpx", "httpx2", "httpcore", "requests", "urllib3")


def list_repo(api: Any, repo_id: str, revision: str) -> tuple[str, dict[str, HubFile]]:
    """The commit a revision points to and every file at it, with the Hub's digests."""
    from huggingface_hub.hf_api import RepoFile

    commit = api.repo_info(repo_id, revision=revision).sha
    files = {}
    for f in api.list_repo_tree(repo_id, revision=commit, recursive=True):
        if isinstance(f, RepoFile):  # names are checked where used (`find_payload_in_listing`, `_checked`)
            lfs = f.lfs  # a dict in huggingface_hub < 0.21, an object since
            sha256 = (lfs.get("sha256") if isinstance(lfs, dict) else lfs.sha256) if lfs else None
            files[f.path] = HubFile(f.size, f.blob_id, sha256)
    return commit, files


#: At the top of a repo, files that are not payload files: the card, documents, and scripts
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
        p for p in listing
        if p.startswith(prefix) and "/" not in p[len(prefix):] and not p[len(prefix):].startswith(".")
        and (sub or not any(fnmatch.fnmatch(p, pat) for pat in _NOT_PAYLOAD_AT_TOP))
    ]  # fmt: skip
    if not names:
        raise InputError(f"{where}: no payload files in {sub or 'the top folder'}", path=where)
    return sub, sorted(names) + ([CARD_NAME] if card and CARD_NAME in listing else [])


def _card_readable(listing: Mapping[str, HubFile], repo_id: str) -> bool:
    """Whether the repo has a card small enough to read checksums from (a larger one is skipped)."""
    if CARD_NAME not in listing:
        return False
    if listing[CARD_NAME].size > MAX_MANIFEST_BYTES:
        logger.warning("%s: its %s is %d bytes, too large to read checksums from; not used", repo_id,
                       CARD_NAME, listing[CARD_NAME].size)  # fmt: skip
        return False
    return True


def _snapshot(hf: Any, repo_id: str, revision: str, patterns: list[str] | None, **kw: Any) -> Path:
    return Path(hf.snapshot_download(repo_id, revision=revision, allow_patterns=patterns, **kw))


#: How long an interrupted download may take to stop by itself (at its next chunk of 10 MiB).
_STOP_GRACE = 0.5


def _download(hf: Any, repo_id: str, revision: str, paths: list[str], **kw: Any) -> Path:
    """Download `paths` one by one with `hf_hub_download` (into the same cache or folder as
    `snapshot_download`); returns the snapshot folder (or the download folder).

    `snapshot_download` runs its own thread pool and, when interrupted, waits for the files being
    fetched. Here the downloads run in a daemon thread that the calling thread waits for in short
    steps. On an interrupt (`KeyboardInterrupt`, the CLI's `Interrupted`) the thread starts no
    further file and stops the current one at its next chunk, its partial file removed by
    huggingface_hub; after `_STOP_GRACE` seconds (a slow link) the wait ends anyway, and the
    partial file is removed here. The next run downloads that file again.

    An older huggingface_hub whose `hf_hub_download` takes no `tqdm_class` (0.x, 1.0) gets no stop
    hook: the running file is left to its thread and its partial file removed after `_STOP_GRACE`;
    a silent `tqdm_class` becomes huggingface_hub's own switch for its download bars. Versions
    before 1.20 give up on a connection closed midway; their next call resumes the partial file
    with a range request (0.x, early 1.x) or starts afresh. A file whose download failed that way
    (a connection error or a 5xx answer) is asked for again, up to `_RESUME_TRIES` times.
    """
    stop = threading.Event()
    base = kw.pop("tqdm_class", None) or tqdm_class()
    hook = _takes(hf.hf_hub_download, "tqdm_class")
    if not hook:
        _note_once(
            f"huggingface_hub {hf.__version__}: hf_hub_download takes no tqdm_class; an interrupted "
            f"download is abandoned after {_STOP_GRACE} s instead of stopping at its next chunk"
        )

    class StoppableTqdm(base):  # type: ignore[misc, valid-type]
        """Raises `Cancelled` in the download loop (from each chunk's progress update) once stopped."""

        def update(self, n: float | None = 1) -> bool | None:
            if stop.is_set() or _cancel.requested():
                raise Cancelled()
            return super().update(n)  # type: ignore[no-any-return]

    done: list[str] = []
    failed: list[BaseException] = []

    def get(path: str) -> str:
        bars = {"tqdm_class": StoppableTqdm} if hook else {}
        attempt = 0
        while True:
            try:
                return str(hf.hf_hub_download(repo_id, path, revision=revision, **bars, **kw))
            except Exception as e:
                attempt += 1
                if attempt > _RESUME_TRIES or not _broke_off(e) or stop.wait(1):
                    raise
                logger.warning("%s: %s broke off (%s); asking for it again", repo_id, path, short_error(e))

    def run() -> None:
        try:
            for p in paths:
                if stop.is_set() or _cancel.requested():
                    raise Cancelled()
                done.append(get(p))
        except BaseException as e:  # handed to the waiting thread
            failed.append(e)
        finally:
            finished.set()

    # Waits on an event: `Thread.join` interrupted by a signal may take the thread for finished.
    finished = threading.Event()
    # Without the hook, huggingface_hub draws its own bars: only on a terminal (they redraw with \r).
    with hub_bars_off() if not hook and not bars_shown(base.enabled) else contextlib.nullcontext():
        threading.Thread(target=run, name=f"xorweights-download-{repo_id}", daemon=True).start()
        try:
            while not finished.wait(0.05):
                pass
        except BaseException:
            stop.set()
            if not finished.wait(_STOP_GRACE):
                _remove_own_partials()
            raise
    if failed:
        raise failed[0]
    if "local_dir" in kw:
        return Path(kw["local_dir"])
    return Path(done[0]).parents[len(Path(paths[0]).parts) - 1]


#: How often a file whose download broke off (the connection lost) is asked for again.
_RESUME_TRIES = 3


def _broke_off(e: BaseException) -> bool:
    """Whether a download failed on its way over the network (worth asking again): a connection
    error or a 5xx answer; not a local error (a full disk, a file in the way), nor the want of a
    cached copy offline."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500
    return type(e).__module__.split(".")[0] in _HTTP_MODULES


def _takes(fn: Any, name: str) -> bool:
    """Whether a huggingface_hub function accepts the keyword argument `name` (older ones may not)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


_noted: set[str] = set()


def _note_once(message: str) -> None:
    """Log at debug level, once per process, what an older huggingface_hub lacks."""
    if message not in _noted:
        _noted.add(message)
        logger.debug("%s", message)


#: huggingface_hub's progress bar group of a file download (in versions without `tqdm_class`).
_HTTP_GET_BARS = "huggingface_hub.http_get"


@contextlib.contextmanager
def hub_bars_off(group: str | None = _HTTP_GET_BARS) -> Iterator[None]:
    """Turn off huggingface_hub's own bars (of `group`; None: all) while it lasts, then restore them.

    For downloads with a client whose `hf_hub_download` takes no `tqdm_class`, and for uploads:
    their bars redraw with `\r`, so they show only on a terminal. Process-wide while it lasts; a
    no-op where `HF_HUB_DISABLE_PROGRESS_BARS` decides.
    """
    from huggingface_hub import constants, utils

    states = getattr(importlib.import_module("huggingface_hub.utils.tqdm"), "progress_bar_states", None)
    if constants.HF_HUB_DISABLE_PROGRESS_BARS is not None or not isinstance(states, dict):
        yield
        return
    before = dict(states)
    utils.disable_progress_bars(group)
    try:
        yield
    finally:
        states.clear()
        states.update(before)


def _remove_own_partials() -> None:
    """Remove the `.incomplete` files this process holds open (Linux; elsewhere they stay behind).

    huggingface_hub names them uniquely per download and never resumes them (older versions
    would, but the thread left running may still be writing to it)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.endswith(".incomplete") and os.path.isfile(target):
                os.unlink(target)
                logger.debug("removed the partial download %s", target)
        except OSError:
            pass


def _read_record(meta: Path, root: Path) -> str:
    """A download record of huggingface_hub, once it is known to be a regular file in `root`."""
    if not check_regular_file(meta, root):
        raise FileNotFoundError(meta)
    return meta.read_text()


def _recorded_commit(root: Path, local: bool, some_file: str) -> str | None:
    """The commit a snapshot holds: the folder's name in the cache; the download record in a folder."""
    if not local:
        return root.name
    meta = root / ".cache" / "huggingface" / "download" / f"{some_file}.metadata"
    try:
        return _read_record(meta, root).splitlines()[0].strip() or None
    except (OSError, IndexError):
        return None


def _recorded_etag(root: Path, local: bool, path: str) -> str | None:
    """The ETag huggingface_hub recorded when it downloaded `path` (sha256 for LFS, else git oid)."""
    if local:
        meta = root / ".cache" / "huggingface" / "download" / f"{path}.metadata"
        try:
            return _read_record(meta, root).splitlines()[1].strip() or None
        except (OSError, IndexError):
            return None
    target = root / path
    return Path(os.readlink(target)).name if target.is_symlink() else None


def _download_kwargs(access: HubAccess, progress: bool) -> dict[str, Any]:
    """`hf_hub_download`'s keyword arguments for `access`."""
    kw: dict[str, Any] = {"endpoint": access.endpoint, "token": access.token}
    if access.local_dir is not None:
        kw["local_dir"] = str(access.local_dir)
    if access.cache_dir is not None:
        kw["cache_dir"] = str(access.cache_dir)
    kw["tqdm_class"] = tqdm_class(enabled=progress)
    return kw


def fetch(
    spec: str,
    access: HubAccess | None = None,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    checksums: ChecksumManifest | None = None,
    progress: bool = False,
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

    Raises:
        `HubError`: unknown repo or revision, no access, or the Hub unreachable (or offline)
            with no complete copy cached; the message also says no local folder has that name.
        `PayloadMismatchError`: a small file differs from its git blob id, or a size differs.
        `InputError`: several folders hold model files and nothing tells the payload apart.
    """
    rs = parse_payload_spec(spec, revision=revision, subfolder=subfolder)
    access = access or HubAccess()
    repo_id, revision = rs.repo_id, rs.revision or "main"
    hf = _hf()
    api = hf.HfApi(endpoint=access.endpoint, token=access.token)
    where = f"{repo_id}@{revision}"
    offline = _offline_default() if access.offline is None else access.offline
    kw = _download_kwargs(access, progress)
    local = access.local_dir is not None
    choose = f"{repo_id}{'@' + rs.revision if rs.revision else ''}:SUBFOLDER (or --subfolder SUBFOLDER)"

    def hints(found: ChecksumManifest | None) -> PayloadHints:
        return PayloadHints(rs.subfolder, checksum_names(found), repo_id.split("/")[-1], choose)

    unreachable: Exception | None = None
    if not offline:
        try:
            commit, listing = list_repo(api, repo_id, revision)
        except Exception as e:  # huggingface_hub's errors, or its HTTP client's connection errors
            err = _hub_error(e, repo_id, revision, api.endpoint, spec=spec)
            if err is not None:
                raise err from e
            if not _unreachable(e):
                raise
            logger.warning("cannot reach %s (%s); looking in the local cache", api.endpoint, short_error(e))
            unreachable = e
        else:
            found = checksums or bundled_checksums(repo_id)
            card = found is None and _card_readable(listing, repo_id)
            if card:  # the card first: its checksums may pick the folder
                root = _download(hf, repo_id, revision, [CARD_NAME], **kw)
                found = card_checksums(root / CARD_NAME, root, repo_id)
            sub, paths = _payload_paths(listing, where, hints(found), card=card)
            logger.info("%s: downloading %d files of %s (commit %s)", repo_id, len(paths), sub or "/", commit)
            root = _download(hf, repo_id, revision, paths, **kw)
            got = _recorded_commit(root, local, paths[0])
            if got is not None and got != commit:  # the branch moved between listing and download
                commit, listing = list_repo(api, repo_id, got)
                sub, paths = _payload_paths(listing, where, hints(found), card=card)
            files = {p: listing[p] for p in paths}
            return _checked(repo_id, revision, commit, root, sub, files, found)
    return _from_cache(hf, rs, kw, local, unreachable, checksums, hints)


def locate_payload(
    payload: os.PathLike[str] | str,
    access: HubAccess,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    checksums: ChecksumManifest | None = None,
    progress: bool = False,
    apart: Mapping[str, os.PathLike[str] | str] | None = None,
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
                        f"--local-dir {access.local_dir} overlaps the {role} folder {folder}: the download "
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
        )
        check_lfs_files(fetched, [MANIFEST_NAME], jobs=1, progress=False)
        return fetched.payload_dir, fetched
    if revision is not None:
        raise InputError(
            f"--revision applies to a Hub repo id, not to the local folder {payload}", path=payload
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
        why = f"the Hub is unreachable ({short_error(unreachable)})"
    kw = {k: v for k, v in kw.items() if k not in ("endpoint", "token")}
    try:
        root = _snapshot(hf, repo_id, revision, [], local_files_only=True, **kw)
        if local and not (root / ".cache" / "huggingface" / "download").is_dir():
            raise FileNotFoundError(root)
        listing = files_below(root)
        if not [p for p in listing if p != CARD_NAME]:  # only the card (fetched for its checksums)
            raise FileNotFoundError(root)
        found = _release_checksums(
            repo_id, checksums, root / CARD_NAME if CARD_NAME in listing else None, root
        )
        sub, paths = _payload_paths(listing, where, hints(found), card=CARD_NAME in listing)
        # Lets huggingface_hub say whether the snapshot is complete (it knows when it kept the listing).
        root = _snapshot(hf, repo_id, revision, [glob.escape(p) for p in paths], local_files_only=True, **kw)
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
        etag = _recorded_etag(root, local, p)
        if etag is None:  # nothing to check the file against: not taken on trust
            raise HubError(
                f"{root / p} has no download record of huggingface_hub (not downloaded there, or the record "
                f"is gone), so it cannot be checked offline; run once online to download {where}",
                path=root / p,
            )
        size = (root / p).stat().st_size
        lfs = etag is not None and len(etag) == 64
        files[p] = HubFile(size, None if lfs else etag, etag if lfs else None)
    commit = _recorded_commit(root, local, paths[0]) if paths else None
    logger.info("%s: using the cached copy at %s (%s)", repo_id, root, why)
    return _checked(repo_id, revision, commit, root, sub, files, found)


def _checked(
    repo_id: str,
    revision: str,
    commit: str | None,
    root: Path,
    sub: str,
    files: dict[str, HubFile],
    checksums: ChecksumManifest | None = None,
) -> HubPayload:
    """Check every file's size and each non-LFS file's git blob id; key files by payload name."""
    prefix = f"{sub}/" if sub else ""
    for path, f in files.items():
        check_name(path, f"{repo_id} listing")
        local = root / path
        check_regular_file(local, root)  # a link out of the download, or a FIFO, is refused
        size = local.stat().st_size
        if size != f.size:
            hint = line_ending_hint(local, {"git-sha1": f.blob_id, "sha256": f.sha256}, expected_size=f.size)
            raise PayloadMismatchError(
                f"{local}: {size} bytes, but {repo_id}@{commit} lists {f.size} for {path}"
                + (f"; {hint}" if hint else ""),
                path=local, expected=str(f.size), actual=str(size), algorithm="size", stage="payload",
            )  # fmt: skip
        if f.sha256 is None and f.blob_id is not None:
            actual = git_blob_id(local)
            if actual != f.blob_id:
                hint = line_ending_hint(local, {"git-sha1": f.blob_id})
                raise PayloadMismatchError(
                    f"{local}: git blob id {actual}, but {repo_id}@{commit} lists {f.blob_id} for {path}"
                    + (f"; {hint}" if hint else ""),
                    path=local, expected=f.blob_id, actual=actual, algorithm="git-sha1", stage="payload",
                )  # fmt: skip
    named = {p[len(prefix) :]: f for p, f in files.items() if p != CARD_NAME or sub}
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
    )


def git_blob_id(path: Path) -> str:
    """The git blob id of a file: sha1 of `blob <size>\\0` and its bytes."""
    h = git_blob_hasher(path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_lfs_files(payload: HubPayload, names: Iterable[str], *, jobs: int, progress: bool) -> None:
    """Hash the named LFS payload files and compare with the sha256 the Hub reports, in parallel.

    Raises:
        `PayloadMismatchError`: naming the file, the repo commit, and both digests.
    """
    todo = {n: payload.payload_dir / n for n in names if n in payload.files and payload.files[n].sha256}
    for name, got in hash_files(todo, ("sha256",), jobs=jobs, progress=progress, desc="check payload"):
        want, actual = payload.files[name].sha256, got["sha256"]
        if actual != want:
            path = todo[name]
            hint = line_ending_hint(path, {"sha256": want})
            raise PayloadMismatchError(
                f"{path}: sha256 {actual}, but {payload.source} reports {want} for it"
                + (f" ({hint})" if hint else "")
                + f"; nothing was decoded. Delete {os.path.realpath(path)} and run again to fetch it afresh",
                path=path, expected=want, actual=actual, algorithm="sha256", stage="payload",
            )  # fmt: skip
    logger.info("%d payload files match the sha256 the Hub reports", len(todo))


def short_error(e: BaseException | None, limit: int = 300) -> str:
    """An error's text on one line; a long one is cut at a word boundary, marked with `...`."""
    text = " ".join(str(e).split()) if e is not None else ""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."


def bundled_checksums(repo_id: str) -> ChecksumManifest | None:
    """The manifest in `checksums/` for a repo id, if the release is a known one."""
    found = bundled_release(repo_id)
    if found is not None:
        logger.info("%s: checksums from the bundled manifest %s", repo_id, found.release)
    return found


def card_checksums(card: Path, root: Path, repo_id: str) -> ChecksumManifest | None:
    """The checksum block of a downloaded model card (None: the card has none).

    Raises:
        `UnsafePathError`: the card links out of `root`, or is not a regular file.
        `FormatError`: the card has a malformed checksum block.
    """
    if not check_regular_file(card, root):
        return None
    if card.stat().st_size > MAX_MANIFEST_BYTES:
        raise FormatError(f"{card}: {card.stat().st_size} bytes is too large for a model card", path=card)
    found = model_card.parse(card.read_text(encoding="utf-8", errors="replace"), str(card))
    if found is not None:
        logger.info("%s: checksums from its model card", repo_id)
    return found


def checksum_names(manifest: ChecksumManifest | None) -> frozenset[str]:
    """Every file name a checksum manifest lists, in any stage."""
    if manifest is None:
        return frozenset()
    stages = [*manifest.stages.values(), *([manifest.unstaged] if manifest.unstaged is not None else [])]
    return frozenset(n for files in stages for n in files)


def release_checksums(payload: HubPayload) -> ChecksumManifest | None:
    """The checksums of a fetched release: those it was fetched with, the bundled manifest for
    its repo id, else its card's.

    None when none exists (a native payload still carries its own in `xorweights.json`).

    Raises:
        `FormatError`: the card has a malformed checksum block.
    """
    return _release_checksums(payload.repo_id, payload.checksums, payload.card, payload.root)


def _release_checksums(
    repo_id: str, given: ChecksumManifest | None, card: Path | None, root: Path
) -> ChecksumManifest | None:
    """`given`, else the bundled manifest for the repo id, else the checksums of the `card`."""
    found = given or bundled_checksums(repo_id)
    if found is None and card is not None:
        found = card_checksums(card, root, repo_id)
    return found


def remote_checksums(
    spec: str, access: HubAccess | None = None, *, revision: str | None = None
) -> ChecksumManifest:
    """The checksums of a repo `owner/name[@revision]`: the bundled manifest for its id, else the
    checksum block of its model card (only the card is downloaded).

    Raises:
        `HubError`: unknown repo or revision, no access, offline with no cached card, or a card
            without a checksum block; the message also says no local file has that name.
    """
    rs = parse_payload_spec(spec, revision=revision)
    if rs.subfolder is not None:
        raise InputError(f"checksums come from a model card: {quoted(spec)} names a subfolder", path=spec)
    found = bundled_checksums(rs.repo_id)
    if found is not None:
        return found
    access = dataclasses.replace(access or HubAccess(), local_dir=None)  # --local-dir is the payload's
    revision = rs.revision or "main"
    hf = _hf()
    kw = _download_kwargs(access, progress=False)
    offline = _offline_default() if access.offline is None else access.offline
    endpoint = access.endpoint or hf.constants.ENDPOINT
    unreachable: Exception | None = None
    try:
        if not offline:  # the listing first: an unknown repo, no Hub, no card, are told at once
            try:
                _, listing = list_repo(
                    hf.HfApi(endpoint=access.endpoint, token=access.token), rs.repo_id, revision
                )
            except Exception as e:
                if _hub_error(e, rs.repo_id, revision, endpoint) is not None or not _unreachable(e):
                    raise
                unreachable = e
            else:
                if CARD_NAME not in listing:
                    raise HubError(f"{rs.repo_id}@{revision} on {endpoint} has no model card (README.md) to "
                                   "read checksums from", path=spec)  # fmt: skip
                if not _card_readable(listing, rs.repo_id):
                    raise HubError(f"the model card of {rs.repo_id}@{revision} is too large to read",
                                   path=spec)  # fmt: skip
        if offline or unreachable is not None:  # the card cached by an earlier run, if any
            kw = {k: v for k, v in kw.items() if k not in ("endpoint", "token")} | {"local_files_only": True}
        root = _download(hf, rs.repo_id, revision, [CARD_NAME], **kw)
    except XorWeightsError:
        raise
    except Exception as e:
        err = _hub_error(e, rs.repo_id, revision, endpoint, spec=spec, kind="file")
        if err is not None:
            raise err from e
        why = (
            "offline mode (HF_HUB_OFFLINE)"
            if offline
            else f"the Hub is unreachable ({short_error(unreachable or e)})"
        )
        if offline or unreachable is not None or _unreachable(e):
            raise HubError(
                f"no local file {quoted(spec)}, and the model card of {rs.repo_id}@{revision} is not in the "
                f"Hub cache: {why}",
                path=spec,
            ) from e
        raise HubError(
            f"{rs.repo_id}@{revision} on {endpoint} has no model card (README.md) to read checksums from "
            f"({short_error(e)})",
            path=spec,
        ) from e
    found = card_checksums(root / CARD_NAME, root, rs.repo_id)
    if found is None:
        raise HubError(
            f"the model card of {rs.repo_id}@{revision} has no xorweights checksum block "
            f"({model_card.MARKER} and a json block); pass a manifest or md5sum file instead",
            path=spec,
        )
    return found
