"""What the pipeline says of each output it made or kept."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class FileReport:
    """How one output file was made and what was proven about it."""

    name: str
    action: Literal["xor", "copy"]
    size: int
    """Bytes written."""
    compressed: bool = False
    """The payload was (decode) or is (encode) a gzip stream."""
    data_size: int | None = None
    """An encode's gzip payload: the bytes before compression (the fine-tuned file's size)."""
    base_size: int | None = None
    digests: Mapping[str, str] = field(default_factory=dict)
    """Digests of the output file's bytes."""
    input_digests: Mapping[str, str] = field(default_factory=dict)
    """Digests of the input the output is made from (payload, or fine-tuned file)."""
    base_digests: Mapping[str, str] = field(default_factory=dict)
    verified: bool = False
    """The output matched a published digest."""
    base_verified: bool = False
    """The base file matched a published digest."""
    kept: bool = False
    """The output was already in place (an earlier run made it, or it matched its digest)."""

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("digests", "input_digests", "base_digests"):
            d[k] = dict(d[k])
        return d
