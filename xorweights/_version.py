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


def installed_from() -> dict[str, object] | None:
    """Where this xorweights was installed from when not from a package index (PEP 610's
    `direct_url.json`: a local folder, an editable checkout, a file, a git URL); None from an index."""
    import json
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        text = distribution("xorweights").read_text("direct_url.json")
        doc = json.loads(text) if text else None
    except (PackageNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("url"), str) else None
