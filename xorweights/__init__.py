"""xorweights: distribute fine-tuned weights as XOR payloads, rebuild and verify them."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xorweights")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

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
from .codec import DecodeReport, EncodeReport, FileReport, decode, encode
from .errors import (
    BaseMismatchError,
    ChecksumMismatchError,
    FormatError,
    HubError,
    ImplausibleOutputError,
    InputError,
    MissingFileError,
    OutputExistsError,
    PayloadMismatchError,
    RawStorageError,
    UnknownReleaseError,
    XorWeightsError,
)
from .loading import iter_tensors, load_state_dict
from .publishing import PublishReport, publish

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
    "HubError",
]
