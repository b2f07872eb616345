"""Materialise the exact base a legacy release was made against, from any copy of LLaMA.

`convert_base` writes what the pinned conversion wrote (shards, index, configs, tokenizer files)
from Meta's original folder or an HF copy in any container and shard layout, hashing every
file as it is written and checking it against the release's published `hf_base` digests before
it is renamed into place.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _json
from ._atomic import AtomicFile, HashingWriter
from ._outdir import OutputFolder
from ._progress import byte_bar
from ._space import check_outputs
from .checksums import ChecksumManifest, FileDigest, load_checksums
from .errors import BaseMismatchError, FormatError, InputError, IOFailure
from .llama_convert import GeneratedFile, open_base, write_shard, write_shards
from .llama_layout import LlamaLayout
from .llama_tokenizer import derive_tokenizer_json

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


def _check(name: str, got: dict[str, str], want: FileDigest | None, release: str, detail: str) -> bool:
    if want is None:
        return False
    bad = want.mismatch(got)
    if bad is not None:
        algo, expected, actual = bad
        raise BaseMismatchError(
            f"generated base file {name}: {algo} {actual}, but {release} hf_base expects "
            f"{expected}; {detail}",
            path=name,
            expected=expected,
            actual=actual,
            algorithm=algo,
            stage="hf_base",
        )
    return True


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
    """
    started = time.perf_counter()
    src, out_dir = Path(source), Path(out)
    shape, compute = open_base(src)
    name = _layout_name(shape)
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
    files: list[BaseFile] = []
    algos = ("md5", "sha256")
    groups = dict(zip(shape.shard_names(), shape.shards(), strict=True))
    total = shape.total_size()
    with OutputFolder(out_dir) as folder, byte_bar(total, "base", enabled=progress) as bar:
        taken = [
            n for n in [*groups, *shape.small_files()] if (out_dir / n).exists() and not folder.is_ours(n)
        ]
        if taken and not force:
            raise InputError(
                f"{out_dir} already holds {', '.join(taken)}; refusing to overwrite (use --force)",
                path=out_dir / taken[0],
            )
        check_outputs(out_dir, _output_sizes(shape, groups, want, src))

        def finish(fname: str, atomic: AtomicFile, writer: HashingWriter, detail: str) -> None:
            digests = writer.hexdigests()
            ok = _check(fname, digests, want.get(fname), release, detail)
            atomic.commit()
            folder.record(fname, digests, {})
            files.append(BaseFile(fname, writer.count, digests, ok))

        class _Out:
            """One shard: written to a temporary, hashed on the way, verified, then renamed."""

            def __init__(self, fname: str) -> None:
                self.fname = fname
                self.atomic = AtomicFile(out_dir / fname)
                self.writer = HashingWriter(self.atomic.file, algos)

            def write(self, data: Any) -> int:
                bar.update(len(data))
                try:
                    return self.writer.write(data)
                except OSError as e:
                    raise IOFailure("writing", self.atomic.final, e) from e

            def flush(self) -> None:
                self.writer.flush()

            def __enter__(self) -> _Out:
                return self

            def __exit__(self, exc_type: Any, *exc: object) -> None:
                with self.atomic:
                    if exc_type is None:
                        names = groups[self.fname]
                        detail = (
                            f"it holds {names[0]} ... {names[-1]} ({len(names)} tensors) from {src}; that "
                            "source is not the LLaMA weights the release was made against"
                        )
                        finish(self.fname, self.atomic, self.writer, detail)

        write_shards(shape, compute, _Out, str(src))  # type: ignore[arg-type]
        for fname, data in shape.small_files().items():
            with AtomicFile(out_dir / fname) as atomic:
                writer = HashingWriter(atomic.file, algos)
                _write(writer, data, atomic)
                finish(fname, atomic, writer, "it is derived from the architecture alone")
        for candidate in (src / "tokenizer.model", src.parent / "tokenizer.model"):
            if candidate.is_file():
                with AtomicFile(out_dir / "tokenizer.model") as atomic, open(candidate, "rb") as f:
                    writer = HashingWriter(atomic.file, algos)
                    while chunk := _read(f, candidate):
                        _write(writer, chunk, atomic)
                    finish("tokenizer.model", atomic, writer, f"copied from {candidate}")
                with AtomicFile(out_dir / TOKENIZER_JSON) as atomic:
                    writer = HashingWriter(atomic.file, algos)
                    _write(writer, derive_tokenizer_json(candidate), atomic)
                    finish(TOKENIZER_JSON, atomic, writer, f"it is derived from {candidate}")
                break
    unverified = tuple(f.name for f in files if not f.verified)
    missing = sorted(set(want) - {f.name for f in files})
    for n in missing:
        logger.warning("%s: listed in %s hf_base but not generated", n, release)
    return BaseReport(
        str(src),
        str(out_dir),
        name,
        release or None,
        tuple(sorted(files, key=lambda f: f.name)),
        time.perf_counter() - started,
        unverified,
    )


def _output_sizes(
    shape: LlamaLayout, groups: dict[str, list[str]], want: dict[str, FileDigest], src: Path
) -> dict[str, int]:
    """What each file `convert_base` writes takes: the published size, else its tensors' bytes (a
    shard) or its length (the small files, the tokenizer)."""
    nbytes = {n: math.prod(s) * (4 if dt == "F32" else 2) for n, dt, s in shape.tensors()}
    sizes = {f: sum(nbytes[t] for t in names) for f, names in groups.items()}
    sizes.update({f: len(data) for f, data in shape.small_files().items()})
    for candidate in (src / "tokenizer.model", src.parent / "tokenizer.model"):
        if candidate.is_file():
            sizes["tokenizer.model"] = candidate.stat().st_size
            sizes[TOKENIZER_JSON] = 4 * sizes["tokenizer.model"]  # a rough bound: the JSON is larger
            break
    for f, d in want.items():
        if f in sizes and d.size is not None:
            sizes[f] = d.size
    return sizes


COPY_CHUNK = 1 << 20


def _read(f: Any, path: Path) -> bytes:
    try:
        return bytes(f.read(COPY_CHUNK))
    except OSError as e:
        raise IOFailure("reading", path, e) from e


def _write(writer: HashingWriter, data: bytes, atomic: AtomicFile) -> None:
    try:
        writer.write(data)
    except OSError as e:
        raise IOFailure("writing", atomic.final, e) from e


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
            config = _json.loads((f / "config.json").read_bytes(), str(f / "config.json"))
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
