"""The output folder: one writer at a time, no stale temporaries, and a record of finished files.

`.xorweights-state.json` lists each output that was completed (and verified, when checksums were
given): its size, modification time, digests and the identity of the inputs it was made from.
A later run into the same folder keeps such outputs instead of recomputing them, and treats every
file it lists as its own (it may overwrite those without `--force`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._atomic import AtomicFile
from ._paths import check_name
from .constants import MAX_MANIFEST_BYTES, STATE_FILE, STATE_FORMAT, TEMP_PREFIX, TEMP_SUFFIX
from .errors import FolderLockedError, InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Done:
    """A finished output, as the state file records it."""

    size: int
    mtime_ns: int
    digests: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """`(size, mtime_ns)` of each input (`payload`, `base`) when the output was made."""


def file_id(path: Path) -> tuple[int, int]:
    """What identifies a file's content cheaply: `(size, mtime_ns)`."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


class OutputFolder:
    """Lock a folder for writing, clean our stale temporaries, read and update the state file.

    Example:
        >>> with OutputFolder(out) as folder:
        ...     if folder.kept(name, inputs, want) is None: ...
        ...     folder.record(name, digests, inputs)
    """

    def __init__(self, path: os.PathLike[str] | str, *, keep_state: bool = True) -> None:
        self.path = Path(path)
        self.keep_state = keep_state
        self._fd: int | None = None
        self._lock = threading.Lock()
        self.done: dict[str, Done] = {}

    def __enter__(self) -> OutputFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderLockedError(
                f"{self.path} is in use by another xorweights process; wait for it or use another --out",
                path=self.path,
            ) from None
        self._fd = fd
        self._clean_stale()
        self.done = self._load() if self.keep_state else {}
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def _clean_stale(self) -> None:
        """Remove temporaries left by a killed run (we hold the lock: no one else writes them)."""
        for entry in os.scandir(self.path):
            if (
                entry.name.startswith(TEMP_PREFIX)
                and entry.name.endswith(TEMP_SUFFIX)
                and entry.is_file(follow_symlinks=False)
            ):
                logger.info("removing stale temporary %s", entry.path)
                os.unlink(entry.path)

    def _load(self) -> dict[str, Done]:
        path = self.path / STATE_FILE
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise ValueError("too large")
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning("ignoring unreadable state file %s (%s)", path, e)
            return {}
        if (
            not isinstance(doc, dict)
            or doc.get("format") != STATE_FORMAT
            or not isinstance(doc.get("files"), dict)
        ):
            logger.warning("ignoring state file %s of an unknown format", path)
            return {}
        done = {}
        for name, entry in doc["files"].items():
            try:
                check_name(name, str(path))
                done[name] = Done(
                    size=int(entry["size"]),
                    mtime_ns=int(entry["mtime_ns"]),
                    digests={str(k): str(v) for k, v in entry.get("digests", {}).items()},
                    inputs={str(k): (int(v[0]), int(v[1])) for k, v in entry.get("inputs", {}).items()},
                )
            except (KeyError, TypeError, ValueError, IndexError, InputError) as e:
                logger.warning("ignoring entry %r of state file %s (%s)", name, path, e)
        return done

    def kept(self, name: str, inputs: Mapping[str, tuple[int, int]], want: Mapping[str, str]) -> Done | None:
        """The record of `name` if its output can be kept as it is, else None.

        It can when the file is still the one recorded, its inputs are unchanged, and the
        recorded digests include and match every digest wanted now.
        """
        d = self.done.get(name)
        final = self.path / name
        if d is None or not final.is_file() or final.is_symlink():
            return None
        if file_id(final) != (d.size, d.mtime_ns) or dict(d.inputs) != dict(inputs):
            return None
        if any(d.digests.get(algo) != hexd for algo, hexd in want.items()):
            return None
        return d

    def is_ours(self, name: str) -> bool:
        """Whether an earlier run recorded `name` (so it may be replaced without `--force`)."""
        return name in self.done

    def record(self, name: str, digests: Mapping[str, str], inputs: Mapping[str, tuple[int, int]]) -> None:
        """Note a finished output and save the state file atomically (thread-safe)."""
        if not self.keep_state:
            return
        size, mtime = file_id(self.path / name)
        with self._lock:
            self.done[name] = Done(size=size, mtime_ns=mtime, digests=dict(digests), inputs=dict(inputs))
            doc: dict[str, Any] = {
                "format": STATE_FORMAT,
                "files": {
                    n: {**asdict(d), "inputs": {k: list(v) for k, v in d.inputs.items()}}
                    for n, d in sorted(self.done.items())
                },
            }
            with AtomicFile(self.path / STATE_FILE) as f:
                f.file.write((json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
                f.commit()
