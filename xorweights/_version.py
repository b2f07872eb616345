"""The installed xorweights version."""

from __future__ import annotations

import functools


@functools.cache
def version() -> str:
    """The installed distribution's version ("0+unknown" from a source tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("xorweights")
    except PackageNotFoundError:
        return "0+unknown"
