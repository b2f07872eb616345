"""The output folder: one writer at a time, no stale temporaries, and a record of finished files.

`.xorweights-state.json` lists each output that was completed (and verified, when checksums were
given): its size, modification time, inode change time, digests and the identity of the inputs
it was made from. The record is evidence, not authority: a later run keeps an output unread only
while all three stamps are as recorded (the change time cannot be set back, as `os.utime` sets the
modification time back); otherwise it hashes the file again (see `codec._triage`). Every file the
record lists counts as ours (a later run may overwrite it without `--force`).

The file is read with the strict JSON reader; anything malformed, in the whole or in one entry, is
ignored with a warning. Names that are not valid UTF-8 are kept under `files_hex` (the name's
bytes in hex), so the rest stays strict JSON.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._atomic import AtomicFile
from ._json import loads
from ._paths import check_name
from .constants import (
    ALGORITHMS,
    HEX_LENGTH,
    MAX_MANIFEST_BYTES,
    STATE_FILE,
    STATE_FORMAT,
    TEMP_PREFIX,
    TEMP_SUFFIX,
)
from .errors import FolderLockedError, InputError

logger = logging.getLogger(__name__)

_INT64 = 1 << 63
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Done:
    """A finished output, as the state file records it."""

    size: int
    mtime_ns: int
    digests: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """`(size, mtime_ns)` of each input (`payload`, `base`) when the output was made."""
    ctime_ns: int | None = None
    """Inode change time when recorded; None in older records, which are never trusted unread."""


def file_id(path: Path) -> tuple[int, int]:
    """What identifies an input's content cheaply: `(size, mtime_ns)`."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _regular_stat(path: Path) -> os.stat_result | None:
    """`lstat` of `path` when it is a regular file (not a link), else None."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _int(value: object, what: str, low: int = -_INT64) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < _INT64:
        raise ValueError(f"{what} must be an integer in range")
    return value


def _digests(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("digests must be an object")
    for algo, hexd in value.items():
        if algo not in ALGORITHMS or not isinstance(hexd, str) or len(hexd) != HEX_LENGTH[algo]:
            raise ValueError(f"bad digest {algo!r}")
        if not _HEX.fullmatch(hexd):
            raise ValueError(f"{algo} must be lowercase hex digits")
    return dict(value)


def _inputs(value: object) -> dict[str, tuple[int, int]]:
    if not isinstance(value, dict):
        raise ValueError("inputs must be an object")
    out = {}
    for role, v in value.items():
        if not isinstance(v, list) or len(v) != 2:
            raise ValueError(f"input {role!r} must be [size, mtime_ns]")
        out[role] = (_int(v[0], "input size", 0), _int(v[1], "input mtime_ns"))
    return out


def parse_done(entry: object) -> Done:
    """One state entry, validated.

    Raises:
        `ValueError`: a missing field, or one of the wrong type or out of range.
    """
    if not isinstance(entry, dict):
        raise ValueError("entry must be an object")
    ctime = entry.get("ctime_ns")
    return Done(
        size=_int(entry.get("size"), "size", 0),
        mtime_ns=_int(entry.get("mtime_ns"), "mtime_ns"),
        digests=_digests(entry.get("digests", {})),
        inputs=_inputs(entry.get("inputs", {})),
        ctime_ns=None if ctime is None else _int(ctime, "ctime_ns"),
    )


def _entry_json(d: Done) -> dict[str, Any]:
    return {
        "size": d.size,
        "mtime_ns": d.mtime_ns,
        "ctime_ns": d.ctime_ns,
        "digests": dict(d.digests),
        "inputs": {k: list(v) for k, v in d.inputs.items()},
    }


def _is_unicode(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes: bytes that were not UTF-8
        return False
    return True


def _read_state(path: Path) -> bytes:
    """The state file's bytes: a regular file (never a link, FIFO or device) of bounded size."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise ValueError("too large")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_MANIFEST_BYTES + 1)
    finally:
        os.close(fd)


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
        """The state file's entries; the file, or an entry, that is malformed is ignored with a warning."""
        path = self.path / STATE_FILE
        try:
            doc = loads(_read_state(path), str(path))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:  # FormatError is a ValueError
            logger.warning("ignoring unreadable state file %s (%s)", path, e)
            return {}
        if not isinstance(doc, dict):
            doc = {}
        files, by_hex = doc.get("files"), doc.get("files_hex", {})
        if doc.get("format") != STATE_FORMAT or not isinstance(files, dict) or not isinstance(by_hex, dict):
            logger.warning("ignoring state file %s of an unknown format", path)
            return {}
        entries = list(files.items())
        for key, entry in by_hex.items():
            try:
                entries.append((os.fsdecode(bytes.fromhex(key)), entry))
            except ValueError:
                logger.warning("ignoring entry %r of state file %s (not a hex name)", key, path)
        done = {}
        for name, entry in entries:
            try:
                done[check_name(name, str(path))] = parse_done(entry)
            except (ValueError, InputError) as e:
                logger.warning("ignoring entry %r of state file %s (%s)", name, path, e)
        return done

    def kept(
        self,
        name: str,
        inputs: Mapping[str, tuple[int, int]],
        want: Mapping[str, str],
        size: int | None = None,
    ) -> Done | None:
        """The record of `name` if its output can be kept without reading it, else None.

        It can when the file is a regular file whose size, modification time and inode change
        time are all as recorded, its inputs are unchanged, the recorded size agrees with the
        published `size` (if any), and the recorded digests include and match every one wanted.
        """
        d = self.done.get(name)
        if d is None or d.ctime_ns is None or dict(d.inputs) != dict(inputs):
            return None
        if size is not None and d.size != size:
            return None
        if any(d.digests.get(algo) != hexd for algo, hexd in want.items()):
            return None
        st = _regular_stat(self.path / name)
        if st is None or (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (d.size, d.mtime_ns, d.ctime_ns):
            return None
        return d

    def is_ours(self, name: str) -> bool:
        """Whether an earlier run recorded `name` (so it may be replaced without `--force`)."""
        return name in self.done

    def record(
        self, name: str, digests: Mapping[str, str], inputs: Mapping[str, tuple[int, int]]
    ) -> Done | None:
        """Note a finished output and save the state file atomically (thread-safe); returns the record."""
        if not self.keep_state:
            return None
        st = os.stat(self.path / name)
        done = Done(st.st_size, st.st_mtime_ns, dict(digests), dict(inputs), st.st_ctime_ns)
        with self._lock:
            self.done[name] = done
            with AtomicFile(self.path / STATE_FILE) as f:
                f.file.write((json.dumps(self._doc(), indent=1, sort_keys=True) + "\n").encode())
                f.commit()
        return done

    def discard(self, names: Sequence[str]) -> list[str]:
        """Remove recorded outputs and their records (they came from inputs now known to be wrong);
        returns the names removed."""
        gone = [n for n in names if n in self.done]
        if not gone or not self.keep_state:
            return []
        with self._lock:
            for n in gone:
                (self.path / n).unlink(missing_ok=True)
                del self.done[n]
            with AtomicFile(self.path / STATE_FILE) as f:
                f.file.write((json.dumps(self._doc(), indent=1, sort_keys=True) + "\n").encode())
                f.commit()
        return gone

    def _doc(self) -> dict[str, Any]:
        files: dict[str, Any] = {}
        by_hex: dict[str, Any] = {}
        for n, d in sorted(self.done.items()):
            if _is_unicode(n):
                files[n] = _entry_json(d)
            else:
                by_hex[os.fsencode(n).hex()] = _entry_json(d)
        doc: dict[str, Any] = {"format": STATE_FORMAT, "files": files}
        if by_hex:
            doc["files_hex"] = by_hex
        return doc
