"""Recover a model from an additive delta and its base, as one plan of generated output files.

Each output shard is generated as it is written (never held whole): its tensors are computed
block by block from the memory-mapped delta and base on a few threads, hashed one by one (the
container-independent digests of `tensor_manifest`), and streamed through the pipeline, which
commits the file only once complete. Config and tokenizer files are copied from the delta.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from .._display import abridged
from .._sizing import default_jobs
from ..checksum_types import MAX_MANIFEST_BYTES
from ..errors import FormatError, InputError, MissingFileError
from ..generated_file import GeneratedFile
from ..llama.layout import MAX_SHARD_BYTES as BIN_SHARD_BYTES  # the 2023 default ("10GB")
from ..llama.tensors import open_tensors
from ..llama.torch_save import record_order, save_state_dict
from ..outfolder.atomic import BOOKKEEPING_DIR
from ..outfolder.paths import is_regular, read_bounded
from ..pipeline import BytesSource, FileSource, Plan, Sidecars, Staged, Step
from ..pipeline.plan import Keep
from ..reports import FileReport
from ..tensor_manifest import (
    MAX_TENSOR_MANIFEST_BYTES,
    TENSORS_NAME,
    TensorDigest,
    TensorManifest,
    load_tensor_manifest,
    tensor_sha256,
)
from ..tensors import safetensors_write as st
from ..tensors.spec import TensorSpec
from ..tensors.store import TensorStore, cast, index_tensors, tensor_array
from .checks import check_delta_config, pair_tensors, skipped
from .koala import easylm_files
from .recipes import Recipe
from .tensor_plan import TensorPlan, TensorResult, stream_blocks
from .torch_mean import torch_column_mean

logger = logging.getLogger(__name__)

OutputFormat = Literal["safetensors", "bin"]
#: `save_pretrained`'s default `max_shard_size` in current transformers ("50GB").
SAFETENSORS_SHARD_BYTES = 50 * 10**9
#: Files copied from the delta folder as they are (what the peers' `save_pretrained` of the delta
#: model and tokenizer wrote).
SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def mean_rows(base: np.ndarray, dtype: str) -> np.ndarray:
    """The mean of a base tensor's rows (stored as `dtype`) in float32, as torch's CPU `mean(dim=0)`
    of its float32 copy gives it (a bf16 or fp64 base is converted whole first)."""
    if dtype not in ("F16", "F32"):
        base = cast(np.ascontiguousarray(base), dtype, "F32")
    return torch_column_mean(base)


@dataclass
class ShardFile:
    """One output weight file: its tensors in state-dict order, and what writing them proved."""

    name: str
    plans: list[TensorPlan]
    fmt: OutputFormat
    workers: int
    sums: bool
    results: dict[str, TensorResult] = field(default_factory=dict)

    @property
    def specs(self) -> list[TensorSpec]:
        return [p.spec for p in self.plans]

    def size(self) -> int:
        data = sum(s.nbytes for s in self.specs)
        if self.fmt == "safetensors":
            return len(st.header_bytes(self.specs)) + data
        return data + 4096 * (len(self.specs) + 4)  # zip records and the pickle: a bound, for space checks

    def write(self, out: BinaryIO) -> None:
        """Write the file to `out`, recording every tensor's digest in `results`."""
        self.results.clear()
        with _InOrder("xorweights-tensor-sha256") as digests:
            if self.fmt == "safetensors":
                out.write(st.header_bytes(self.specs))
                for _name, chunks in self._tensors(st.file_order(self.specs), digests):
                    for chunk in chunks:
                        out.write(chunk)
                return
            stem = Path(self.name).stem
            save_state_dict(out, stem, self.specs, self._tensors(record_order(self.specs), digests))

    def _tensors(
        self, order: Sequence[TensorSpec], digests: _InOrder
    ) -> Iterator[tuple[str, Iterator[memoryview]]]:
        by_name = {p.name: p for p in self.plans}
        blocks = stream_blocks([by_name[s.name] for s in order], self.workers)
        for spec in order:
            yield spec.name, self._chunks(spec, blocks, digests)

    def _chunks(
        self, spec: TensorSpec, blocks: Iterator[tuple[TensorPlan, np.ndarray | None]], digests: _InOrder
    ) -> Iterator[memoryview]:
        """The tensor's bytes, block by block; its sha256 is taken on `digests`' thread, in order,
        while the next blocks are made and written (`results` has it once `write` returns)."""
        h = hashlib.sha256()
        sums: list[float] = []
        for plan, arr in blocks:
            if plan.name != spec.name:
                raise AssertionError(f"block of {plan.name} where {spec.name} was due")
            if arr is None:
                break
            if self.sums and arr.size:
                sums.append(_sum(arr, spec.dtype))
            if not arr.size:
                continue
            view = memoryview(np.ascontiguousarray(arr).reshape(-1)).cast("B")
            digests.put(h.update, view)
            yield view
        total = math.fsum(sums) if self.sums else None
        digests.put(lambda: self.results.__setitem__(spec.name, TensorResult(spec, h.hexdigest(), total)))


