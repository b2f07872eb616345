"""What a command asks of the pipeline: a plan of steps, one per output file, and how they commit.

A step names its output, the source of its data (payload or fine-tuned file), the source of its
base (None: the data is copied), the digests expected of each, and what the sink does. How the
outputs reach their names is one value: `Immediate` (each renamed into place once made and
verified) or `Staged` (all made in a staging folder, checked together, moved into place, then the
plan's sidecar files written last). Codecs only build plans; `pipeline.run` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from ..checksum_types import FileDigest
from .report import FileReport
from .source import Source

Verb = Literal["decode", "encode", "base"]
"""What the outputs are: decoded files (checked for plausibility when no digest vouches for
them), payload files (their inputs' digests recorded for the manifest), or generated base files
(a mismatch is a `BaseMismatchError`)."""


@dataclass(frozen=True)
class Sink:
    """What happens to the bytes on their way to the output file."""

    wrap: Callable[[BinaryIO], BinaryIO] | None = None
    """The writer the pass writes through (closed at the end of the pass), e.g. a gzip stream; the
    output's digests are then of the bytes it writes (`hash_written`). None: written as they are."""
    hash_written: tuple[str, ...] = ()
    """Digests of the bytes written (after `wrap`)."""
    check: Callable[[Path], None] | None = None
    """The format's last word on the finished temporary file, before it is committed (raises)."""


PLAIN = Sink()


@dataclass(frozen=True)
class Step:
    """One output file and how it is made."""

    name: str
    data: Source
    base: Source | None = None
    """None: the output is a copy of the data."""
    expect_base: FileDigest | None = None
    expect_out: FileDigest | None = None
    sink: Sink = PLAIN
    hash_inputs: tuple[str, ...] = ()
    """Digests of the data and of a base file taken in the pass (an encode's manifest needs them)."""
    options: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """More of what the output's bytes depend on, recorded with its inputs (e.g. gzip options)."""
    cause: str | None = None
    """Why the output would be wrong, when the step knows better than the generic message."""
    masked: bool = False
    """The data is masked by a base read inside its source (a compressed native payload): an XOR
    step although it has no separate base."""

    @property
    def action(self) -> Literal["xor", "copy"]:
        return "xor" if self.base is not None or self.masked else "copy"

    def inputs(self) -> dict[str, tuple[int, int]]:
        """What identifies the step's inputs in the output folder's records."""
        ids = {"payload": self.data.identity()}
        if self.base is not None:
            ids["base"] = self.base.identity()
        return {**ids, **self.options}


Keep = Callable[[Step, Path], bool]
"""Whether an output in place that was hashed (its stamps changed) and matched its record may be
kept: a plan's own check beyond the record's digests (a delta's tensor digests)."""


@dataclass(frozen=True)
class Immediate:
    """Each output is renamed into place as soon as it is complete and verified."""

    keep: Keep | None = None


@dataclass(frozen=True)
class Sidecars:
    """Files written last, through the folder's journal, from every output's report: what describes
    the outputs (a manifest, a seal). The files of these names are removed before any staged output
    moves into place, so a half-made folder never passes for a finished one."""

    names: tuple[str, ...]
    make: Callable[[Sequence[FileReport], bool], Mapping[str, bytes]]
    """Called with every file's report and whether `Staged.reuse` supplied them; returns the files
    to write (a name of `names` it leaves out stays as it is)."""


@dataclass(frozen=True)
class Staged:
    """The outputs are made in the hidden staging folder, checked together, moved into place
    together, then the sidecars are written."""

    check: Callable[[Path, Sequence[FileReport]], None] | None = None
    """Called with the staging folder and every file's report once all are made, before any moves
    into place; what it raises discards them."""
    sidecars: Sidecars | None = None
    reuse: Callable[[], Sequence[FileReport] | None] | None = None
    """Called first, under the lock: the reports of a finished output folder to keep whole, or None."""
    keep: Keep | None = None


Commit = Immediate | Staged


@dataclass(frozen=True)
class Plan:
    """Every output of one command, and how the output folder is handled."""

    steps: tuple[Step, ...]
    out_dir: Path
    verb: Verb
    commit: Commit = Immediate()
    release: str = ""
    """What the expected digests come from, for messages (a release, or a manifest's path)."""
    force: bool = False
    """Replace files in the way that no run of ours made."""
    rehash: bool = False
    """Hash outputs already in place even when their records say they are unchanged."""
    published: bool = False
    """The folder gets published as it is (a payload): a staged run's records are removed once it is
    finished (its manifest then says what it holds), and a failed one's that no output needs."""
    preflight: Callable[[Sequence[Step]], None] | None = None
    """Called with the steps still to run, before any runs: checks (a base proof, the Hub's sha256)."""
    plausible: Callable[[Path, str], str | None] | None = None
    """For a decode: why the finished temporary file is not what its name says, or None; asked of
    outputs no digest vouches for."""
