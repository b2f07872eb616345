"""Resume: which outputs already in place are kept, which are made, and which are in the way."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._display import abridged
from ..errors import OutputExistsError, XorWeightsError
from ..hashing import hash_file as hash_path
from ..outfolder.folder import STATE_DIGEST, Done, OutputFolder
from ..outfolder.paths import check_not_escaping_link
from .job import same_output
from .plan import Keep, Step
from .report import FileReport

logger = logging.getLogger(__name__)

Inputs = Mapping[str, tuple[int, int]]


def _keep(
    folder: OutputFolder,
    step: Step,
    inputs: Inputs,
    want: Mapping[str, str],
    size: int | None,
    *,
    force: bool,
    rehash: bool,
    also: Sequence[str] = (),
    confirm: Keep | None = None,
) -> Done | None:
    """The record of an output in place that can be kept, else None (it is made again).

    Kept unread: what an earlier run recorded and nothing has touched since (`OutputFolder.kept`;
    never with `rehash`). Otherwise the file is hashed and kept if it matches its published
    digests or, with none, the digests recorded from the same inputs (and `confirm` agrees). With
    `rehash`, a CRC-32 alone proves nothing (a deliberate edit can be made to match it): an output
    with no published or recorded md5/sha256 is made again from its sources in memory and kept
    only if byte-identical. A file no run recorded is hashed only against published digests, and
    not with `force`; it is hashed for `also` too (the digests its record must hold).
    """
    name = step.name
    if not rehash:
        done = folder.kept(name, inputs, want, size)
        if done is not None:
            return done
    record = folder.done.get(name)
    if record is None and (force or not want):
        return None
    compare = dict(want) or (dict(record.digests) if record and dict(record.inputs) == dict(inputs) else {})
    final = folder.path / name
    st = os.lstat(final) if final.is_file() and not final.is_symlink() else None
    if not compare or st is None or (size is not None and st.st_size != size):
        return None
    algorithms = sorted({*compare, *also, STATE_DIGEST})
    if rehash and set(compare) <= {STATE_DIGEST}:
        got = _remade_in_memory(step, final, algorithms)
        if got is None:
            logger.warning("%s: differs from what its sources make; making it again", name)
            return None
    else:
        got = hash_path(final, algorithms)
        if any(got[a] != d for a, d in compare.items()):
            if record is not None:
                source = "published" if want else "recorded"
                logger.warning("%s: no longer matches its %s digests; making it again", name, source)
            return None
        if confirm is not None and not confirm(step, final):
            return None
    return folder.record(name, got, inputs, record.sources if record is not None else None)


def _remade_in_memory(step: Step, final: Path, algorithms: Sequence[str]) -> dict[str, str] | None:
    """`same_output`, with a failure to make the output counted as a difference (making it for
    real then reports the failure)."""
    try:
        return same_output(step, final, algorithms)
    except (XorWeightsError, OSError) as e:
        logger.debug("%s: could not be made again to compare (%s)", step.name, e)
        return None


def _complete(done: Done, step: Step) -> bool:
    """Whether a kept output's record holds every digest the run reports for it (an encode's
    manifest needs the digests of what the payload file was made from)."""
    have = [(done.digests, step.sink.hash_written), (done.sources.get("data", {}), step.hash_inputs)]
    if step.base is not None and step.base.path is not None:
        have.append((done.sources.get("base", {}), step.hash_inputs))
    return all(a in d for d, want in have for a in want)


def triage(
    steps: Sequence[Step],
    inputs: Mapping[str, Inputs],
    folder: OutputFolder,
    *,
    force: bool,
    rehash: bool,
    confirm: Keep | None = None,
) -> tuple[list[Step], list[FileReport]]:
    """Split the steps into those to run and outputs already in place that can be kept.

    Kept (see `_keep`): outputs a previous run recorded and nothing touched since, and outputs
    that hash to their expected (or, for ours, recorded) digests; with `rehash`, every output is
    hashed (one with only a CRC-32 to meet is made again in memory and compared). Files in the
    way that are neither ours nor proven are refused unless `force`; a symlink out of the folder
    is always refused.

    Raises:
        `OutputExistsError`: files in the way (all named), before anything is written.
    """
    todo: list[Step] = []
    kept: list[FileReport] = []
    taken: list[str] = []
    for step in steps:
        final = folder.path / step.name
        check_not_escaping_link(final, folder.path)
        want = step.expect_out
        digests = {a: want.get(a) or "" for a in want.algorithms()} if want is not None else {}
        size = want.size if want is not None else None
        done = _keep(
            folder,
            step,
            inputs[step.name],
            digests,
            size,
            force=force,
            rehash=rehash,
            also=step.sink.hash_written if step.sink.wrap is None else (),
            confirm=confirm,
        )
        if done is not None and _complete(done, step):
            logger.info("%s: already in place and %s; kept", step.name, "verified" if digests else "complete")
            kept.append(_kept_report(step, done, verified=bool(digests)))
            continue
        if (final.exists() or final.is_symlink()) and not folder.is_ours(step.name) and not force:
            taken.append(step.name)
        todo.append(step)
    if taken:
        expected = any(s.expect_out is not None for s in steps)
        raise OutputExistsError(
            f"{folder.path} already holds {abridged(taken)}, not made by xorweights"
            + (" and not matching the published checksums" if expected else "")
            + "; refusing to overwrite (use `force=True`)",
            path=folder.path / taken[0],
        )
    return todo, kept


def _kept_report(step: Step, done: Done, *, verified: bool) -> FileReport:
    return FileReport(
        name=step.name,
        action=step.action,
        size=done.size,
        compressed=step.sink.wrap is not None,
        digests=dict(done.digests),
        input_digests=dict(done.sources.get("data", {})),
        base_digests=dict(done.sources.get("base", {})),
        verified=verified,
        kept=True,
    )
