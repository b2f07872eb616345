"""Materialise the exact base a legacy release was made against, from any copy of LLaMA.

`convert_base` writes what the pinned conversion wrote (shards, index, configs, tokenizer files)
from Meta's original folder or an HF copy in any container and shard layout, hashing every
file as it is written and checking it against the release's published `hf_base` digests before
it is renamed into place.
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .. import _json
from .._json import MAX_JSON_FILE_BYTES
from ..checksum_manifests import load_checksums
from ..checksum_types import ChecksumManifest
from ..errors import FormatError, InputError
from ..generated_file import GeneratedFile
from ..outfolder.paths import check_out_dir, read_bounded
from ..pipeline import Options, Plan, Sink, Step, run
from ..pipeline.source import opened
from .convert import open_base, write_shard
from .layout import LlamaLayout
from .tokenizer import derive_tokenizer_json

logger = logging.getLogger(__name__)

#: The release whose `hf_base` list a layout is checked against when none is named.
DEFAULT_RELEASE = {"llama-30b": "oasst-sft-6-llama-30b"}
_LAYOUTS = ("llama-7b", "llama-13b", "llama-30b", "llama-65b")
TOKENIZER_JSON = "tokenizer.json"


@dataclass(frozen=True)
class BaseFile:
    name: str
    size: int
    digests: dict[str, str]
    verified: bool


@dataclass(frozen=True)
class BaseReport:
    """What `convert_base` wrote, and which files matched published digests."""

    source: str
    out_dir: str
    layout: str
    release: str | None
    files: tuple[BaseFile, ...]
    seconds: float
    unverified: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": "base convert",
            "source": self.source,
            "out_dir": self.out_dir,
            "layout": self.layout,
            "release": self.release,
            "seconds": round(self.seconds, 3),
            "unverified": list(self.unverified),
            "files": [f.__dict__ for f in self.files],
        }


def _layout_name(layout: LlamaLayout) -> str:
    for name in _LAYOUTS:
        p = LlamaLayout.preset(name)
        if (p.dim, p.n_layers, p.n_heads, p.intermediate, p.vocab) == (
            layout.dim,
            layout.n_layers,
            layout.n_heads,
            layout.intermediate,
            layout.vocab,
        ):
            return name
    return f"custom ({layout.dim}x{layout.n_layers}, {layout.n_heads} heads)"


def convert_base(
    source: os.PathLike[str] | str,
    out: os.PathLike[str] | str,
    *,
    layout: str | None = None,
    checksums: os.PathLike[str] | str | ChecksumManifest | None = None,
    force: bool = False,
    progress: bool = False,
) -> BaseReport:
    """Write the pinned conversion's output for the LLaMA weights in `source` into `out`.

    Args:
        source: Meta's original folder (`consolidated.NN.pth`, `params.json`) or an HF copy
            (`*.safetensors` or `pytorch_model*.bin`, any sharding, with `config.json`).
        out: the folder for the converted base; created if needed.
        layout (*optional*): `llama-7b`, `llama-13b`, `llama-30b` or `llama-65b`; the source must have
            that shape. Default: whatever the source is.
        checksums (*optional*): the release (or manifest) whose `hf_base` digests every file must
            match; default `oasst-sft-6-llama-30b` for the 30B layout.
        force: overwrite files in `out` that xorweights did not make.
        progress: show progress on stderr (a bar on a terminal, else a line every 30 s).

    Raises:
        `BaseMismatchError`: a generated file differs from its published digest (the file and the
            tensors it holds are named); nothing is left under its name.
        `OutputExistsError`: `out` holds files of these names that xorweights did not make.
    """
    started = time.perf_counter()
    src, out_dir = Path(source), Path(out)
    check_out_dir(out_dir, {"source": src})
    generated = GeneratedBase(src)
    name = _layout_name(generated.layout)
    if layout is not None and layout.lower() != name:
        raise InputError(f"{src} holds a {name} model, not {layout}", path=src)
    if checksums is None and name in DEFAULT_RELEASE:
        checksums = DEFAULT_RELEASE[name]
    manifest = (
        checksums
        if isinstance(checksums, ChecksumManifest) or checksums is None
        else load_checksums(checksums)
    )
    want = manifest.stage("hf_base") if manifest else {}
    release = manifest.release if manifest else ""
    algos = ("md5", "sha256")
    steps = tuple(
        Step(
            f,
            GeneratedSource(generated, f),
            expect_out=want.get(f),
            sink=Sink(hash_written=algos),
            cause=generated.cause(f),
        )
        for f in generated.names()
    )
    plan = Plan(steps, out_dir, "base", release=release, force=force)
    # One file at a time, as the pinned conversion wrote them: one converted tensor in memory.
    outcome = run(plan, Options(jobs=1, progress=progress))
    files = [BaseFile(f.name, f.size, {a: f.digests[a] for a in algos}, f.verified) for f in outcome.files]
    for n in sorted(set(want) - {f.name for f in files}):
        logger.warning("%s: listed in %s hf_base but not generated", n, release)
    return BaseReport(
        str(src),
        str(out_dir),
        name,
        release or None,
        tuple(files),
        time.perf_counter() - started,
        tuple(f.name for f in files if not f.verified),
    )


class GeneratedBase:
    """A base folder holding LLaMA in another form (Meta's original, or any HF copy) whose
    pinned-conversion files are generated on demand and streamed, never written to disk."""

    def __init__(self, folder: os.PathLike[str] | str) -> None:
        self.folder = Path(folder)
        self.layout, self._compute = open_base(self.folder)
        self._shards = set(self.layout.shard_names())
        self._small = self.layout.small_files()
        self._tokenizer = next(
            (
                p
                for p in (self.folder / "tokenizer.model", self.folder.parent / "tokenizer.model")
                if p.is_file()
            ),
            None,
        )

    @staticmethod
    def looks_like(folder: os.PathLike[str] | str) -> bool:
        """Whether `folder` holds LLaMA weights that a base can be generated from."""
        f = Path(folder)
        if (f / "params.json").is_file() and any(f.glob("consolidated.*.pth")):
            return True
        if not (any(f.glob("*.safetensors")) or any(f.glob("pytorch_model*.bin"))):
            return False
        try:
            path = f / "config.json"
            config = _json.loads(read_bounded(path, MAX_JSON_FILE_BYTES, "a model config"), str(path))
        except (OSError, FormatError):
            return False
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        return (
            isinstance(config, dict)
            and config.get("model_type") == "llama"
            and all(k in config for k in keys)
        )

    def opener(self, name: str) -> Any:
        """A callable opening a stream of the generated file `name`, or None if not generated here."""
        if name in self._shards:
            layout, compute, src = self.layout, self._compute, str(self.folder)
            return lambda: GeneratedFile(lambda w: write_shard(layout, compute, name, w, src), name)
        if name in self._small:
            data = self._small[name]
            return lambda: io.BytesIO(data)
        if name == "tokenizer.model" and self._tokenizer is not None:
            path = self._tokenizer
            return lambda: open(path, "rb")
        if name == TOKENIZER_JSON and self._tokenizer is not None:
            path = self._tokenizer
            return lambda: io.BytesIO(derive_tokenizer_json(path))
        return None

    def names(self) -> list[str]:
        """Every file the pinned conversion writes that can be generated here, shards first."""
        names = [*self.layout.shard_names(), *self._small]
        return names + (["tokenizer.model", TOKENIZER_JSON] if self._tokenizer is not None else [])

    def size_estimate(self, name: str) -> int:
        """About how long the file `name` is: a shard's tensor bytes, a small file's length, the
        tokenizer's; its JSON bounded at four times that (it is larger)."""
        if name in self._small:
            return len(self._small[name])
        if name in self._shards:
            nbytes = self.layout.nbytes()
            groups = dict(zip(self.layout.shard_names(), self.layout.shards(), strict=True))
            return sum(nbytes[t] for t in groups[name])
        if self._tokenizer is None:
            return 0
        size = self._tokenizer.stat().st_size
        return 4 * size if name == TOKENIZER_JSON else size

    def cause(self, name: str) -> str:
        """Why a generated file would differ from the release's, for its mismatch message."""
        if name in self._shards:
            return (
                f"{self.detail(name)} from {self.folder}; that source is not the LLaMA weights the "
                "release was made against"
            )
        if name == "tokenizer.model":
            return f"copied from {self._tokenizer}"
        return self.detail(name)

    def detail(self, name: str) -> str:
        """Which source tensors a generated file holds, for messages."""
        groups = dict(zip(self.layout.shard_names(), self.layout.shards(), strict=True))
        if name in groups:
            t = groups[name]
            return f"it holds {t[0]} ... {t[-1]} ({len(t)} tensors)"
        if name in self._small:
            return "it is derived from the architecture alone"
        if name == TOKENIZER_JSON:
            return f"it is derived from {self._tokenizer}"
        return f"it is {self._tokenizer}"

    def identity(self) -> tuple[int, int]:
        """Total size and newest modification time of the source files (for resume records)."""
        files = [p for p in self.folder.iterdir() if p.is_file()]
        if self._tokenizer is not None:
            files.append(self._tokenizer)
        stats = [p.stat() for p in files]
        return sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)


@dataclass(frozen=True)
class GeneratedSource:
    """A base file the pinned LLaMA conversion would have written, generated from the weights in
    another form as it is read (never written to disk)."""

    base: GeneratedBase
    name: str

    @property
    def label(self) -> str:
        return f"{self.name} generated from {self.base.folder}"

    @property
    def path(self) -> None:
        return None

    @property
    def detail(self) -> str:
        return self.base.detail(self.name)

    def open(self) -> BinaryIO:
        return opened("generating", self.label, self.base.opener(self.name))  # type: ignore[no-any-return]

    def size(self) -> int:
        """An estimate (a shard's tensor bytes, the tokenizer's JSON bounded): enough for space checks."""
        return self.base.size_estimate(self.name)

    def identity(self) -> tuple[int, int]:
        return self.base.identity()

    def mismatch_cause(self) -> str:
        return f"{self.base.folder} is not the LLaMA copy the release was made from ({self.detail})"