class _InOrder:
    """Calls run in the order given on a thread of its own, at most `depth` waiting (each holds
    its arguments, here a block of a tensor: memory stays bounded); leaving the block waits for
    every call made, and re-raises the first error."""

    def __init__(self, name: str, depth: int = 4) -> None:
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((fn, args))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    item[0](*item[1])
                except BaseException as e:  # noqa: BLE001 (handed to the caller)
                    self._error = e

    def __enter__(self) -> _InOrder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


@dataclass(frozen=True)
class ShardSource:
    """An output weight file generated from the delta and the base as it is read."""

    shard: ShardFile
    delta_dir: Path
    base_dir: Path
    inputs: tuple[int, int]

    @property
    def label(self) -> str:
        return f"{self.shard.name} recovered from {self.delta_dir} and {self.base_dir}"

    @property
    def path(self) -> None:
        return None

    @property
    def detail(self) -> str:
        p = self.shard.plans
        return f"it holds {p[0].name} ... {p[-1].name} ({len(p)} tensors)" if p else "it holds no tensor"

    def open(self) -> BinaryIO:
        return GeneratedFile(self.shard.write, self.shard.name)  # type: ignore[return-value]

    def size(self) -> int:
        return self.shard.size()

    def identity(self) -> tuple[int, int]:
        return self.inputs


@dataclass(frozen=True)
class Recovery:
    """The planned outputs of one recovery."""

    shards: list[ShardFile]
    steps: tuple[Step, ...]
    index: str | None
    state_order: tuple[str, ...] = ()
    """The delta's tensor names in order, buffers included (the order the peers summed in)."""
    buffer_sums: dict[str, float] = field(default_factory=dict)
    """Sums of the recovered buffers the output leaves out (`inv_freq`), for the 2023 sum."""


