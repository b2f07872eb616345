"""Run a plan: the one place that opens an output folder.

Lock the folder and read its records, keep what can be kept, check free space and the plan's
pre-flight checks, run the remaining steps in parallel (largest first; the first failure stops the
others), and commit as the plan says: each output renamed into place only once complete and
verified (`Immediate`), or all made in the staging folder, checked, moved into place together and
followed by the plan's sidecar files (`Staged`), every file through the folder's journal.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from .. import _cancel
from .._cancel import Cancelled
from .._display import shown
from .._progress import byte_bar
from .._sizing import default_jobs
from ..errors import ImplausibleOutputError, IOFailure
from ..hashing import Crc32
from ..outfolder.atomic import STAGING_DIR, AtomicFile, fsync_dir, is_bookkeeping
from ..outfolder.folder import STATE_DIGEST, OutputFolder
from ..outfolder.space import SpaceWatch, check_outputs
from .engine import PIPELINE_DEPTH, PIPELINE_SLOTS
from .job import Job, run_job
from .plan import Plan, Sidecars, Staged, Step
from .report import FileReport
from .resume import Inputs, triage
from .source import sized_as_written, space_bound

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """How a plan is run (the same for every step)."""

    jobs: int | None = None
    progress: bool = False
    fsync: bool = True
    drop_cache: bool = False


@dataclass(frozen=True)
class Outcome:
    """What a run did: outputs made and outputs kept."""

    made: tuple[FileReport, ...]
    kept: tuple[FileReport, ...]
    sidecars: Mapping[str, bytes] = field(default_factory=dict)
    """The sidecar files this run wrote (a staged plan's), by name."""

    @property
    def files(self) -> list[FileReport]:
        return sorted([*self.made, *self.kept], key=lambda f: f.name)


def run(plan: Plan, options: Options = Options()) -> Outcome:
    """Make every output of `plan` in `plan.out_dir` (see the module docstring).

    Raises:
        `FolderLockedError`, `OutputExistsError`, `NoSpaceError`: before anything is written.
        `ChecksumMismatchError` (and its subclasses), `IOFailure`, `FormatError`: from a step; the
            output in question is discarded, others already committed stay (a rerun keeps them).
    """
    out_dir, commit = plan.out_dir, plan.commit
    with OutputFolder(out_dir) as folder:
        found = commit.reuse() if isinstance(commit, Staged) and commit.reuse is not None else None
        if found is not None:
            logger.info("%s already holds this payload, made from the same inputs; kept", out_dir)
            outcome = Outcome((), tuple(found))
            if isinstance(commit, Staged) and commit.sidecars is not None:
                outcome = _write_sidecars(folder, commit.sidecars, outcome, reused=True, fsync=options.fsync)
        else:
            inputs = {s.name: s.inputs() for s in plan.steps}
            todo, kept = triage(
                plan.steps, inputs, folder, force=plan.force, rehash=plan.rehash, confirm=commit.keep
            )
            if isinstance(commit, Staged):
                outcome = _run_staged(plan, commit, options, folder, todo, kept, inputs)
            else:
                made = _make(plan, options, folder, todo, inputs)
                outcome = Outcome(tuple(made), tuple(kept))
        if isinstance(commit, Staged):
            if plan.published:  # its manifest now says what it holds: the records are done with
                folder.close_state()
                folder.drop_records()
            _remove(folder.own_dir / STAGING_DIR)
    return outcome


def _make(
    plan: Plan, options: Options, folder: OutputFolder, todo: Sequence[Step], inputs: Mapping[str, Inputs]
) -> list[FileReport]:
    """Check space and the pre-flight, then run the steps into `folder`."""
    staged = isinstance(plan.commit, Staged)
    check_outputs(plan.out_dir, {s.name: size_bound(s) for s in todo}, staged=staged)
    if plan.preflight is not None:
        plan.preflight(todo)
    jobs = [
        Job(
            step=s,
            out=folder.path / s.name,
            inputs=inputs[s.name],
            verb=plan.verb,
            release=plan.release,
            fsync=options.fsync,
            drop_cache=options.drop_cache,
            space=SpaceWatch(folder.path, s.name, plan.out_dir) if sized_as_written(s.data) else None,
            plausible=plan.plausible if plan.verb == "decode" else None,
        )
        for s in todo
    ]
    try:
        return _run_jobs(jobs, folder, options, desc=plan.verb)
    except ImplausibleOutputError:  # the pair is wrong: what it made without a digest is garbage too
        suspects = [s.name for s in todo if not (s.expect_out and s.expect_out.algorithms())]
        for name in folder.discard(suspects):
            logger.warning("%s: removed (made from the same payload and base, with no digest)", shown(name))
        raise


def _run_staged(
    plan: Plan,
    commit: Staged,
    options: Options,
    folder: OutputFolder,
    todo: list[Step],
    kept: list[FileReport],
    inputs: Mapping[str, Inputs],
) -> Outcome:
    """Make the outputs in the staging folder, check them, move them all into place, then write the
    sidecars."""
    staging = _fresh_staging(folder.own_dir)
    retire = commit.sidecars.names if commit.sidecars is not None else ()
    try:
        with OutputFolder(staging, own_dir=staging) as stage:
            # Staged files are ours whatever their records say (force): only complete ones are kept.
            todo, staged = triage(todo, inputs, stage, force=True, rehash=False)
            made = _make(plan, options, stage, todo, inputs)
            if commit.check is not None:
                commit.check(stage.path, [*kept, *staged, *made])
            _publish_staged(stage, folder, [*staged, *made], inputs, retire=retire)
            outcome = Outcome(tuple(made), (*kept, *staged))
            if commit.sidecars is not None:
                outcome = _write_sidecars(folder, commit.sidecars, outcome, reused=False, fsync=options.fsync)
    except Exception:  # a failure (not a kill or an interrupt): nothing half-made stays behind
        folder.close_state()
        # A published folder's records stay while they describe outputs in place: the next run
        # recognises those (say the disk filled while the manifest was written).
        if plan.published and not folder.has_records():
            folder.drop_records()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return outcome


def _write_sidecars(
    folder: OutputFolder, sidecars: Sidecars, outcome: Outcome, *, reused: bool, fsync: bool
) -> Outcome:
    """Write the plan's sidecar files last, each journaled before its rename and recorded after it
    (one in the folder's bookkeeping, like the records themselves, is only written)."""
    files = dict(sidecars.make(outcome.files, reused))
    for name, data in files.items():
        crc = Crc32()
        crc.update(data)
        digests = {STATE_DIGEST: crc.hexdigest()}
        journaled = not is_bookkeeping(name)
        if journaled:
            folder.intend(name, len(data), digests, {}, durable=fsync)
        try:
            with AtomicFile(folder.path / name, temp_dir=folder.own_dir) as f:
                f.write(data)
                f.commit(durable=fsync)
        except IOFailure:
            raise
        except OSError as e:
            raise IOFailure("saving", folder.path / name, e) from e
        if journaled:
            folder.record(name, digests, {})
    return Outcome(outcome.made, outcome.kept, files)


def size_bound(step: Step) -> int:
    """What an output may take, for the free-space check before anything is written: its expected
    size, else its data's own bound (see `source.space_bound`). An output `sized_as_written` counts
    nothing (any bound would refuse runs that fit): its writer watches the free space instead."""
    if sized_as_written(step.data):
        return 0
    if step.expect_out is not None and step.expect_out.size is not None:
        return step.expect_out.size
    return space_bound(step.data, step.base)


def _run_jobs(jobs: list[Job], folder: OutputFolder, options: Options, *, desc: str) -> list[FileReport]:
    """Run jobs in parallel, largest first; the first failure stops the others."""
    if not jobs:
        return []
    sizes = {j.step.name: j.step.data.size() or j.inputs["payload"][0] for j in jobs}
    jobs = sorted(jobs, key=lambda j: -sizes[j.step.name])
    stop = threading.Event()
    results: list[FileReport] = []
    errors: list[BaseException] = []
    workers = max(1, min(options.jobs or default_jobs(), len(jobs)))
    depth = max(2, min(PIPELINE_DEPTH, PIPELINE_SLOTS // workers))
    # An interrupt (or any exception here) sets the run's cancellation event: queued jobs are
    # dropped and the running ones stop at their next chunk, removing their temporaries.
    with (
        byte_bar(sum(sizes.values()), desc, enabled=options.progress) as bar,
        ThreadPoolExecutor(workers) as pool,
        _cancel.guard(pool),
    ):
        futures = [pool.submit(run_job, j, bar, stop, depth, folder) for j in jobs]
        try:
            _collect(futures, stop, results, errors)
        except BaseException:
            stop.set()
            raise
        # The futures hold the errors, and an error raised here holds this frame: drop them first.
        del futures
    if not errors:
        return results
    for extra in errors[1:]:
        logger.debug("also failed: %s", extra)
    error = errors[0]
    errors.clear()
    try:
        raise error
    finally:
        del error


def _collect(
    futures: list[Future[FileReport]],
    stop: threading.Event,
    results: list[FileReport],
    errors: list[BaseException],
) -> None:
    """Wait for the jobs: reports into `results`, failures into `errors`, where the first failure
    stops the others. Errors are taken, not raised, here (no frame of this loop joins their tracebacks)."""
    for fut in as_completed(futures):
        if fut.cancelled():
            continue
        error = fut.exception()
        if error is None:
            results.append(fut.result())
        elif not isinstance(error, Cancelled):
            if not errors:
                stop.set()
                for other in futures:  # queued jobs are not started
                    other.cancel()
            errors.append(error)


# --- the staging folder ------------------------------------------------------------------------


def _fresh_staging(own_dir: Path) -> Path:
    """The staging folder inside an output folder's `own_dir`. What a killed run staged there is
    kept: its records (the staging folder's own state file) say which staged files are complete and
    from which inputs."""
    staging = own_dir / STAGING_DIR
    try:
        if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
            staging.unlink()
        staging.mkdir(exist_ok=True)
    except OSError as e:
        raise IOFailure("preparing", staging, e) from e
    return staging


def _remove(staging: Path) -> None:
    try:
        shutil.rmtree(staging)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise IOFailure("removing", staging, e) from e


def _publish_staged(
    stage: OutputFolder,
    folder: OutputFolder,
    staged: Sequence[FileReport],
    inputs: Mapping[str, Inputs],
    *,
    retire: Sequence[str] = (),
) -> None:
    """Move finished outputs from the staging folder into place, each recorded in the folder's
    journal before its rename (a kill after it leaves a file the next run recognises) and dropped
    from the staging records after it; the files `retire` names are removed first."""
    try:
        for name in retire:
            (folder.path / name).unlink(missing_ok=True)
        for f in staged:
            sources = {"data": f.input_digests, "base": f.base_digests}
            folder.intend(f.name, f.size, f.digests, inputs[f.name], sources=sources)
            os.replace(stage.path / f.name, folder.path / f.name)
            folder.record(f.name, f.digests, inputs[f.name], sources)
            stage.discard([f.name])
        fsync_dir(folder.path)
    except OSError as e:
        raise IOFailure("saving the payload in", folder.path, e) from e
