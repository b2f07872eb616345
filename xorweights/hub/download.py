"""Downloading repo files with huggingface_hub: interruptible, asked for again when the
connection breaks off, and the download records it keeps read back (commit, ETag).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import _cancel
from .._cancel import Cancelled
from .._progress import bars_shown, tqdm_class
from ..errors import HubError, IOFailure
from ..outfolder.paths import check_regular_file, read_bounded
from .access import HubAccess, hub_error, short_error
from .watch import Watch, from_http_client, network_error, requested_wait, wait_for

logger = logging.getLogger(__name__)


def download_kwargs(access: HubAccess, progress: bool) -> dict[str, Any]:
    """`hf_hub_download`'s keyword arguments for `access`."""
    kw: dict[str, Any] = {"endpoint": access.endpoint, "token": access.token}
    if access.local_dir is not None:
        kw["local_dir"] = str(access.local_dir)
    if access.cache_dir is not None:
        kw["cache_dir"] = str(access.cache_dir)
    if access.force_download:
        kw["force_download"] = True
    kw["tqdm_class"] = tqdm_class(enabled=progress)
    return kw


def snapshot(hf: Any, repo_id: str, revision: str, patterns: list[str] | None, **kw: Any) -> Path:
    """`snapshot_download` of the files `patterns` matches; the snapshot folder."""
    return Path(hf.snapshot_download(repo_id, revision=revision, allow_patterns=patterns, **kw))


#: How long an interrupted download may take to stop by itself (at its next chunk of 10 MiB).
_STOP_GRACE = 0.5


def download_files(hf: Any, repo_id: str, revision: str, paths: list[str], **kw: Any) -> Path:
    """Download `paths` one by one with `hf_hub_download` (into the same cache or folder as
    `snapshot_download`); returns the snapshot folder (or the download folder).

    `snapshot_download` runs its own thread pool and, when interrupted, waits for the files being
    fetched. Here the downloads run in a daemon thread that the calling thread waits for in short
    steps. On an interrupt (`KeyboardInterrupt`, the CLI's `Interrupted`) the thread starts no
    further file and stops the current one at its next chunk, its partial file removed by
    huggingface_hub; after `_STOP_GRACE` seconds (a slow link) the wait ends anyway, and the
    partial file is removed here. The next run downloads that file again.

    Every request runs under a `watch.Watch`: a wait asked for beyond `MAX_RETRY_AFTER`, or a
    connection stalled or dropped `MAX_REOPENS` times over, fails the file with one `HubError`, and
    an interrupt shuts the connection down. A network error is a `HubError` naming the file.

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

    watch = Watch(repo_id, stop)
    resumes = _resumes_itself(hf)

    def get(path: str) -> str:
        bars = {"tqdm_class": StoppableTqdm} if hook else {}
        label = f"{repo_id}@{revision}:{path}"
        watch.name(label)
        attempt = 0
        while True:
            try:
                return str(hf.hf_hub_download(repo_id, path, revision=revision, **bars, **kw))
            except RecursionError as e:  # huggingface_hub 0.x follows relative redirects recursively
                raise HubError(
                    f"{label}: redirects without end (a redirect loop); try again later", path=label
                ) from e
            except Exception as e:
                attempt += 1
                wait = _asked_wait(e)  # granted by the watch (within its bound) when it saw the answer
                if wait is not None and attempt <= _RESUME_TRIES:  # huggingface_hub 0.x does not wait
                    if stop.wait(wait):
                        raise Cancelled() from None
                    logger.info("%s: %s: the Hub asked to wait %g s; asking again", repo_id, path, wait)
                    continue
                if attempt > _RESUME_TRIES or not _broke_off(e, resumes) or stop.wait(1):
                    if (err := _failure(e, label, hf, kw)) is e:
                        raise
                    raise err from e
                logger.info("%s: %s broke off (%s); asking for it again", repo_id, path, short_error(e))

    def run() -> None:
        try:
            with watch.active():
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
        partials: set[str] = set()  # seen open while the thread ran: closed by the time it stops
        try:
            wait_for(finished, watch, lambda: partials.update(_own_partials()))
        except BaseException:
            finished.wait(_STOP_GRACE)
            _remove_partials(partials | _own_partials())
            raise
    if failed:
        raise failed[0]
    if "local_dir" in kw:
        return Path(kw["local_dir"])
    return Path(done[0]).parents[len(Path(paths[0]).parts) - 1]


def _failure(e: BaseException, label: str, hf: Any, kw: dict[str, Any]) -> BaseException:
    """The error a failed download of `label` (`owner/name@revision:path`, with `hf_hub_download`'s
    keyword arguments `kw`) ends with: the Hub's answer in our words (a gated repo, a 404), a
    network error as one `HubError`, an error of this machine (a full disk) as an `IOFailure`
    naming the file and the folder it went to, or `e` itself."""
    repo_id, _, revision = label.partition(":")[0].partition("@")
    endpoint = kw.get("endpoint") or hf.constants.ENDPOINT
    answered = hub_error(e, repo_id, revision, endpoint) if isinstance(e, Exception) else None
    if answered is None and _local_error(e):
        into = kw.get("local_dir") or kw.get("cache_dir") or hf.constants.HF_HUB_CACHE
        return IOFailure(f"downloading {label} into", into, e)
    return answered if answered is not None else network_error(e, label)


def _local_error(e: BaseException) -> bool:
    """Whether `e` is a plain OS error of this machine (a full disk, a folder not writable), not one
    of the network or of ours."""
    return type(e).__module__ == "builtins" and isinstance(e, OSError) and not isinstance(e, ConnectionError)


#: How often a file whose download broke off (the connection lost) is asked for again.
_RESUME_TRIES = 3


def _asked_wait(e: BaseException) -> float | None:
    """The seconds an HTTP error's answer asked to wait before asking again (`Retry-After`), or None."""
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if not isinstance(status, int):
        return None
    return requested_wait(status, getattr(response, "headers", None) or {})


