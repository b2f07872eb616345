"""The one progress bar wrapper: bytes on stderr, silenced by `quiet` or the environment."""

from __future__ import annotations

import sys
from typing import Any

from .constants import ENV_DISABLE_PROGRESS_BARS, env_flag


class _NullBar:
    """Stands in for a bar when progress is off."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def byte_bar(total: int | None, desc: str, *, enabled: bool) -> Any:
    """A tqdm bar counting bytes, or a no-op when disabled by the caller or the environment.

    Thread-safe: tqdm locks its updates, so several jobs may share one bar.
    """
    if not enabled or env_flag(ENV_DISABLE_PROGRESS_BARS):
        return _NullBar()
    from tqdm.auto import tqdm  # lazy: the library does not need tqdm unless asked for progress

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )
