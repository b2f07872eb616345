"""The legacy OpenAssistant XOR payload format (`oasst`), file by file.

Spec (also in the README): every payload file is the byte-wise XOR of the fine-tuned file and
the same-named base file, exactly as long as the fine-tuned file (base zero-padded or truncated);
`added_tokens.json` is stored raw, or XOR-ed when the encoder's base held one (`raw_rule`); a
payload file MAY be a gzip stream of that XOR, recognised by its first bytes. This module finds
the payload folder and plans which file is made how.
"""

from __future__ import annotations

import fnmatch
import gzip
import logging
import os
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from ._display import shown
from ._gzip import GzipReader
from ._json import loads as json_loads
from ._paths import check_name, check_not_escaping_link, check_regular_file
from .constants import (
    ENV_GZIP_BACKEND,
    GZIP_BACKENDS,
    GZIP_MAGIC,
    LEGACY_RAW_FILES,
    MAX_JSON_FILE_BYTES,
    TEMP_PREFIX,
    WEIGHT_SUFFIXES,
)
from .errors import FormatError, InputError, MissingFileError
from .payload_folder import left_by_us

logger = logging.getLogger(__name__)


Action = Literal["xor", "copy"]


@dataclass(frozen=True)
class PlannedFile:
    """One output file: its name, its inputs and how it is made."""

    name: str
    source: Path
    base: Path | None
    action: Action
    base_open: Any = None
    """Opens a generated base stream (the base folder holds LLaMA in another form)."""
    base_label: str = ""
    base_detail: str = ""
    """What a generated base file holds (source tensors), for messages."""

    @property
    def base_name(self) -> str:
        """How to name the base in messages: its path, or what it is generated from."""
        return str(self.base) if self.base is not None else self.base_label

    @property
    def source_size(self) -> int:
        return self.source.stat().st_size


