"""Free space: refuse, before anything is written, a run whose outputs cannot fit.

Called once per command after triage, so only the outputs still to make count. The figure is
the file system's free space for unprivileged users (`statvfs` `f_bavail`); where it cannot be
read, nothing is refused (a full disk during the run still fails cleanly, naming the file).
`XORWEIGHTS_SKIP_SPACE_CHECK=1` skips the check (a file system whose free figure is wrong).

An output whose size is known only once written (a compressed payload file) counts nothing up front:
`SpaceWatch` checks the free space as it is written instead, and running out is a `NoSpaceError`
(its temporary removed), never a refusal of what would have fitted.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from .._env import env_flag
from .._units import human_bytes
from ..errors import NoSpaceError

ENV_SKIP_SPACE_CHECK = "XORWEIGHTS_SKIP_SPACE_CHECK"
STATE_SLACK = 64 * 1024
"""Room kept for what is written beside the outputs: the state file, a manifest."""
WATCH_BYTES = 8 * 1024 * 1024
"""`SpaceWatch` looks at the free space after this many bytes at most (more often as it shrinks)."""


def free_bytes(folder: os.PathLike[str] | str) -> int | None:
    """Bytes an unprivileged writer may still use on `folder`'s file system, or None if unknown."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on this platform, or the folder is gone
        return None
    return st.f_bavail * st.f_frsize


def needed_bytes(folder: os.PathLike[str] | str, sizes: Mapping[str, int], *, staged: bool = False) -> int:
    """Bytes that writing `sizes` (output name -> size) into `folder` takes.

    Each size is rounded up to the file system's block; files now under those names are freed when
    their replacement is renamed over them, so what they occupy is subtracted, except the largest
    (it and its replacement coexist while that one is written); not when the outputs are `staged`
    (all made beside the old ones before any moves). A margin for the state file is added.
    """
    folder = Path(folder)
    try:
        block = max(os.statvfs(folder).f_frsize, 1)
    except (OSError, AttributeError):
        block = 4096
    total = STATE_SLACK
    replaced: list[int] = []
    for name, size in sizes.items():
        total += -(-max(size, 0) // block) * block
        try:
            st = os.lstat(folder / name)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            replaced.append(getattr(st, "st_blocks", 0) * 512 or st.st_size)
    if replaced and not staged:
        total -= sum(replaced) - max(replaced)
    return max(total, 0)


def check_free(folder: os.PathLike[str] | str, needed: int, what: str) -> None:
    """Refuse when `folder`'s file system has fewer than `needed` bytes free.

    Args:
        what: what the bytes are for, as it reads after "needed for" (`5 outputs`).

    Raises:
        `NoSpaceError`: one line with both figures, e.g. `not enough free space in out: 12.3 GiB
            needed for 5 outputs, 4.1 GiB free` (exit code 2 in the CLI).
    """
    if needed <= 0 or env_flag(ENV_SKIP_SPACE_CHECK):
        return
    free = free_bytes(folder)
    if free is None or free >= needed:
        return
    raise NoSpaceError(
        f"not enough free space in {os.fspath(folder)}: {human_bytes(needed)} needed for {what}, "
        f"{human_bytes(free)} free",
        path=folder,
        expected=needed,
        actual=free,
    )


class SpaceWatch:
    """The free space of an output's file system, checked as the output is written (its size is
    not known in advance): `wrote(n)` after each write raises `NoSpaceError` once less than
    `STATE_SLACK` is left, the room the records written after the outputs need.

    Checks come every `WATCH_BYTES` at most, and more often as the free space shrinks (after half
    of what is left above the slack), so that the refusal comes before the disk is full.
    """

    def __init__(self, folder: os.PathLike[str] | str, name: str, shown_as: os.PathLike[str] | str) -> None:
        self.folder, self.name, self.shown_as = folder, name, shown_as
        self.written = 0
        self._next = 0
        self._skip = env_flag(ENV_SKIP_SPACE_CHECK)

    def wrote(self, n: int) -> None:
        """Count `n` bytes written; check the free space when due.

        Raises:
            `NoSpaceError`: less than `STATE_SLACK` is free.
        """
        self.written += n
        if self._skip or self.written < self._next:
            return
        free = free_bytes(self.folder)
        if free is None:
            self._skip = True
            return
        if free < STATE_SLACK:
            raise self.error(free)
        self._next = self.written + max(min(WATCH_BYTES, (free - STATE_SLACK) // 2), 4096)

    def error(self, free: int | None = None) -> NoSpaceError:
        """The error for having run out of room (also when a write failed with ENOSPC)."""
        free = free_bytes(self.folder) if free is None else free
        left = f", {human_bytes(free)} free" if free is not None else ""
        return NoSpaceError(
            f"not enough free space in {os.fspath(self.shown_as)}: the disk filled up while writing "
            f"{self.name}{left} (a compressed output's size is known only as it is written; the partial "
            "file is removed): free some space or choose another `out`, and run again",
            path=self.shown_as,
            actual=free,
        )


def check_outputs(folder: os.PathLike[str] | str, sizes: Mapping[str, int], *, staged: bool = False) -> None:
    """`check_free` for the outputs `sizes` (name -> size) still to write into `folder`."""
    if not sizes:
        return
    n = len(sizes)
    check_free(folder, needed_bytes(folder, sizes, staged=staged), f"{n} output{'s' if n != 1 else ''}")