def _broke_off(e: BaseException, resumes: bool) -> bool:
    """Whether a download failed on its way over the network (worth asking again): a 5xx answer,
    or a connection error when huggingface_hub does not resume a broken download itself; not a
    local error (a full disk, a file in the way), nor the want of a cached copy offline."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500
    if type(e).__name__ in ("TooManyRedirects", "DecodingError", "ContentDecodingError", "DecodeError"):
        return False  # asking again gets the same answer
    return not resumes and from_http_client(e)


def _resumes_itself(hf: Any) -> bool:
    """Whether this huggingface_hub resumes a connection closed midway itself (1.20 and later)."""
    try:
        major, minor = (int(x) for x in hf.__version__.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (1, 20)


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


def _own_partials() -> set[str]:
    """The `.incomplete` files this process holds open (Linux; elsewhere none are seen)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return set()
    found = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(".incomplete"):
            found.add(target)
    return found


def _remove_partials(paths: set[str]) -> None:
    """Remove the partial downloads of an interrupted run (`_own_partials`, as they were seen).

    huggingface_hub 1.x names them uniquely per download and never resumes them; 0.x would resume
    one, but the thread left running may still be writing to it, so it goes too."""
    for target in paths:
        try:
            if os.path.isfile(target):
                os.unlink(target)
                logger.debug("removed the partial download %s", target)
        except OSError:
            pass


#: A download record holds a commit, an ETag and a time: a few lines.
_RECORD_BYTES = 64 * 1024


def _read_record(meta: Path, root: Path) -> str:
    """A download record of huggingface_hub, once it is known to be a regular file in `root`."""
    if not check_regular_file(meta, root):
        raise FileNotFoundError(meta)
    return read_bounded(meta, _RECORD_BYTES, "a download record").decode("utf-8")


def recorded_commit(root: Path, local: bool, some_file: str) -> str | None:
    """The commit a snapshot holds: the folder's name in the cache; the download record in a folder."""
    if not local:
        return root.name
    meta = root / ".cache" / "huggingface" / "download" / f"{some_file}.metadata"
    try:
        return _read_record(meta, root).splitlines()[0].strip() or None
    except (OSError, IndexError):
        return None


def recorded_etag(root: Path, local: bool, path: str) -> str | None:
    """The ETag huggingface_hub recorded when it downloaded `path` (sha256 for LFS, else git oid)."""
    if local:
        meta = root / ".cache" / "huggingface" / "download" / f"{path}.metadata"
        try:
            return _read_record(meta, root).splitlines()[1].strip() or None
        except (OSError, IndexError):
            return None
    target = root / path
    return Path(os.readlink(target)).name if target.is_symlink() else None


def download_again(hf: Any, repo_id: str, revision: str, path: str, root: Path, **kw: Any) -> Path:
    """Move the copy of `path` under `root` aside and download it once more (`force_download`), as
    `hf download --force-download` would: a truncated or damaged blob in the cache (or a file in a
    download folder) heals itself. The copy moved aside is removed once the download has ended."""
    blob = Path(os.path.realpath(root / path))
    aside = _aside(blob)
    moved = blob.is_file()
    if moved:
        os.replace(blob, aside)
    try:
        return download_files(hf, repo_id, revision, [path], **{**kw, "force_download": True})
    finally:
        if moved:
            aside.unlink(missing_ok=True)


def _aside(blob: Path) -> Path:
    """Where `download_again` moves a damaged copy while it downloads the file again."""
    return blob.with_name(blob.name + ".damaged")


def drop_stale_aside(root: Path, path: str) -> None:
    """Remove the damaged copy of `path` that a `download_again` killed midway left beside it (the
    file itself was downloaded again since): it would stay in the cache forever otherwise."""
    aside = _aside(Path(os.path.realpath(root / path)))
    try:
        if aside.is_file() and not aside.is_symlink():
            aside.unlink()
            logger.info("removed %s, left by an interrupted download", aside)
    except OSError:
        pass
