"""What a command asks of the pipeline: a plan of steps, one per output file.

A step names its output, the source of its data (payload or fine-tuned file), the source of its
base (None: the data is copied), the digests expected of each, and what the sink does. Formats
and commands only build plans; `pipeline.run` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..checksums import FileDigest
from ..reports import FileReport
from ..sources import Source

Verb = Literal["decode", "encode", "base"]
"""What the outputs are: decoded files (checked for plausibility when no digest vouches for
them), payload files (their inputs' digests recorded for the manifest), or generated base files
(a mismatch is a `BaseMismatchError`)."""


@dataclass(frozen=True)
class Sink:
    """What happens to the bytes on their way to the output file."""

    gzip_mtime: int | None = None
    """Written as a gzip stream (the legacy `--compress`) with this header time; None: plain."""
    hash_written: tuple[str, ...] = ()
    """Digests of the bytes written (after gzip)."""
    refuse_gzip_head: bool = False
    """A plain legacy payload file may not begin with the gzip magic bytes (it would be misread)."""


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


Reuse = Callable[[], "Sequence[FileReport] | None"]
Confirm = Callable[[Step, Path], bool]
"""Whether an output in place that was hashed (its stamps changed) and matched its record may be
kept: a plan's own check beyond the record's digests (a delta's tensor digests)."""
Finish = Callable[["Sequence[FileReport]", bool], None]


@dataclass(frozen=True)
class Plan:
    """Every output of one command, and how the output folder is handled."""

    steps: tuple[Step, ...]
    out_dir: Path
    verb: Verb
    release: str = ""
    """What the expected digests come from, for messages (a release, or a manifest's path)."""
    force: bool = False
    """Replace files in the way that no run of ours made."""
    rehash: bool = False
    """Hash outputs already in place even when their records say they are unchanged."""
    payload_folder: bool = False
    """The folder gets published as it is: its records live in a hidden folder inside it."""
    staged: bool = False
    """Outputs are made in the hidden staging folder, then moved into place together."""
    preflight: Callable[[Sequence[Step]], None] | None = None
    """Called with the steps still to run, before any runs: checks (a base proof, the Hub's sha256)."""
    retire: tuple[str, ...] = ()
    """Files of a staged plan's folder removed just before the staged outputs move into place (a
    finished folder's record, which `finish` writes again last: a half-made folder never passes
    for a finished one)."""
    approve: Callable[[Path, Sequence[FileReport]], None] | None = None
    """A staged plan's last check: called with the staging folder and every file's report once all
    are made, before any moves into place; what it raises discards them."""
    reuse: Reuse | None = None
    """Called first, under the lock: the reports of a finished output folder to keep whole, or None."""
    confirm: Confirm | None = None
    """Called for each output in place that was hashed and matched its record, under the lock:
    False makes it again (see `Confirm`)."""
    finish: Finish | None = None
    """Called last, under the lock, with every file's report and whether `reuse` supplied them."""