def _files(folder: Path) -> list[str]:
    """Names of the regular files in `folder`; hidden ones, ours and subfolders skipped.

    Raises:
        `UnsafePathError`: an unsafe or reserved name, a link out of `folder`, or a special file.
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except NotADirectoryError:
        raise InputError(f"not a folder: {folder}", path=folder) from None
    except FileNotFoundError:
        raise MissingFileError(f"folder not found: {folder}", path=folder) from None
    except PermissionError:
        raise InputError(f"cannot list folder {folder}: permission denied", path=folder) from None
    names = []
    for e in entries:
        hidden = e.name.startswith(".") and not e.name.casefold().startswith(TEMP_PREFIX)
        if hidden or left_by_us(e.name) or e.is_dir():
            continue
        check_name(e.name, str(folder))
        if check_regular_file(folder / e.name, folder):
            names.append(e.name)
    return names


def is_raw(name: str, raw_patterns: Iterable[str] = ()) -> bool:
    """Whether `name` needs no base counterpart: stored raw, or XOR-ed only when the base has one."""
    return name in LEGACY_RAW_FILES or any(fnmatch.fnmatch(name, p) for p in raw_patterns)


def follows_raw_rule(name: str, raw_patterns: Iterable[str] = ()) -> bool:
    """Whether `name` is made by `raw_rule` (not listed as raw outright by `raw_patterns`)."""
    return name in LEGACY_RAW_FILES and not any(fnmatch.fnmatch(name, p) for p in raw_patterns)


def raw_rule(name: str) -> str:
    """The rule for a file of `LEGACY_RAW_FILES`, in words (for messages)."""
    return (
        f"a payload {name} that parses as JSON is taken as stored, any other is XOR-ed with the "
        f"base's {name} when the base has one (the published script copies {name} raw, then XORs it "
        "over that copy when its base holds the file)"
    )


def parses_as_json(path: Path) -> bool:
    """Whether the file is strict JSON (files over 64 MiB are not read and count as not JSON)."""
    try:
        if path.stat().st_size > MAX_JSON_FILE_BYTES:
            return False
        json_loads(path.read_bytes(), str(path))
    except FormatError:
        return False
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}", path=path) from e
    return True


def raw_rule_action(source: Path, base: Path, *, encoding: bool) -> Action:
    """How a file of `LEGACY_RAW_FILES` is made, as `raw_rule` says.

    Encoding does what the published script does: XOR when the base has the file, else copy.
    Decoding cannot know which base the payload was made against: a payload file that parses as
    JSON is copied, any other is XOR-ed when the base has the file (`decode` lets a published
    digest overrule this).
    """
    if not base.is_file():
        return "copy"
    if encoding:
        return "xor"
    return "copy" if parses_as_json(source) else "xor"


def plan(
    source_dir: Path,
    base_dir: Path,
    *,
    raw_patterns: Iterable[str] = (),
    generated: Any = None,
    only: Collection[str] | None = None,
    encoding: bool = False,
) -> list[PlannedFile]:
    """Plan every output of a decode (or encode): XOR with the same-named base file, or copy.

    `only` limits the plan to those names (a Hub download lists its payload files). Files of
    `LEGACY_RAW_FILES` follow `raw_rule_action`, with the base folder's own file (never a
    generated one).

    Raises:
        `MissingFileError`: base files are missing; the message names all of them.
        `InputError`: the base folder is unusable or there is nothing to do.
    """
    if not base_dir.exists():
        raise MissingFileError(f"base folder not found: {base_dir}", path=base_dir)
    if not base_dir.is_dir():
        raise InputError(f"base must be a folder, got a file: {base_dir}", path=base_dir)
    raw_patterns = tuple(raw_patterns)
    names = [n for n in _files(source_dir) if only is None or n in only]
    if not names:
        raise InputError(f"no files to process in {source_dir}", path=source_dir)
    skipped = [e.name for e in os.scandir(source_dir) if e.is_dir() and not e.name.startswith(".")]
    for d in skipped:
        logger.warning("ignoring subfolder %s of %s (payloads are flat)", d, source_dir)

    planned: list[PlannedFile] = []
    missing: list[str] = []
    for name in names:
        check_not_escaping_link(source_dir / name, source_dir)
        if follows_raw_rule(name, raw_patterns):
            action = raw_rule_action(source_dir / name, base_dir / name, encoding=encoding)
            logger.info("%s: %s", name, "XOR-ed with the base's" if action == "xor" else "stored raw")
            rule_base = base_dir / name if action == "xor" else None
            planned.append(PlannedFile(name, source_dir / name, rule_base, action))
            continue
        if is_raw(name, raw_patterns):
            planned.append(PlannedFile(name, source_dir / name, None, "copy"))
            continue
        opener = generated.opener(name) if generated is not None else None
        if opener is not None:
            label = f"{name} generated from {generated.folder}"
            planned.append(
                PlannedFile(name, source_dir / name, None, "xor", opener, label, generated.detail(name))
            )
            continue
        base = base_dir / name
        if not base.is_file():
            missing.append(name)
            continue
        tail = (source_dir / name).stat().st_size - base.stat().st_size
        if encoding and tail > 0 and name.lower().endswith(WEIGHT_SUFFIXES):
            logger.warning(
                "%s: its last %d bytes lie past the end of its base file and are stored unmasked, as the "
                "legacy format does; the native format (--format xorweights) masks tensor by tensor",
                shown(name),
                tail,
            )
        planned.append(PlannedFile(name, source_dir / name, base, "xor"))
    if missing:
        raise MissingFileError(
            f"base file{'s' if len(missing) > 1 else ''} missing in {base_dir}: "
            + ", ".join(missing)
            + f" (every payload file except {', '.join(LEGACY_RAW_FILES)} needs its base counterpart)",
            path=base_dir / missing[0],
        )
    return planned


def gzip_backend(preferred: str | None = None) -> str:
    """The gzip decompressor to use: python-isal (about twice as fast) when installed, else zlib.

    `preferred` (or the `XORWEIGHTS_GZIP_BACKEND` environment variable) may force `isal` or `zlib`.

    Raises:
        `InputError`: an unknown backend, or `isal` asked for and not installed.
    """
    choice = (preferred or os.environ.get(ENV_GZIP_BACKEND) or "auto").lower()
    if choice not in GZIP_BACKENDS:
        raise InputError(f"unknown gzip backend {choice!r}; expected one of {', '.join(GZIP_BACKENDS)}")
    if choice == "zlib":
        return "zlib"
    try:
        import isal.isal_zlib  # noqa: F401
    except ImportError:
        if choice == "isal":
            raise InputError("gzip backend isal asked for, but python-isal is not installed") from None
        return "zlib"
    return "isal"


#: Errors a corrupt or truncated gzip stream raises, whichever backend reads it.
GZIP_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile)
try:
    from isal.isal_zlib import error as _isal_error

    GZIP_ERRORS += (_isal_error,)
except ImportError:  # pragma: no cover (python-isal is optional)
    pass


def open_source(
    path: Path, *, detect_gzip: bool, backend: str = "zlib", require_gzip: bool = False
) -> tuple[BinaryIO, bool]:
    """Open a payload (or fine-tuned) file; gzip streams are recognised by their magic bytes.

    Both backends read gzip through `_gzip.GzipReader`: one strict RFC 1952 parser, inflating in a
    thread of its own (overlapping the XOR pass) with zlib or python-isal.

    Args:
        detect_gzip: read a file starting with `1f 8b 08` as gzip (else every file is plain).
        require_gzip: the file must be gzip.

    Returns:
        `(stream, compressed)`: the stream yields the uncompressed bytes; closing it closes the file.

    Raises:
        `FormatError`: `require_gzip` and the file does not start with the gzip magic bytes.
    """
    f = open(path, "rb")  # noqa: SIM115 (the caller owns the stream)
    try:
        head = f.read(len(GZIP_MAGIC)) if detect_gzip or require_gzip else b""
        f.seek(0)
        if require_gzip:
            check_gzip_head(path, head)
    except BaseException:
        f.close()
        raise
    if head != GZIP_MAGIC:
        return f, False
    return GzipReader(f, backend), True  # type: ignore[return-value]  # a reader: readinto, fileno, close


def check_gzip_head(path: Path, head: bytes) -> None:
    """Refuse a payload file that must be gzip and does not start with `1f 8b 08` (`head`).

    Raises:
        `FormatError`: naming the file and what it starts with.
    """
    if head[: len(GZIP_MAGIC)] != GZIP_MAGIC:
        raise FormatError(
            f"payload {path} is not gzip (it starts with {head[: len(GZIP_MAGIC)].hex() or 'nothing'}, "
            f"not {GZIP_MAGIC.hex()}), but --payload-compression gzip requires every XOR-ed payload file "
            "to be gzip",
            path=path,
        )


def gzip_writer(sink: BinaryIO, name: str, *, mtime: int) -> gzip.GzipFile:
    """A gzip stream as the legacy `--compress` writes it: level 9, the file's name in the header.

    The legacy script stamps the current time; `mtime` makes the output reproducible.
    """
    return gzip.GzipFile(filename=name, mode="wb", fileobj=sink, compresslevel=9, mtime=mtime)
