"""The folder where xorweights keeps its own files inside an output folder (`BOOKKEEPING_DIR`):
made safely, filled with the records an older version kept at the folder's top, and removed once
it holds nothing. See docs/guarantees.md, *Where the records live*.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..errors import IOFailure, UnsafePathError
from .atomic import STAGING_DIR, TEMP_PREFIX, TEMP_SUFFIX

logger = logging.getLogger(__name__)

#: Where a payload folder's records waited inside the staging folder before they moved to
#: `BOOKKEEPING_DIR` (read once, to migrate them).
OLD_PAYLOAD_STATE = ".payload-state"


def make_own_dir(path: Path, own_dir: Path, fd: int) -> None:
    """Create `own_dir` below `path` (open as `fd`). A link or file in its way is refused (`.cache`
    may be the user's); so is a folder on another file system (no rename from there would be atomic).

    Raises:
        `UnsafePathError`: a link or file in the way, or another file system.
        `IOFailure`: a folder could not be made.
    """
    d = path
    try:
        for part in own_dir.relative_to(path).parts:
            d = d / part
            if d.is_symlink() or (os.path.lexists(d) and not d.is_dir()):
                raise UnsafePathError(
                    f"{d} is a link or a file; xorweights keeps its records in {own_dir}: "
                    "move it away or choose another `out`",
                    path=d,
                )
            d.mkdir(exist_ok=True)
        same = os.stat(own_dir).st_dev == os.fstat(fd).st_dev
    except OSError as e:
        raise IOFailure("creating", d, e) from e
    if not same:
        raise UnsafePathError(
            f"{own_dir} is on another file system than {path}: outputs could not be "
            "renamed into place atomically; choose another `out`",
            path=own_dir,
        )


def migrate(path: Path, own_dir: Path, records: Sequence[str]) -> None:
    """Move what an older version kept at the folder's top (`.xorweights-*` but temporaries: the
    state file, its journal, a recovery's seal, the staging folder) into `own_dir`, then a payload
    folder's `records` out of that staging folder, where they were kept; what `own_dir` already
    holds wins.

    Raises:
        `IOFailure`: a move failed.
    """
    top = [Path(e.path) for e in os.scandir(path) if e.name.startswith(TEMP_PREFIX)]
    old = own_dir / STAGING_DIR / OLD_PAYLOAD_STATE
    try:
        for src in top:
            if not src.name.endswith(TEMP_SUFFIX) and not src.is_symlink():
                _move_in(src, own_dir / src.name)
        for name in records:
            if os.path.lexists(old / name):
                _move_in(old / name, own_dir / name)
        if old.is_dir() and not old.is_symlink() and not any(old.iterdir()):
            old.rmdir()
    except OSError as e:
        raise IOFailure("moving the records of", path, e) from e


def _move_in(src: Path, dst: Path) -> None:
    if not os.path.lexists(dst):
        logger.info("moving %s to %s", src, dst)
        os.replace(src, dst)
        return
    logger.info("removing %s: %s replaces it", src, dst)
    if src.is_dir():
        shutil.rmtree(src)
    else:
        src.unlink()


def prune(path: Path, own_dir: Path) -> None:
    """Remove `own_dir` when it holds no file (and `.cache/huggingface/`, `.cache/` once empty)."""
    if own_dir == path or not own_dir.is_dir() or own_dir.is_symlink():
        return
    if any(not p.is_dir() or p.is_symlink() for p in own_dir.rglob("*")):
        return
    shutil.rmtree(own_dir, ignore_errors=True)
    for parent in own_dir.relative_to(path).parents[:-1]:
        try:
            os.rmdir(path / parent)
        except OSError:
            break
