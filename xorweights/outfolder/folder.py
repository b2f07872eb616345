"""The output folder: one writer at a time, no stale temporaries, and a record of finished files.

The record is a snapshot, `.xorweights-state.json`, and a journal, `.xorweights-state.journal`, both
in the folder's `.cache/huggingface/xorweights/` (`BOOKKEEPING_DIR`, which uploads to the Hub leave
out; a folder written before they moved there has them at its top, and they are moved in when it is
opened), that a run only appends to (one JSON object a line, never rewritten per output): `intent` with an
output's name, size, digests and inputs right before it is renamed into place, `done` with its
stamps right after, `drop` when an output is removed. Opening the folder replays the journal over
the snapshot, writes the snapshot and removes the journal; so does the end of a run. An intent
with no `done` (a run killed between the rename and the record) is confirmed by hashing the file:
with the intended size and digests it is ours, whatever the run was killed at. The journal is
fsynced before each rename when outputs are (`intend(durable=True)`), so no output can sit under
its final name without its intent; a lost `done` line only means the output is hashed once more.

`.xorweights-state.json` lists each output that was completed (and verified, when checksums were
given): its size, modification time, inode change time, digests and the identity of the inputs
it was made from. The record is evidence, not authority: a later run keeps an output unread only
while all three stamps are as recorded (the change time cannot be set back, as `os.utime` sets the
modification time back); otherwise it hashes the file again (see `pipeline.resume`). Every file the
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

from .._json import loads
from ..checksum_types import HEX_LENGTH, MAX_MANIFEST_BYTES
from ..errors import FolderLockedError, InputError, IOFailure
from ..hashing import CRC32, hash_file
from . import bookkeeping
from .atomic import BOOKKEEPING_DIR, TEMP_PREFIX, TEMP_SUFFIX, AtomicFile, fsync_dir
from .paths import check_name, read_bounded

#: Record of finished outputs in an output folder's `BOOKKEEPING_DIR` (see `outfolder/folder.py`).
STATE_FILE = ".xorweights-state.json"

STATE_FORMAT = "xorweights-state/1"

#: Append-only journal of the current (or a killed) run, one JSON object a line: an `intent`
#: before each output's rename, `done` after it, `drop` for a removed output. Folded into
#: `STATE_FILE` when the folder is opened and when the run ends, then removed.
STATE_JOURNAL = ".xorweights-state.journal"

#: Where the state file and the journal sit in an output folder (relative POSIX paths).
STATE_PATH = f"{BOOKKEEPING_DIR}/{STATE_FILE}"
JOURNAL_PATH = f"{BOOKKEEPING_DIR}/{STATE_JOURNAL}"

logger = logging.getLogger(__name__)

_INT64 = 1 << 63
_HEX = re.compile(r"[0-9a-f]+")
#: What every output's record holds even with no published digest: a CRC-32 of its bytes (with
#: its size), taken as it is written. Enough to recognise our own file after a crash and to notice
#: an output that changed by accident, never proof against a deliberate edit (4 bytes make any CRC
#: match): proving an output is the md5/sha256's job, and `--verify` makes one with only a CRC-32
#: again to compare (`pipeline.resume`). (A sha256 in the same pass costs more than the decode
#: itself on two cores: 1 GiB in 1.3 s against 0.8 s.)
STATE_DIGEST = CRC32
_STATE_HEX = {**HEX_LENGTH, STATE_DIGEST: 8}

#: A journal larger than this is ignored unread (a snapshot is bounded by `MAX_MANIFEST_BYTES`).
_MAX_JOURNAL_BYTES = 64 * MAX_MANIFEST_BYTES


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
    sources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Digests of the inputs read to make the output, by role (`data`, `base`): what an encode
    needs of a payload file it keeps (its manifest lists them). Empty for decoded outputs."""


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
        if algo not in _STATE_HEX or not isinstance(hexd, str) or len(hexd) != _STATE_HEX[algo]:
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


