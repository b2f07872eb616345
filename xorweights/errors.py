"""Typed errors of xorweights.

Every error derives from `XorWeightsError` and from the builtin it resembles, so callers may catch
either. Each carries `path`, and `expected`/`actual` where a comparison failed.
"""

from __future__ import annotations

import os


class XorWeightsError(Exception):
    """Base class of every error raised by xorweights."""

    def __init__(
        self,
        message: str,
        *,
        path: os.PathLike[str] | str | None = None,
        expected: object = None,
        actual: object = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        return self.message


# Bad input: exit code 2 in the CLI.


class InputError(XorWeightsError, ValueError):
    """An input is unusable: wrong layout, unknown format, bad arguments."""


class MissingFileError(XorWeightsError, FileNotFoundError):
    """A file that the operation needs does not exist."""


class FormatError(XorWeightsError, ValueError):
    """A file's content is not in the format it must be in."""


class UnknownReleaseError(XorWeightsError, LookupError):
    """A release name matches no manifest in `checksums/`."""


class OutputExistsError(XorWeightsError, FileExistsError):
    """The destination holds a file that is not ours to overwrite."""


# Verification failures: exit code 1 in the CLI.


class ChecksumMismatchError(XorWeightsError, ValueError):
    """A file's digest differs from the published one.

    Attributes: `path`, `expected`, `actual`, `algorithm` and `stage` (`hf_base`, `decoded`, ...).
    """

    def __init__(
        self,
        message: str,
        *,
        path: os.PathLike[str] | str | None = None,
        expected: str | None = None,
        actual: str | None = None,
        algorithm: str | None = None,
        stage: str | None = None,
    ) -> None:
        super().__init__(message, path=path, expected=expected, actual=actual)
        self.algorithm = algorithm
        self.stage = stage


class BaseMismatchError(ChecksumMismatchError):
    """A base file is not the byte-exact file the release was made against."""
