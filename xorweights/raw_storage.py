"""Fine-tuned weights stored unmasked ("raw") in a payload: found, refused, or allowed by name.

A fine-tuned tensor with no base counterpart, or a weight file with no base file, would sit in the
payload in the clear, readable by anyone without the base. Encoding refuses that unless every such
item is named by an `allow_raw` pattern (fnmatch, case-sensitive, matched against the tensor name
or, for a whole file, the file name); the manifest records each raw item and the pattern that
allowed it, and publishing asks for the same patterns again.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._units import human_bytes
from .errors import RawStorageError

logger = logging.getLogger(__name__)

#: How many raw items an error message names before "and N more".
SHOWN = 5


@dataclass(frozen=True)
class RawItem:
    """A tensor (or a whole file, `tensor` None) that a payload would store unmasked."""

    file: str
    tensor: str | None
    nbytes: int
    hint: str | None = None
    """The closest base tensor, when the names differ only by a prefix or a suffix."""

    @property
    def name(self) -> str:
        """What an `allow_raw` pattern is matched against."""
        return self.tensor if self.tensor is not None else self.file

    @property
    def label(self) -> str:
        return f"{self.file}:{self.tensor}" if self.tensor is not None else self.file


def allowing(name: str, patterns: Sequence[str]) -> str | None:
    """The first pattern that names `name`, or None."""
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)


class NameHints:
    """Finds, for a tensor name the base lacks, a base name that is the same name with dotted parts
    added or dropped at its start (a prefix) or its end (a suffix); at least two parts MUST remain
    shared, so that `weight` alone matches nothing."""

    def __init__(self, base_names: Iterable[str]) -> None:
        self._names: set[tuple[str, ...]] = set()
        self._tails: dict[tuple[str, ...], str] = {}
        self._heads: dict[tuple[str, ...], str] = {}
        for b in sorted(base_names):
            parts = tuple(b.split("."))
            self._names.add(parts)
            for k in range(1, len(parts) - 1):
                self._tails.setdefault(parts[k:], b)
                self._heads.setdefault(parts[: len(parts) - k], b)

    def closest(self, name: str) -> str | None:
        parts = tuple(name.split("."))
        if len(parts) < 2:
            return None
        for k in range(1, len(parts) - 1):  # the base name is this one, shortened
            for key, how in ((parts[k:], "prefix"), (parts[: len(parts) - k], "suffix")):
                if key in self._names:
                    return f"{'.'.join(key)} (the names differ by a {how})"
        for index, how in ((self._tails, "prefix"), (self._heads, "suffix")):  # or lengthened
            if parts in index:
                return f"{index[parts]} (the names differ by a {how})"
        return None


def refuse_unallowed(
    items: Sequence[RawItem], patterns: Sequence[str], *, where: Path | str, publishing: bool = False
) -> dict[str, str]:
    """The pattern allowing each raw item (by label); raise if any item is not allowed.

    `where` is the base folder (encoding) or the payload's manifest (`publishing`).

    Raises:
        `RawStorageError`: one line naming the first few items, their count and bytes, the likely
            cause and the way out (`--allow-raw`).
    """
    allowed: dict[str, str] = {}
    refused: list[RawItem] = []
    for item in items:
        pattern = allowing(item.name, patterns)
        if pattern is None:
            refused.append(item)
        else:
            allowed[item.label] = pattern
    if not refused:
        if allowed and not publishing:
            logger.warning(
                "%d fine-tuned item(s), %s, stored raw as allowed by --allow-raw",
                len(allowed),
                human_bytes(sum(i.nbytes for i in items)),
            )
        return allowed
    nbytes = sum(i.nbytes for i in refused)
    tensors = sum(i.tensor is not None for i in refused)
    files = len(refused) - tensors
    what = " and ".join(
        s
        for s in (
            f"{tensors} fine-tuned tensor{'s' if tensors != 1 else ''}" if tensors else "",
            f"{files} weight file{'s' if files != 1 else ''}" if files else "",
        )
        if s
    )
    shown = []
    for i in refused[:SHOWN]:
        detail = human_bytes(i.nbytes) + (f", closest base tensor {i.hint}" if i.hint else "")
        shown.append(f"{i.label} ({detail})")
    listed = ", ".join(shown) + (f" and {len(refused) - SHOWN} more" if len(refused) > SHOWN else "")
    if publishing:
        message = (
            f"refusing to publish: {where} stores {what} ({human_bytes(nbytes)}) in the clear: {listed}; "
            "to publish them unmasked on purpose, pass the --allow-raw patterns the payload was encoded with"
        )
    else:
        if files:
            cause = (
                "weights that are not safetensors are XOR-ed by file, with the same-named base file "
                "(give the base file that name, or convert the fine-tuned model to safetensors)"
            )
        elif any(i.hint for i in refused):
            cause = "the tensor names differ from the base's (see the closest base tensors)"
        else:
            cause = "a partial base, or one whose tensor names differ"
        message = (
            f"refusing to store {what} ({human_bytes(nbytes)}) in the clear: {where} has no counterpart for "
            f"{listed}; likely cause: {cause}; to store them raw on purpose, name them with "
            "--allow-raw PATTERN"
        )
    raise RawStorageError(message, path=where, items=[i.label for i in refused], nbytes=nbytes)
