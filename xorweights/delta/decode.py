"""`decode(..., recipe=...)` for additive-delta releases: check, plan the recovery, say what to report."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._display import quoted
from ..errors import ChecksumMismatchError, FormatError, InputError, MissingFileError
from ..outfolder.paths import check_out_dir, is_regular, read_bounded
from ..pipeline import Outcome, Plan
from ..tensor_manifest import TENSORS_NAME, TensorManifest
from .recipes import recipe as find_recipe
from .recover import OutputFormat, Recovery, plan_recovery, recovery_plan
from .registry import DeltaRelease
from .tensor_plan import TensorResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeltaOptions:
    """How a delta is recovered, beyond where from and to."""

    recipe: str | None = None
    output_format: OutputFormat = "safetensors"
    max_shard_bytes: int | None = None
    release: DeltaRelease | None = None
    expect: TensorManifest | None = None
    """Per-tensor digests every output tensor must meet before anything is moved into place."""


def plan_delta(
    delta_dir: Path,
    base_dir: Path,
    out_dir: Path,
    delta_options: DeltaOptions,
    *,
    force: bool,
    verify: bool,
) -> tuple[Plan, Callable[[Outcome], dict[str, Any]]]:
    """The plan recovering the fine-tuned model from an additive delta and its base (see
    `xorweights.decode`), and the report's fields once it has run."""
    release = delta_options.release
    name = delta_options.recipe or (release.recipe if release else None)
    if name is None:
        raise InputError(f"{delta_dir}: which recipe made this delta? give `recipe` (fastchat, llava, ...)")
    recipe = find_recipe(name)
    if release is not None and release.recipe != recipe.name:
        logger.warning(
            "%s was made with recipe %s; recovering with %s as asked", release.repo_id, release.recipe, name
        )
    if delta_options.output_format not in ("safetensors", "bin"):
        raise InputError(
            f"unknown output format {delta_options.output_format!r}; expected safetensors or bin"
        )
    if not (delta_dir.is_dir() or (recipe.open_delta is not None and delta_dir.is_file())):
        raise MissingFileError(f"delta not found: {delta_dir}", path=delta_dir)
    if not base_dir.is_dir():
        raise MissingFileError(f"base folder not found: {base_dir}", path=base_dir)
    check_out_dir(out_dir, {"delta": delta_dir, "base": base_dir})
    expected_sum = _expected_sum(release, delta_dir, recipe.sum_file)
    sums = expected_sum is not None or recipe.sum_file is not None
    recovery = plan_recovery(
        recipe,
        delta_dir,
        base_dir,
        fmt=delta_options.output_format,
        max_shard_bytes=delta_options.max_shard_bytes,
        sums=sums,
    )
    info: dict[str, Any] = {
        "recipe": recipe.name,
        "release": release.repo_id if release else None,
        "delta": str(delta_dir),
        "base": str(base_dir),
    }

    def approve(results: dict[str, TensorResult]) -> None:
        if delta_options.expect is not None:
            _meet(delta_options.expect, results, out_dir)
        if expected_sum is None:
            return
        total = model_sum(results, recovery)
        want, atol, rtol = expected_sum
        if not math.isclose(total, want, rel_tol=rtol, abs_tol=atol):
            raise ChecksumMismatchError(
                f"{out_dir}: the recovered weights sum to {total:.4f}; {info['release'] or delta_dir} "
                f"publishes {want} (atol {atol}, rtol {rtol}): the base is not the LLaMA the delta was made "
                "against; nothing was moved into place",
                path=out_dir,
                expected=str(want),
                actual=f"{total:.4f}",
                stage="decoded",
            )

    plan, results = recovery_plan(
        recovery, out_dir, force=force, verify=verify, info=info, approve=approve, expect=delta_options.expect
    )

    def report(outcome: Outcome) -> dict[str, Any]:
        return {
            "release": release.repo_id if release else None,
            "format": f"delta:{recipe.name}",
            "tensor_manifest": str(out_dir / TENSORS_NAME),
            "model_sum": model_sum(results, recovery) if sums else None,
            "model_sum_expected": expected_sum[0] if expected_sum else None,
        }

    return plan, report


#: The tolerance of a sum read from a recipe's sum file (AlpacaFarm's `model_sum.txt`).
_SUM_RTOL = 1e-5
#: A sum file holds one number: anything longer is not one.
_SUM_FILE_BYTES = 4096


def _expected_sum(
    release: DeltaRelease | None, delta_dir: Path, sum_file: str | None
) -> tuple[float, float, float] | None:
    """The published sum of all weights, its absolute and relative tolerance, or None: the release's,
    else the number in its sum file or the recipe's (`sum_file`)."""
    published = release.model_sum if release else None
    if published is not None and published.value is not None:
        return published.value, published.atol, published.rtol
    name = published.file if published and published.file else sum_file
    if name is None:
        return None
    path = delta_dir / name
    if not is_regular(path):
        if published is not None:
            logger.warning("%s: not found; the sum of the recovered weights is not checked", path)
        return None
    text = read_bounded(path, _SUM_FILE_BYTES, "a file of one number").decode("utf-8", "replace").strip()
    try:
        value = float(text)
    except ValueError:
        raise FormatError(
            f"{path}: expected one number (the sum of all weights), got {quoted(text, 40)}", path=path
        ) from None
    if not math.isfinite(value):
        raise FormatError(f"{path}: expected a finite number, got {value}", path=path)
    return value, published.atol if published else 0.0, published.rtol if published else _SUM_RTOL


def _meet(expect: TensorManifest, results: dict[str, TensorResult], out_dir: Path) -> None:
    """Every tensor as `expect` lists it, and no other.

    Raises:
        `ChecksumMismatchError`: the first tensor that differs, is missing or is extra (and how many).
    """
    bad = []
    for name, want in expect.tensors.items():
        got = results.get(name)
        if got is None:
            bad.append((name, "missing", want.sha256, "-"))
        elif (got.spec.dtype, got.spec.shape, got.sha256) != (want.dtype, want.shape, want.sha256):
            bad.append(
                (
                    name,
                    "sha256",
                    f"{want.dtype}{list(want.shape)} {want.sha256}",
                    f"{got.spec.dtype}{list(got.spec.shape)} {got.sha256}",
                )
            )
    bad += [(n, "extra", "-", r.sha256) for n, r in results.items() if n not in expect.tensors]
    if bad:
        name, what, want, got = bad[0]
        raise ChecksumMismatchError(
            f"{out_dir}: {len(bad)} tensors differ from {expect.path}: {name} ({what}: {got}, expected "
            f"{want}); nothing was moved into place",
            path=out_dir,
            expected=want,
            actual=got,
            algorithm="sha256",
            stage="decoded",
        )


def model_sum(results: dict[str, TensorResult], recovery: Recovery) -> float:
    """The sum of all weights as the peers computed it: each tensor's sum in float32, added in
    float32 in state-dict order, the 2023 `inv_freq` buffers included."""
    total = np.float32(0)
    for name in recovery.state_order:
        r = results.get(name)
        part = r.total if r is not None else recovery.buffer_sums.get(name)
        if part is not None:
            total = np.float32(total + np.float32(part))
    return float(total)
