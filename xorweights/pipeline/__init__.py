"""One path for every command: a plan of steps in, verified outputs committed.

`plan` holds the types a codec builds (`Plan`, `Step`, `Sink`, and how outputs commit:
`Immediate` or `Staged`); `source` what a step reads; `run` runs a plan (the only place that opens
an output folder); `job` makes one output; `resume` decides what is kept. The pipeline knows no
format: a source words its own failures, a plan brings its own checks.
"""

from .job import output_digests
from .plan import PLAIN, Immediate, Plan, Sidecars, Sink, Staged, Step
from .report import FileReport
from .run import Options, Outcome, run
from .source import BytesSource, FileSource, Source

__all__ = [
    "PLAIN",
    "BytesSource",
    "FileReport",
    "FileSource",
    "Immediate",
    "Options",
    "Outcome",
    "Plan",
    "Sidecars",
    "Sink",
    "Source",
    "Staged",
    "Step",
    "output_digests",
    "run",
]
