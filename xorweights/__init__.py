"""xorweights: distribute fine-tuned weights as XOR payloads, rebuild and verify them.

The public names are imported on first use (PEP 562), so that `import xorweights.cli` costs
almost nothing before the CLI installs its signal handlers; `from xorweights import decode`
works as before.
"""

from __future__ import annotations

import importlib
import logging

# The library logs and never prints: without an application's logging configuration, its records
# (the Hub's fallback warnings among them) go nowhere, not to stderr through logging.lastResort.
logging.getLogger(__name__).addHandler(logging.NullHandler())

TYPE_CHECKING = False  # not `typing`'s: importing typing would cost more than this whole module
if TYPE_CHECKING:
    from typing import Any

    from .checksums import (
        ChecksumManifest,
        ChecksumReport,
        FileDigest,
        Mismatch,
        VerifyReport,
        checksum,
        known_releases,
        load_checksums,
        verify,
    )
    from .decoding import decode
    from .encoding import encode
    from .errors import (
        BaseMismatchError,
        ChecksumMismatchError,
        FormatError,
        HubError,
        ImplausibleOutputError,
        IncompatibleBaseError,
        InputError,
        MissingFileError,
        NotAPayloadError,
        OutputExistsError,
        PayloadMismatchError,
        RawStorageError,
        UnknownReleaseError,
        XorWeightsError,
    )
    from .hub import PublishReport, publish
    from .loading import iter_tensors, load_state_dict
    from .reports import DecodeReport, EncodeReport, FileReport

    __version__: str

#: Each public name and the module that defines it.
_MODULES = {
    **dict.fromkeys(
        (
            "ChecksumManifest",
            "ChecksumReport",
            "FileDigest",
            "Mismatch",
            "VerifyReport",
            "checksum",
            "known_releases",
            "load_checksums",
            "verify",
        ),
        "checksums",
    ),
    **dict.fromkeys(("DecodeReport", "EncodeReport", "FileReport"), "reports"),
    "decode": "decoding",
    "encode": "encoding",
    **dict.fromkeys(
        (
            "BaseMismatchError",
            "ChecksumMismatchError",
            "FormatError",
            "HubError",
            "ImplausibleOutputError",
            "IncompatibleBaseError",
            "InputError",
            "MissingFileError",
            "NotAPayloadError",
            "OutputExistsError",
            "PayloadMismatchError",
            "RawStorageError",
            "UnknownReleaseError",
            "XorWeightsError",
        ),
        "errors",
    ),
    **dict.fromkeys(("iter_tensors", "load_state_dict"), "loading"),
    **dict.fromkeys(("PublishReport", "publish"), "hub"),
}

__all__ = [
    "__version__",
    "decode",
    "encode",
    "publish",
    "load_state_dict",
    "iter_tensors",
    "verify",
    "checksum",
    "load_checksums",
    "known_releases",
    "ChecksumManifest",
    "FileDigest",
    "DecodeReport",
    "EncodeReport",
    "FileReport",
    "VerifyReport",
    "ChecksumReport",
    "Mismatch",
    "PublishReport",
    "XorWeightsError",
    "InputError",
    "MissingFileError",
    "FormatError",
    "UnknownReleaseError",
    "OutputExistsError",
    "ChecksumMismatchError",
    "BaseMismatchError",
    "PayloadMismatchError",
    "ImplausibleOutputError",
    "RawStorageError",
    "NotAPayloadError",
    "IncompatibleBaseError",
    "HubError",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use, and keep the name here."""
    if name == "__version__":
        from ._version import version

        value: Any = version()
    elif name in _MODULES:
        value = getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
