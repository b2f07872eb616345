"""Typed errors of xorweights.

Every error derives from `XorWeightsError` and from the builtin it resembles, so callers may catch
either. Each carries `path`, and `expected`/`actual` where a comparison failed.
"""

from __future__ import annotations

import os
from typing import Literal, get_args


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


class UnsafePathError(XorWeightsError, ValueError):
    """A name or link from outside would reach beyond the folder it belongs to."""


class NotRegularFileError(UnsafePathError):
    """A file to be read is a FIFO, a device, a socket or a folder: refused before any read (a FIFO
    would block, a device never end)."""


class FileTooLargeError(FormatError):
    """A file is larger than any file of its kind may be; refused unread. `expected` is the bound in
    bytes, `actual` the file's size."""


class FolderLockedError(XorWeightsError, BlockingIOError):
    """Another xorweights process is writing into the same folder."""


class IOFailure(XorWeightsError, OSError):
    """A read or write failed: the message names the operation and the path.

    Attributes: `path`, `op` (`reading`, `writing`, ...), `errno` and `strerror` of the cause.
    """

    def __init__(self, op: str, path: os.PathLike[str] | str, cause: OSError) -> None:
        reason = cause.strerror or str(cause)
        super().__init__(f"{op} {os.fspath(path)}: {reason}", path=path)
        self.op = op
        self.errno = cause.errno
        self.strerror = reason


class InputChangedError(IOFailure):
    """An input file changed while it was being read (its size, or its sha256 since it was planned)."""

    def __init__(
        self, path: os.PathLike[str] | str, expected: int | str, actual: int | str, *, measure: str = "size"
    ) -> None:
        seen = (
            f"size {expected} at the start, {actual} bytes read"
            if measure == "size"
            else f"{measure} {expected} when planned, {actual} when read"
        )
        XorWeightsError.__init__(
            self,
            f"reading {os.fspath(path)}: it changed while being read ({seen}); is something else writing it?",
            path=path,
            expected=expected,
            actual=actual,
        )
        self.op = "reading"
        self.errno = None
        self.strerror = "changed while being read"


class RawStorageError(InputError):
    """Encoding or publishing would put fine-tuned tensors or files in the payload unmasked.

    Attributes: `items` (the tensors or files, `file:tensor` or `file`) and `nbytes` (their bytes).
    """

    def __init__(self, message: str, *, path: os.PathLike[str] | str, items: list[str], nbytes: int) -> None:
        super().__init__(message, path=path)
        self.items = items
        self.nbytes = nbytes


class UnmaskedFrameError(RawStorageError):
    """A compressed payload file holds a tensor that `xorweights.json` masks by a base tensor in
    stored frames (its fine-tuned bytes as they are). `items` names `file:tensor` of each."""


class NotAPayloadError(InputError):
    """The folder given as the payload is not the kind its decode needs: its weight files are valid
    model files as they are (a model, or an additive delta given without `recipe`: nothing was
    XOR-ed), or it is an XOR payload given with `recipe`."""


class IncompatibleBaseError(InputError):
    """An additive delta and its base cannot belong together, told by their tensors before anything
    is added: the base lacks the delta's tensors, holds others, has other shapes or is another model
    (LLaMA-2 for a LLaMA-1 delta), or the recipe is not the delta's (a vocabulary it does not grow)."""


class NoSpaceError(InputError):
    """The output folder's file system has less free space than the outputs still to write need
    (checked before anything is written). `expected` is the bytes needed, `actual` the bytes free."""


class HubError(XorWeightsError, OSError):
    """The Hub (or its cache, offline) cannot provide a repo: not found, no access, unreachable."""


# Verification failures: exit code 1 in the CLI.


#: Where a mismatch was found, a closed vocabulary: the stages a release publishes checksums for
#: (`meta_original`, `hf_base`, `decoded`; `checksum_types.STAGES`), `base` (a native payload's base
#: tensors and whole base files, proven against `xorweights.json`) and `payload` (a payload file
#: against its manifest or the digest the Hub reports).
Stage = Literal["meta_original", "hf_base", "decoded", "base", "payload"]
STAGE_NAMES: tuple[str, ...] = get_args(Stage)


class ChecksumMismatchError(XorWeightsError, ValueError):
    """A file's digest differs from the published one.

    Attributes: `path`, `expected`, `actual`, `algorithm` and `stage` (one of `STAGE_NAMES`).
    """

    def __init__(
        self,
        message: str,
        *,
        path: os.PathLike[str] | str | None = None,
        expected: str | None = None,
        actual: str | None = None,
        algorithm: str | None = None,
        stage: Stage | None = None,
    ) -> None:
        if stage is not None and stage not in STAGE_NAMES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_NAMES)}")
        super().__init__(message, path=path, expected=expected, actual=actual)
        self.algorithm = algorithm
        self.stage = stage


class BaseMismatchError(ChecksumMismatchError):
    """A base file is not the byte-exact file the release was made against."""


class ImplausibleOutputError(ChecksumMismatchError):
    """A decoded file with no published digest is not what its name says (a `.json` that does not
    parse, a safetensors file whose header does not tile its data, a zip with no central directory):
    the payload and the base do not belong together. (A payload folder that is a plain model is a
    `NotAPayloadError`: bad input, found before anything is decoded.)"""


class PayloadMismatchError(ChecksumMismatchError):
    """A downloaded payload file differs from the digest the Hub reports for it."""
