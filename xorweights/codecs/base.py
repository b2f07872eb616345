"""The codec interface and its registry: one entry per payload format (`oasst`, `xorweights`) and
one for additive deltas, whose recipes have a registry of their own (`delta.recipes`).

A codec recognises its payloads, refuses the options that do not apply to it in its own words, and
plans: a decode (and an encode, where the format has one) is a `Planned` — the pipeline's `Plan`
and what to add to the report once it has run. `decode` and `encode` pick the codec, run its
plan, report; the pipeline never learns which codec it ran.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._display import abridged
from .._registry import Registry
from ..checksum_types import ChecksumManifest
from ..delta.decode import OutputFormat
from ..delta.registry import DeltaRelease
from ..errors import InputError, MissingFileError
from ..formats.legacy_source import PayloadCompression
from ..hub.base_repo import BaseWants
from ..model_files import WEIGHT_SUFFIXES
from ..pipeline import Options, Outcome, Plan
from ..tensor_manifest import TensorManifest


@dataclass(frozen=True)
class DecodeRequest:
    """Everything a decode was asked, once the payload is on disk (or streamed)."""

    payload_dir: Path
    base_dir: Path
    out_dir: Path
    options: Options = Options()
    checksums: ChecksumManifest | None = None
    force: bool = False
    verify: bool = False
    remote: Mapping[str, Any] = field(default_factory=dict)
    """Payload files read from the Hub as they are decoded (`--stream`), by name."""
    only: frozenset[str] | None = None
    """The payload files there are (a Hub download fetches only the payload's), or None: the folder's."""
    hub_check: Callable[[Sequence[str]], None] | None = None
    """Checks downloaded payload files against the Hub's sha256 before they are read."""
    source: str | None = None
    """Where the payload came from (a Hub repo at a commit), for the report."""
    payload_compression: PayloadCompression = "auto"
    gzip_backend: str = "zlib"
    base_mode: str = "auto"
    recipe: str | None = None
    release: DeltaRelease | None = None
    """The known delta release the payload or the checksums name."""
    expect: TensorManifest | None = None
    """A delta's per-tensor digests to meet."""
    output_format: OutputFormat = "safetensors"
    max_shard_bytes: int | None = None


@dataclass(frozen=True)
class EncodeRequest:
    """Everything an encode was asked."""

    src_dir: Path
    base_dir: Path
    out_dir: Path
    options: Options = Options()
    compress: str | None = None
    release: str | None = None
    with_checksums: bool = False
    force: bool = False
    gzip_mtime: int = 0
    allow_raw: Sequence[str] = ()
    base_name: str | None = None
    version: str = ""


@dataclass(frozen=True)
class Planned:
    """A codec's plan, and what the report gets once the plan has run (fields of the report)."""

    plan: Plan
    report: Callable[[Outcome], Mapping[str, Any]]


class Codec(Protocol):
    """One payload format (or the additive deltas), behind the one interface."""

    name: str
    compress_modes: tuple[str, ...]
    """What `encode(compress=...)` takes for this format (the first is the default); () : no encode."""

    def detect(self, payload_dir: Path) -> bool:
        """Whether `payload_dir` holds a payload of this format."""

    def check(self, request: DecodeRequest) -> None:
        """Refuse options that do not apply to this format (`InputError`, in its words)."""

    def plan_decode(self, request: DecodeRequest) -> Planned:
        """The decode's plan: every check that reads no payload bytes is done by now."""

    def plan_encode(self, request: EncodeRequest) -> Planned:
        """The encode's plan (a format without one raises `InputError`)."""

    def base_wants(self, request: DecodeRequest) -> BaseWants:
        """What the decode reads of its base (for a base on the Hub, fetched in part)."""


CODECS: Registry[Codec] = Registry("payload format")
"""The codec registry, by name (`register`)."""


def register(codec: Codec) -> Codec:
    """Add a codec to the registry (`InputError` for a name taken)."""
    return CODECS.add(codec.name, codec)


def codec(name: str) -> Codec:
    """The codec called `name` (`InputError` naming the known ones for another)."""
    return CODECS.find(name)


def encodable() -> tuple[str, ...]:
    """The formats `encode` can make."""
    return tuple(n for n, c in CODECS.items() if c.compress_modes)


def check_listed(
    published: ChecksumManifest,
    listed: Collection[str],
    decoded: Collection[str],
    names: set[str],
    where: Path,
) -> None:
    """The payload's outputs `names` are those the checksums describe: some of them listed (else a
    wrong release), and every `decoded` output among them (else an incomplete payload).

    Raises:
        `InputError`: no output is listed. `MissingFileError`: a listed output has no payload file.
    """
    weights = {n for n in names if n.endswith(WEIGHT_SUFFIXES)}
    if not set(listed) & (weights or names):
        raise InputError(
            f"none of the payload's {'weight ' if weights else ''}files "
            f"({abridged(sorted(weights or names), 3)}) is listed in the checksums of "
            f"{published.release}; wrong release?",
            path=published.path or published.release,
        )
    absent = sorted(set(decoded) - names)
    if absent:
        raise MissingFileError(
            f"the checksums of {published.release} list {len(absent)} outputs that {where} has no "
            f"payload file for ({abridged(absent, 3)}); an incomplete download or copy?",
            path=where / absent[0],
        )


def refuse_delta_options(request: DecodeRequest, what: str) -> None:
    """Refuse the options of a delta recovery for an XOR payload (`what`), which has its own files."""
    given = [
        f"`{name}`"
        for name, value in (
            ("output_format", request.output_format),
            ("max_shard_size", request.max_shard_bytes),
        )
        if value not in ("safetensors", None)
    ]
    if given:
        raise InputError(
            f"{request.payload_dir} is {what}: {' and '.join(given)} applies to an additive delta (`recipe`)",
            path=request.payload_dir,
        )
