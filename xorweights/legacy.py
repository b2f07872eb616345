"""The legacy OpenAssistant XOR payload format (`oasst`), file by file.

Spec (also in the README): every payload file is the byte-wise XOR of the fine-tuned file and
the same-named base file, exactly as long as the fine-tuned file (base zero-padded or truncated);
`added_tokens.json` is stored raw; a payload file MAY be a gzip stream of that XOR, recognised
by its first bytes. This module finds the payload folder and plans which file is made how.
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

from ._paths import check_not_escaping_link
from .constants import ENV_GZIP_BACKEND, GZIP_BACKENDS, GZIP_MAGIC, LEGACY_RAW_FILES, TEMP_PREFIX
from .errors import InputError, MissingFileError

logger = logging.getLogger(__name__)

#: Files whose presence marks a folder as holding a model or a payload.
_MARKERS = (
    "xorweights.json",
    "*.bin",
    "*.safetensors",
    "*.pth",
    "*.index.json",
    "config.json",
    "tokenizer.model",
)
#: How deep below the given folder a payload may sit (the sft-6 repo nests it two levels down).
_MAX_DEPTH = 3

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
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except NotADirectoryError:
        raise InputError(f"not a folder: {folder}", path=folder) from None
    except FileNotFoundError:
        raise MissingFileError(f"folder not found: {folder}", path=folder) from None
    except PermissionError:
        raise InputError(f"cannot list folder {folder}: permission denied", path=folder) from None
    return [e.name for e in entries if not e.name.startswith((".", TEMP_PREFIX)) and e.is_file()]


def files_below(root: Path, depth: int = _MAX_DEPTH) -> list[str]:
    """Relative POSIX paths of the files up to `depth` folders below `root`; hidden entries skipped."""
    found: list[str] = []
    level = [root]
    for _ in range(depth + 1):
        deeper = []
        for d in level:
            for e in sorted(os.scandir(d), key=lambda e: e.name):
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    deeper.append(Path(e.path))
                elif e.is_file():
                    found.append(Path(e.path).relative_to(root).as_posix())
        level = deeper
    return found


def find_payload_dir(path: os.PathLike[str] | str) -> Path:
    """The folder holding the payload files: `path` itself, or the one folder below it that does.

    A repo download keeps its payload up to three levels down (`repo/name/name/` for sft-6);
    a folder with `xorweights.json` is taken, else the nearest folder holding model files
    (`*.bin`, `*.safetensors`, `*.index.json`, `config.json`, ...); more than one at that depth
    is an error. The rules are `find_payload_in_listing`'s, applied to the files on disk.

    Raises:
        `MissingFileError`: `path` does not exist.
        `InputError`: no folder, or more than one, holds payload files.
    """
    root = Path(path)
    if not root.exists():
        raise MissingFileError(f"payload folder not found: {root}", path=root)
    if not root.is_dir():
        raise InputError(f"payload must be a folder, got a file: {root}", path=root)
    sub = find_payload_in_listing(files_below(root), str(root))
    return root / sub if sub else root


def find_payload_in_listing(paths: Iterable[str], where: str) -> str:
    """The folder holding the payload among a repo's file paths (`""`: the top), as `find_payload_dir`.

    Raises:
        `InputError`: no folder, or more than one at the same depth, holds payload files.
    """
    by_dir: dict[str, list[str]] = {}
    for path in paths:
        folder, _, name = path.rpartition("/")
        if not any(part.startswith(".") for part in path.split("/")) and not name.startswith(TEMP_PREFIX):
            by_dir.setdefault(folder, []).append(name)

    def marked(folder: str) -> bool:
        return any(fnmatch.fnmatch(n, pat) for n in by_dir.get(folder, ()) for pat in _MARKERS)

    native = sorted(
        d for d, names in by_dir.items() if "xorweights.json" in names and d.count("/") < _MAX_DEPTH
    )
    if len(native) == 1:  # a native payload is unambiguous, wherever it sits
        return native[0]
    if marked(""):
        return ""
    for depth in range(_MAX_DEPTH):
        found = sorted(d for d in by_dir if d and d.count("/") == depth and marked(d))
        if len(found) > 1:
            raise InputError(
                f"{where} holds several payload folders ({', '.join(found)}); pass the one to decode",
                path=where,
            )
        if found:
            logger.info("payload files found in %s/%s", where, found[0])
            return found[0]
    if by_dir.get(""):
        return ""
    raise InputError(
        f"no payload files in {where} or {_MAX_DEPTH} levels below it (looked for {', '.join(_MARKERS)})",
        path=where,
    )


def is_raw(name: str, raw_patterns: Iterable[str] = ()) -> bool:
    """Whether `name` is stored raw (copied, not XOR-ed)."""
    return name in LEGACY_RAW_FILES or any(fnmatch.fnmatch(name, p) for p in raw_patterns)


def plan(
    source_dir: Path,
    base_dir: Path,
    *,
    raw_patterns: Iterable[str] = (),
    generated: Any = None,
    only: Collection[str] | None = None,
) -> list[PlannedFile]:
    """Plan every output of a decode (or encode): XOR with the same-named base file, or copy.

    `only` limits the plan to those names (a Hub download lists its payload files).

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
    """The gzip decompressor to use: python-isal (about 3x faster) when installed, else zlib.

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
        import isal.igzip_threaded  # noqa: F401
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


def open_source(path: Path, *, detect_gzip: bool, backend: str = "zlib") -> tuple[BinaryIO, bool]:
    """Open a payload (or fine-tuned) file; gzip streams are recognised by their magic bytes.

    With the `isal` backend, decompression runs in its own thread, overlapping the XOR pass.

    Returns:
        `(stream, compressed)`: the stream yields the uncompressed bytes; closing it closes the file.
    """
    f = open(path, "rb")  # noqa: SIM115 (the caller owns the stream)
    try:
        head = f.read(len(GZIP_MAGIC)) if detect_gzip else b""
        f.seek(0)
    except BaseException:
        f.close()
        raise
    if head != GZIP_MAGIC:
        return f, False
    if backend == "isal":
        import isal.igzip_threaded

        return _Closing(isal.igzip_threaded.open(f, "rb", threads=1, block_size=4 << 20), f), True
    return _Closing(gzip.GzipFile(fileobj=f, mode="rb"), f), True


class _Closing:
    """A decompressing reader that also closes the file under it."""

    def __init__(self, reader: Any, raw: BinaryIO) -> None:
        self.reader, self.raw = reader, raw

    def readinto(self, b: Any) -> int:
        return int(self.reader.readinto(b))

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.raw.close()

    def __enter__(self) -> _Closing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gzip_writer(sink: BinaryIO, name: str, *, mtime: int) -> gzip.GzipFile:
    """A gzip stream as the legacy `--compress` writes it: level 9, the file's name in the header.

    The legacy script stamps the current time; `mtime` makes the output reproducible.
    """
    return gzip.GzipFile(filename=name, mode="wb", fileobj=sink, compresslevel=9, mtime=mtime)