def plan_recovery(
    recipe: Recipe,
    delta_dir: Path,
    base_dir: Path,
    *,
    fmt: OutputFormat = "safetensors",
    max_shard_bytes: int | None = None,
    workers: int | None = None,
    sums: bool = False,
) -> Recovery:
    """Pair the tensors (refusing a wrong base first), split them into files, make the steps."""
    base = open_tensors(base_dir)
    delta = open_delta(recipe, delta_dir, base_dir)
    if delta_dir.is_dir():  # its config.json is copied into the output
        check_delta_config(delta, delta_dir)
    pairs = pair_tensors(recipe, delta, base)
    if not pairs:
        raise FormatError(
            f"{delta_dir}: the delta holds no weights (only buffers, or nothing)", path=delta_dir
        )
    plans = [TensorPlan(p, recipe, mean_rows) for p in pairs]
    limit = max_shard_bytes or (SAFETENSORS_SHARD_BYTES if fmt == "safetensors" else BIN_SHARD_BYTES)
    groups = st.split_shards([p.spec for p in plans], limit)
    stem, suffix = ("model", ".safetensors") if fmt == "safetensors" else ("pytorch_model", ".bin")
    names = st.shard_file_names(len(groups), stem=stem, suffix=suffix)
    by_name = {p.name: p for p in plans}
    # Blocks are computed on every core whatever `--jobs` (files at once) says: one worker beside
    # torch's own threads leaves them spinning against the hashing (2.6x slower here).
    threads = workers or default_jobs()
    shards = [
        ShardFile(n, [by_name[s.name] for s in g], fmt, threads, sums)
        for n, g in zip(names, groups, strict=True)
    ]
    # What a kept output must have been made from: the delta, the base, the recipe and the layout.
    layout = (zlib.crc32(f"{recipe.name}:{fmt}".encode()), limit)
    options = {"base": base.identity(), "recipe": layout}
    steps = [
        Step(s.name, ShardSource(s, delta_dir, base_dir, delta.identity()), options=options) for s in shards
    ]
    index = None
    if len(shards) > 1:
        index = f"{stem}{suffix}.index.json"
    for name in SMALL_FILES:
        if delta_dir.is_dir() and is_regular(delta_dir / name):
            steps.append(Step(name, FileSource(delta_dir / name)))
    buffers = _buffer_sums(delta, base) if sums else {}
    return Recovery(shards, tuple(steps), index, tuple(delta.tensors), buffers)


def _buffer_sums(delta: TensorStore, base: TensorStore) -> dict[str, float]:
    """The sums of the `inv_freq` buffers as a 2023 recovery held them (delta + base, fp32): the
    published sums of all weights were taken over state dicts that still had them."""
    out: dict[str, float] = {}
    for name, t in delta.tensors.items():
        if not skipped(name):
            continue
        value = cast(tensor_array(t).reshape(-1), t.dtype, "F32")
        b = base.get(name)
        if b is not None and b.shape == t.shape:
            value = value + cast(tensor_array(b).reshape(-1), b.dtype, "F32")
        out[name] = float(np.sum(value, dtype=np.float64))
    return out


def open_delta(recipe: Recipe, path: Path, base_dir: Path) -> TensorStore:
    """The delta's tensors: an HF folder (any container), or as the recipe reads its delta.

    Raises:
        `MissingFileError`: no delta there. `FormatError`: not readable as the recipe's delta.
    """
    if recipe.open_delta is not None:
        return recipe.open_delta(path, base_dir)
    try:
        return open_tensors(path)
    except MissingFileError as e:
        if path.is_dir() and easylm_files(path):
            raise MissingFileError(f"{e}; it holds an EasyLM diff: `recipe='koala'`?", path=path) from None
        raise


