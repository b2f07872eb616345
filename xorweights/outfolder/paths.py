"""Names that come from outside (payload listings, manifests, indexes, model cards) are checked here.

A name is a relative path inside a folder: no absolute paths, no drive letters, no `..`, no
empty or `.` parts, no NUL or control characters, no part named like xorweights' own files
(`.xorweights-...`), nothing in `.cache/huggingface/` (where xorweights and huggingface_hub keep
their records), and at most 255 bytes per part. A file read from a folder must be a regular
file that resolves inside it (`check_regular_file`): a link out of it, a FIFO, a device or a
socket is refused before anything opens it, so no read can block or leak. A file read whole is read
with `read_bounded`: a regular file no larger than the bound of its kind, checked on the open file.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .._units import human_bytes
from ..errors import (
    FileTooLargeError,
    FormatError,
    InputError,
    IOFailure,
    MissingFileError,
    NotRegularFileError,
    UnsafePathError,
)
from .atomic import BOOKKEEPING_DIR, TEMP_PREFIX, is_bookkeeping

_DRIVE = re.compile(r"^[A-Za-z]:")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: object, where: str, *, path: str | None = None) -> str:
    """Return `name` if it is a safe relative file name; raise `UnsafePathError` otherwise.

    Args:
        name: the candidate (anything decoded from JSON, say).
        where: what to name in the error (the file the name came from, and where in it).
        path: the file, as the error's `path` (default: `where`).
    """
    path = where if path is None else path
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{where}: file name must be a non-empty string, got {name!r}", path=path)
    if CONTROL.search(name):
        raise UnsafePathError(f"{where}: file name {name!r} has control characters", path=path)
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise UnsafePathError(f"{where}: file name {name!r} must be relative to its folder", path=path)
    parts = re.split(r"[\\/]", name)
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"{where}: file name {name!r} must stay inside its folder", path=path)
    if is_bookkeeping("/".join(parts)):
        raise UnsafePathError(
            f"{where}: file name {name!r} is reserved for the bookkeeping of xorweights and "
            f"huggingface_hub ({BOOKKEEPING_DIR.rpartition('/')[0]}/...)",
            path=path,
        )
    if any(p.casefold().startswith(TEMP_PREFIX) for p in parts):
        raise UnsafePathError(
            f"{where}: file name {name!r} is reserved for xorweights' own files ({TEMP_PREFIX}...)",
            path=path,
        )
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise UnsafePathError(f"{where}: file name {name[:40]!r}... is too long", path=path)
    return name


def check_listed_name(name: object, where: str, source: str) -> str:
    """`check_name` for a name a file lists (a manifest, an `md5sum` line): the same rules, refused
    as a `FormatError` of `source`, the file, with `where` (its line or entry) leading the message."""
    try:
        return check_name(name, where)
    except UnsafePathError as e:
        raise FormatError(e.message, path=source) from None


def inside(folder: Path, name: str, where: str) -> Path:
    """`folder / name`, refusing a result that resolves (through symlinks) outside `folder`."""
    check_name(name, where)
    root = folder.resolve()
    target = (folder / name).resolve()
    if target != root and root not in target.parents:
        raise UnsafePathError(
            f"{folder / name} resolves to {target}, outside {root}; refusing to follow it", path=folder / name
        )
    return folder / name


def _link_roots(folder: Path) -> list[Path]:
    """Where symlinks in `folder` may point: inside it; in a Hub cache snapshot, also its repo's blobs."""
    root = folder.resolve()
    roots = [root]
    for parent in [root, *root.parents]:
        if parent.parent.name == "snapshots" and parent.parent.parent.name.startswith("models--"):
            roots.append(parent.parent.parent / "blobs")
            break
    return roots


def check_not_escaping_link(path: Path, folder: Path) -> None:
    """Refuse `path` if it is a symlink whose target lies outside `folder`.

    The Hub cache keeps a snapshot's files as links to its `blobs/` folder: those are allowed.
    """
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        roots = _link_roots(folder)
        if not any(r in target.parents for r in roots):
            raise UnsafePathError(
                f"{path} is a symlink to {target}, outside {roots[0]}; refusing to follow it", path=path
            )


