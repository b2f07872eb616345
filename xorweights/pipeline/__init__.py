"""One path for every command: a plan of steps in, verified outputs committed.

`plan` holds the types a command builds (`Plan`, `Step`, `Sink`); `run` runs them (the only
place that opens an output folder); `job` makes one output; `resume` decides what is kept.
"""

from .job import output_digests
from .plan import PLAIN, Plan, Sink, Step
from .run import Options, Outcome, run

__all__ = ["PLAIN", "Options", "Outcome", "Plan", "Sink", "Step", "output_digests", "run"]