def recovery_plan(
    recovery: Recovery,
    out_dir: Path,
    *,
    force: bool,
    verify: bool,
    info: dict[str, Any],
    approve: Callable[[dict[str, TensorResult]], None] | None = None,
    expect: TensorManifest | None = None,
) -> tuple[Plan, dict[str, TensorResult]]:
    """The plan that makes the outputs in a staging folder (kept ones stay), collects every tensor's
    digest (made now, else from the manifest a finished run left, else hashed again from the kept
    file) into the dict returned beside it, lets `approve` check them, moves the outputs into place,
    and writes the tensor manifest last (the old one is removed first: a manifest always describes
    the files beside it). A weight file in place whose stamps changed is kept only if its tensors
    are those the manifest in place (and `expect`, the digests asked for) lists; else it is made again.

    Raises:
        `InputError`: `out_dir` holds weight files of another layout (an earlier shard size or format).
    """

    steps = list(recovery.steps)
    if recovery.index is not None:
        data = st.index_json(
            [s.specs for s in recovery.shards],
            [s.name for s in recovery.shards],
            total_parameters=recovery.shards[0].fmt == "safetensors",
        )
        steps.append(Step(recovery.index, BytesSource(recovery.index, data)))
    _refuse_other_layouts(out_dir, {s.name for s in steps})
    previous = {} if verify else _previous_digests(out_dir / TENSORS_NAME, info)
    results: dict[str, TensorResult] = {}
    confirm, proven = _confirm_by_tensors(recovery, out_dir, info, expect)

    def collect(stage_dir: Path, reports: Sequence[FileReport]) -> None:
        made = {f.name for f in reports if not f.kept}
        for shard in recovery.shards:
            if shard.name not in made or len(shard.results) != len(shard.plans):
                staged = stage_dir / shard.name
                known = {p.name: previous[p.name] for p in shard.plans if p.name in previous}
                # The manifest describes the files in place, never one an interrupted run staged.
                if not staged.is_file() and shard.name in proven:
                    shard.results.update(proven[shard.name])
                elif verify and not staged.is_file() and len(shard.results) == len(shard.plans):
                    pass  # kept by `--verify`: made again in memory, byte-identical; these are its digests
                elif (
                    not staged.is_file()
                    and not shard.sums
                    and all(p.name in known and known[p.name].spec == p.spec for p in shard.plans)
                ):
                    shard.results.update(known)
                else:
                    shard.results.update(_rehash(staged if staged.is_file() else out_dir / shard.name, shard))
            results.update(shard.results)
        if approve is not None:
            approve(results)

    def sidecars(files: Sequence[FileReport], reused: bool) -> dict[str, bytes]:
        order = [p.name for s in recovery.shards for p in s.plans]
        digests = {
            n: TensorDigest(results[n].spec.dtype, results[n].spec.shape, results[n].sha256) for n in order
        }
        text = TensorManifest(digests, info).dumps()
        files_now = {s.name: _file_id(out_dir / s.name) for s in recovery.shards}
        return {TENSORS_NAME: text, SEAL_NAME: seal(text, files_now)}

    plan = Plan(
        tuple(steps),
        out_dir,
        "decode",
        commit=Staged(check=collect, sidecars=Sidecars((TENSORS_NAME, SEAL_NAME), sidecars), keep=confirm),
        release=info.get("release") or "",
        force=force,
        rehash=verify,
    )
    return plan, results


#: Weight files and indexes a recovery writes (any layout).
_LAYOUT_GLOBS = (
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)


def _refuse_other_layouts(out_dir: Path, names: set[str]) -> None:
    if not out_dir.is_dir():
        return
    stale = sorted({p.name for g in _LAYOUT_GLOBS for p in out_dir.glob(g)} - names)
    if stale:
        raise InputError(
            f"{out_dir} holds weight files this recovery does not write ({abridged(stale, 3)}): "
            "another layout (shard size or format) or another model; "
            "remove them or choose another `out`",
            path=out_dir / stale[0],
        )


#: In the folder's bookkeeping, what ties the manifest to the files it was written with (not part
#: of the manifest, which is meant to be shared): their sizes and modification times, and a sha256
#: of both. Where it lived before the bookkeeping moved: `_OLD_SEAL_NAME`, read too.
SEAL_NAME = f"{BOOKKEEPING_DIR}/.xorweights-tensors.seal"
_OLD_SEAL_NAME = ".xorweights-tensors.seal"


def seal(manifest: bytes, files: dict[str, list[int]]) -> bytes:
    """The seal of a manifest written beside `files` (name: [size, mtime_ns])."""
    digest = hashlib.sha256(manifest + json.dumps(files, sort_keys=True).encode()).hexdigest()
    return (json.dumps({"files": files, "sha256": digest}, sort_keys=True) + "\n").encode()


def _file_id(path: Path) -> list[int]:
    """Size, modification and inode change time (the change time cannot be set back by `touch`)."""
    st_ = path.stat()
    return [st_.st_size, st_.st_mtime_ns, st_.st_ctime_ns]


def _previous_digests(path: Path, info: dict[str, Any]) -> dict[str, TensorResult]:
    """The digests a finished recovery of the same delta, base and recipe recorded, when its seal
    holds and the files it describes are unchanged since (else none: they are hashed again; a
    hand-edited manifest is never carried over)."""

    try:
        text = read_bounded(path, MAX_TENSOR_MANIFEST_BYTES, "a tensor manifest")
        sealed = _read_seal(path.parent)
        files = json.loads(sealed)["files"]
        if seal(text, files) != sealed:
            return {}
        if any(_file_id(path.parent / name) != list(ident) for name, ident in files.items()):
            return {}
    except (OSError, TypeError, ValueError, KeyError, AttributeError):
        return {}
    return _recorded_digests(path, info)