def _resolves_inside(path: Path, folder: Path) -> bool:
    """Whether `path`, every link on the way followed, lies inside `folder` (or its Hub blobs)."""
    target = Path(os.path.realpath(path))
    return any(target == r or r in target.parents for r in _link_roots(folder))


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def check_regular_file(path: Path, folder: Path) -> bool:
    """Whether a regular file sits at `path` inside `folder` (False: nothing there).

    Only metadata is read (no open), so a FIFO cannot block. A link to a regular file inside
    `folder` (or, in a Hub cache snapshot, its blobs) is followed.

    Raises:
        `UnsafePathError`: `path` resolves outside `folder` (a link, or a linked folder on the
            way), or is a FIFO, device, socket or folder.
    """
    check_not_escaping_link(path, folder)
    if (path.is_symlink() or path.exists()) and not _resolves_inside(path, folder):
        raise UnsafePathError(
            f"{path} resolves to {os.path.realpath(path)}, outside {folder.resolve()}; refusing to follow it",
            path=path,
        )
    return is_regular(path)


def _not_regular(path: os.PathLike[str] | str, mode: int) -> NotRegularFileError:
    return NotRegularFileError(
        f"{os.fspath(path)} is {_kind(mode)}, not a regular file; refusing to read it", path=path
    )


def is_regular(path: Path) -> bool:
    """Whether a regular file is at `path` (False: nothing there); only metadata is read.

    Raises:
        `NotRegularFileError`: something else is there (a FIFO, a device, a socket, a folder).
    """
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode)
    return True


def read_bounded(
    path: os.PathLike[str] | str, limit: int, what: str = "file", *, follow: bool = True
) -> bytes:
    """The whole content of the regular file at `path`, refused unread when larger than `limit`.

    The file is opened without blocking and checked on the open descriptor (`fstat`): a FIFO, a
    device, or a file swapped in after a check by name is refused, and one that grows while it
    is read stops at `limit` + 1 bytes and is refused too.

    Args:
        what: what the file is, for the message (`a checksum file`, `config.json`).
        follow: follow a symlink at `path` (else one is refused, as `O_NOFOLLOW` does).

    Raises:
        `MissingFileError`: nothing there. `NotRegularFileError`: not a regular file.
        `FileTooLargeError`: larger than `limit`. `IOFailure`: it cannot be read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise MissingFileError(f"{os.fspath(path)}: not found", path=path) from None
    except OSError as e:
        raise IOFailure("opening", path, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        _check_size(path, st.st_size, limit, what)
        chunks, got = [], 0
        while got <= limit:
            chunk = os.read(fd, min(limit + 1 - got, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        _check_size(path, got, limit, what)
        return b"".join(chunks)
    except OSError as e:
        raise IOFailure("reading", path, e) from None
    finally:
        os.close(fd)


def _check_size(path: os.PathLike[str] | str, size: int, limit: int, what: str) -> None:
    if size > limit:
        raise FileTooLargeError(
            f"{os.fspath(path)}: {human_bytes(size)} ({size} bytes), more than {what} may be "
            f"({human_bytes(limit)} at most); check that it is the right file",
            path=path,
            expected=limit,
            actual=size,
        )


def check_folder_inside(path: Path, root: Path) -> None:
    """Refuse a subfolder of `root` that resolves (through a link) outside it."""
    if path.is_symlink() and not _resolves_inside(path, root):
        raise UnsafePathError(
            f"{path} is a symlink to {os.path.realpath(path)}, outside {root.resolve()}; "
            "refusing to follow it",
            path=path,
        )


def check_out_dir(out: Path, inputs: dict[str, Path]) -> None:
    """`out` is a folder (or can be one) and none of the input folders.

    Raises:
        `InputError`: naming the clash.
    """
    for role, folder in inputs.items():
        if out.resolve() == folder.resolve():
            raise InputError(f"`out` must differ from the {role} folder ({folder})", path=out)
    if out.exists() and not out.is_dir():
        raise InputError(f"`out` must be a folder: {out}", path=out)