def _sources(value: object) -> dict[str, dict[str, str]]:
    if not isinstance(value, dict):
        raise ValueError("sources must be an object")
    out = {}
    for role, d in value.items():
        if role not in ("data", "base"):
            raise ValueError(f"unknown source {role!r}")
        out[role] = _digests(d)
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
        sources=_sources(entry.get("sources", {})),
    )


def _entry_json(d: Done) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "size": d.size,
        "mtime_ns": d.mtime_ns,
        "ctime_ns": d.ctime_ns,
        "digests": dict(d.digests),
        "inputs": {k: list(v) for k, v in d.inputs.items()},
    }
    if d.sources:
        doc["sources"] = {k: dict(v) for k, v in d.sources.items()}
    return doc


def _is_unicode(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes: bytes that were not UTF-8
        return False
    return True


def _journal_line(op: str, name: str, fields: Mapping[str, Any]) -> bytes:
    key = {"name": name} if _is_unicode(name) else {"name_hex": os.fsencode(name).hex()}
    return (json.dumps({"op": op, **key, **fields}, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _journal_name(rec: object, where: str) -> tuple[str, str]:
    if not isinstance(rec, dict):
        raise ValueError("line must be an object")
    op, name, by_hex = rec.get("op"), rec.get("name"), rec.get("name_hex")
    if op not in ("intent", "done", "drop"):
        raise ValueError(f"unknown op {op!r}")
    if isinstance(by_hex, str) and name is None:
        name = os.fsdecode(bytes.fromhex(by_hex))
    if not isinstance(name, str):
        raise ValueError("no name")
    return op, check_name(name, where)


def _read_state(path: Path, limit: int = MAX_MANIFEST_BYTES) -> bytes:
    """The state file's bytes: a regular file (never a link, FIFO or device) of bounded size."""
    return read_bounded(path, limit, "a state file", follow=False)


class OutputFolder:
    """Lock a folder for writing, clean our stale temporaries, read and update the state file.

    Example:
        >>> with OutputFolder(out) as folder:
        ...     if folder.kept(name, inputs, want) is None: ...
        ...     folder.record(name, digests, inputs)
    """

    def __init__(
        self,
        path: os.PathLike[str] | str,
        *,
        keep_state: bool = True,
        own_dir: os.PathLike[str] | str | None = None,
    ) -> None:
        self.path = Path(path)
        self.keep_state = keep_state
        self.own_dir = self.path / BOOKKEEPING_DIR if own_dir is None else Path(own_dir)
        """Where xorweights keeps its files: the records, the journal and the temporaries of
        outputs on their way into place (`BOOKKEEPING_DIR` unless told: a staging folder keeps its
        own beside the files it stages)."""
        self._fd: int | None = None
        self._created = False
        self._journal: int | None = None
        self._lock = threading.Lock()
        self.done: dict[str, Done] = {}
        self._pending: dict[str, Done] = {}
        """Outputs journaled as about to be renamed and not yet recorded (an interrupt between the
        two): confirmed by their digests when the folder is closed, as the next run would."""
        self.recovered: list[str] = []
        """Outputs a killed run renamed into place without recording them, recognised by their digests."""

    @property
    def state_dir(self) -> Path:
        """Where the state file and its journal live (`own_dir`)."""
        return self.own_dir

    def __enter__(self) -> OutputFolder:
        self._created = not os.path.lexists(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as e:  # a read-only file system, a file in the way: named, typed
            raise IOFailure("creating" if self._created else "opening", self.path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderLockedError(
                f"{self.path} is in use by another xorweights process; wait for it or use another `out`",
                path=self.path,
            ) from None
        self._fd = fd
        try:
            self._clean_stale(self.path)  # temporaries beside the outputs (a run of an older version)
            if self.own_dir != self.path:
                bookkeeping.make_own_dir(self.path, self.own_dir, fd)
                bookkeeping.migrate(self.path, self.own_dir, (STATE_FILE, STATE_JOURNAL))
                self._clean_stale(self.own_dir)
            if self.keep_state:
                self.done = self._load()
                if os.path.lexists(self.state_dir / STATE_JOURNAL):
                    self._compact()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._journal is not None:
                os.close(self._journal)
                self._journal = None
                try:
                    self._settle_pending()
                    self._compact()
                except OSError as e:  # the journal stays: the next run replays it
                    logger.warning("could not save the state file in %s (%s)", self.path, e)
        finally:
            if self._fd is not None:
                bookkeeping.prune(self.path, self.own_dir)
                os.close(self._fd)  # releases the lock
                self._fd = None
            if exc and exc[0] is not None and self._created:
                try:  # a failed run leaves no empty folder it made (one holding anything stays)
                    os.rmdir(self.path)
                except OSError:
                    pass

    def drop_records(self) -> None:
        """Remove the state file and its journal (after `close_state`: their outputs need no record)."""
        for name in (STATE_FILE, STATE_JOURNAL):
            try:
                os.unlink(self.state_dir / name)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise IOFailure("removing", self.state_dir / name, e) from e
        self.done.clear()

    def close_state(self) -> None:
        """Stop recording: close the journal without saving it (the caller then removes the state,
        whose outputs need no record any more). The folder stays locked."""
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None
        self.keep_state = False

    def _settle_pending(self) -> None:
        """Record the outputs renamed into place whose record an interrupt cut off (by their digests);
        the snapshot then holds them, as a replay of the journal would."""
        for name, intent in list(self._pending.items()):
            confirmed = self._confirm(name, intent)
            if confirmed is not None:
                self.done[name] = confirmed
        self._pending.clear()

    def _compact(self) -> None:
        """Write the snapshot of `done`, then remove the journal (replaying it again is harmless)."""
        with AtomicFile(self.state_dir / STATE_FILE) as f:
            f.file.write((json.dumps(self._doc(), indent=1, sort_keys=True) + "\n").encode())
            f.commit()
        try:
            os.unlink(self.state_dir / STATE_JOURNAL)
        except FileNotFoundError:
            pass

    def _append(self, line: bytes, *, sync: bool) -> None:
        """Append one journal line (the caller holds the lock); `sync` makes it durable first."""
        path = self.state_dir / STATE_JOURNAL
        try:
            if self._journal is None:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                self._journal = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
                if sync:
                    fsync_dir(self.state_dir)
            view = memoryview(line)
            while view:
                view = view[os.write(self._journal, view) :]
            if sync:
                os.fdatasync(self._journal)
        except OSError as e:
            raise IOFailure("writing", path, e) from e

    def _clean_stale(self, folder: Path) -> None:
        """Remove temporaries left by a killed run (we hold the lock: no one else writes them)."""
        for entry in os.scandir(folder):
            if (
                entry.name.startswith(TEMP_PREFIX)
                and entry.name.endswith(TEMP_SUFFIX)
                and entry.is_file(follow_symlinks=False)
            ):
                logger.info("removing stale temporary %s", entry.path)
                os.unlink(entry.path)

    def _load_snapshot(self) -> dict[str, Done]:
        """The state file's entries; the file, or an entry, that is malformed is ignored with a warning."""
        path = self.state_dir / STATE_FILE
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

    def _load(self) -> dict[str, Done]:
        """The snapshot with the journal of a killed (or unsaved) run replayed over it."""
        done = self._load_snapshot()
        path = self.state_dir / STATE_JOURNAL
        try:
            data = _read_state(path, _MAX_JOURNAL_BYTES)
        except FileNotFoundError:
            return done
        except (OSError, ValueError) as e:
            logger.warning("ignoring unreadable state journal %s (%s)", path, e)
            return done
        intents: dict[str, Done] = {}
        for i, line in enumerate(data.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                rec = loads(line, f"{path} line {i}")
                op, name = _journal_name(rec, str(path))
                if op == "drop":
                    done.pop(name, None)
                    intents.pop(name, None)
                    continue
                entry = parse_done(rec if op == "done" else {**rec, "mtime_ns": 0, "ctime_ns": None})
            except (ValueError, InputError) as e:  # a line cut short by a kill, say
                logger.warning("ignoring line %d of state journal %s (%s)", i, path, e)
                continue
            if op == "done":
                done[name] = entry
                intents.pop(name, None)
            else:
                intents[name] = entry
        for name, intent in intents.items():
            confirmed = self._confirm(name, intent)
            if confirmed is not None:
                done[name] = confirmed
                self.recovered.append(name)
        return done

    def _confirm(self, name: str, intent: Done) -> Done | None:
        """The record of an output renamed into place by a run killed before it recorded it: the
        file must have the intended size and digests (hashed: this is only for recovery)."""
        st = _regular_stat(self.path / name)
        if st is None or st.st_size != intent.size or not intent.digests:
            return None
        try:
            got = hash_file(self.path / name, sorted(intent.digests))
        except OSError as e:
            logger.warning("%s: cannot be read to confirm it (%s)", self.path / name, e)
            return None
        if got != dict(intent.digests):
            return None
        logger.info("%s: renamed into place by a run killed before it recorded it; recognised", name)
        return Done(st.st_size, st.st_mtime_ns, got, dict(intent.inputs), st.st_ctime_ns, intent.sources)

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

    def intend(
        self,
        name: str,
        size: int,
        digests: Mapping[str, str],
        inputs: Mapping[str, tuple[int, int]],
        *,
        durable: bool = True,
        sources: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """Journal an output about to be renamed into place (thread-safe): a run killed after the
        rename and before `record` leaves a file the next run recognises by these digests."""
        if not self.keep_state:
            return
        fields: dict[str, Any] = {
            "size": size,
            "digests": dict(digests),
            "inputs": {k: list(v) for k, v in inputs.items()},
        }
        if sources and any(sources.values()):
            fields["sources"] = {k: dict(v) for k, v in sources.items() if v}
        pending = Done(
            size, 0, dict(digests), dict(inputs), None, {k: dict(v) for k, v in (sources or {}).items() if v}
        )
        with self._lock:
            self._pending[name] = pending
            self._append(_journal_line("intent", name, fields), sync=durable)

    def record(
        self,
        name: str,
        digests: Mapping[str, str],
        inputs: Mapping[str, tuple[int, int]],
        sources: Mapping[str, Mapping[str, str]] | None = None,
    ) -> Done | None:
        """Note a finished output in the journal (thread-safe, no fsync: losing the line only means
        the output is hashed again); returns the record."""
        if not self.keep_state:
            return None
        st = os.stat(self.path / name)
        src = {k: dict(v) for k, v in (sources or {}).items() if v}
        done = Done(st.st_size, st.st_mtime_ns, dict(digests), dict(inputs), st.st_ctime_ns, src)
        with self._lock:
            self.done[name] = done
            self._pending.pop(name, None)
            self._append(_journal_line("done", name, _entry_json(done)), sync=False)
        return done

    def has_records(self) -> bool:
        """Whether any output in place is recorded, or was journaled on its way into place."""
        with self._lock:
            return bool(self.done or self._pending)

    def discard(self, names: Sequence[str]) -> list[str]:
        """Remove recorded outputs and their records (they came from inputs now known to be wrong);
        returns the names removed."""
        gone = [n for n in names if n in self.done]
        if not gone or not self.keep_state:
            return []
        with self._lock:
            for n in gone:
                (self.path / n).unlink(missing_ok=True)  # first: a record of a missing file is harmless
                self._pending.pop(n, None)
                self._append(_journal_line("drop", n, {}), sync=False)
                del self.done[n]
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