def _read_seal(folder: Path) -> bytes:
    try:
        return read_bounded(folder / SEAL_NAME, MAX_MANIFEST_BYTES, "a seal")
    except FileNotFoundError:  # a folder recovered before the bookkeeping moved (moved in on open)
        return read_bounded(folder / _OLD_SEAL_NAME, MAX_MANIFEST_BYTES, "a seal")


def _recorded_digests(path: Path, info: dict[str, Any]) -> dict[str, TensorResult]:
    """The digests the manifest in place lists, when a recovery of the same delta, base and recipe
    wrote it (sealed or not), else none."""
    try:
        manifest = load_tensor_manifest(path)
    except (FormatError, MissingFileError, OSError):
        return {}
    if any(manifest.info.get(k) != info.get(k) for k in ("recipe", "release", "delta", "base")):
        return {}
    return {n: TensorResult(TensorSpec(n, d.dtype, d.shape), d.sha256) for n, d in manifest.tensors.items()}


def _confirm_by_tensors(
    recovery: Recovery, out_dir: Path, info: dict[str, Any], expect: TensorManifest | None
) -> tuple[Keep, dict[str, dict[str, TensorResult]]]:
    """The check of a weight file in place that changed stamps but still matches its CRC-32: its
    tensors hashed again (sha256) must be those the manifest in place records (and `expect`
    lists), else it is made again (the manifest is never rewritten to match a changed file). Also
    returns the digests it took, by file, for the new manifest."""
    shards = {s.name: s for s in recovery.shards}
    proven: dict[str, dict[str, TensorResult]] = {}
    against: dict[str, dict[str, TensorResult]] = {}

    def confirm(step: Step, path: Path) -> bool:
        shard = shards.get(step.name)
        if shard is None:
            return True
        if not against:
            against[str(out_dir / TENSORS_NAME)] = _recorded_digests(out_dir / TENSORS_NAME, info)
            if expect is not None:
                against[expect.path or "the digests asked for"] = {
                    n: TensorResult(TensorSpec(n, d.dtype, d.shape), d.sha256)
                    for n, d in expect.tensors.items()
                }
        try:
            got = _rehash(path, shard)
        except (FormatError, OSError) as e:
            logger.warning("%s: cannot be read as written (%s); making it again", step.name, e)
            return False
        for where, was in against.items():
            bad = [
                n for n, r in got.items() if n in was and (was[n].spec, was[n].sha256) != (r.spec, r.sha256)
            ]
            if bad:
                logger.warning("%s: tensor %s differs from %s; making it again", step.name, bad[0], where)
                return False
        proven[step.name] = got
        return True

    return confirm, proven


def _rehash(path: Path, shard: ShardFile) -> dict[str, TensorResult]:
    tensors = index_tensors([path])
    out: dict[str, TensorResult] = {}
    for p in shard.plans:
        t = tensors.get(p.name)
        if t is None or t.dtype != p.spec.dtype or t.shape != p.spec.shape:
            raise FormatError(
                f"{path}: does not hold {p.name} as {p.spec.dtype}{list(p.spec.shape)}; remove the file "
                "and run again",
                path=path,
            )
        sums: list[float] = []
        add = (lambda part, t=t, sums=sums: sums.append(_sum(part, t.dtype))) if shard.sums else None
        digest, _ = tensor_sha256(t, on_chunk=add)
        out[p.name] = TensorResult(p.spec, digest, math.fsum(sums) if shard.sums else None)
    return out


def _sum(a: np.ndarray, dtype: str) -> float:
    """The sum of a chunk of values stored as `dtype`, in float64."""
    return float(np.sum(cast(a, "BF16", "F32") if dtype == "BF16" else a, dtype=np.float64))
