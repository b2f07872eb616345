"""Fine-tuned weights stored unmasked ("raw") in a payload: found, refused, or allowed by name.

A fine-tuned byte is masked only where a base byte is XOR-ed onto it. It stays in the clear when
the tensor has no base tensor, when the base tensor is shorter (zero padding masks nothing), when a
file not known to hold no weights (an allow-list: `copy_refusal`) is copied because the base has
no file of its name, or when its base file is shorter. Encoding refuses every such item unless an
`allow_raw` pattern (fnmatch, case-sensitive, on the tensor name or, for a file, the file name)
names it; the manifest records each raw item and the pattern that allowed it, and publishing
recomputes the items from the manifest and the payload files, every frame of a compressed file
included (`check_frames`), and asks for the same patterns again.

One exception is made, and recorded: a tensor that grew by whole rows (a vocabulary grown for new
tokens, by at most a quarter) has its new rows unmasked, as every release of this kind has; they
are counted and shown on the card, but need no pattern.
"""

from __future__ import annotations

import codecs
import fnmatch
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .._display import abridged
from .._units import human_bytes
from ..errors import FormatError, IOFailure, RawStorageError, UnmaskedFrameError
from ..llama.tokenizer import model_refusal
from ..model_files import (
    RAW_FILE_LIMIT,
    TEXT_FILE_LIMIT,
    TEXT_NAMES,
    TEXT_SUFFIXES,
    TOKENIZER_FILE_LIMIT,
    TOKENIZER_MODELS,
)
from ..pipeline import FileSource
from ..tensors.store import nbytes_of
from .delta_frames import STORED, frame_heads
from .native import masked_spans, payload_header
from .native_manifest import MANIFEST_NAME, FileEntry, NativeManifest, RawNote

logger = logging.getLogger(__name__)

#: The `allowed_by` of grown vocabulary rows: allowed by this rule, not by a pattern.
GROWN_ROWS = "(grown rows)"
#: A tensor may grow by at most this fraction of its base rows to count as grown rows.
MAX_GROWTH = 0.25

#: Dotted name parts that mark a container of weights (matched without regard to case, anywhere
#: in the name, so `model.GGUF`, `pytorch_model.bin.gz` and `w.safetensors.bak` all count).
WEIGHT_PARTS = frozenset(
    "safetensors bin pt pth ckpt pt2 gguf ggml msgpack h5 hdf5 keras onnx npz npy pkl pickle joblib "
    "tflite pb tar zip ot params mlmodel caffemodel nemo".split()
)
#: Words in a file name that give it the tokenizer files' size bound (`copy_limit`).
_TOKENIZER_WORDS = ("tokenizer", "vocab", "merges", "spiece", "sentencepiece")
#: First bytes of containers that hold weights (or hide them: compressed streams).
_MAGIC = (
    (b"GGUF", "a GGUF file"),
    (b"lmgg", "a GGML file"),
    (b"tjgg", "a GGML file"),
    (b"PK\x03\x04", "a zip (torch, numpy, keras)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x93NUMPY", "a numpy array"),
    (b"\x1f\x8b", "a gzip stream"),
    (b"\x28\xb5\x2f\xfd", "a zstd stream"),
    (b"\xfd7zXZ\x00", "an xz stream"),
    (b"BZh", "a bzip2 stream"),
)


def weights_reason(name: str, size: int, head: bytes) -> str | None:
    """Why a file would put weights in the clear if stored as it is, or None.

    `head` is the file's first 512 bytes (or fewer).
    """
    parts = {p.lower() for p in name.split(".")[1:]}
    hit = sorted(parts & WEIGHT_PARTS) or [p for p in parts if p.startswith("data-")]
    if hit and not name.lower().endswith(TEXT_SUFFIXES):  # an index.json names weights, holds none
        return f"its name marks a weights file (.{hit[0]})"
    if size > RAW_FILE_LIMIT:
        return f"it is over {human_bytes(RAW_FILE_LIMIT)}"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f"it is {what}"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "it is a pickle"
    if len(head) > 8 and int.from_bytes(head[:8], "little") < size and head[8:9] == b"{":
        return "it is a safetensors file"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "it is a tar archive"
    return None


def copy_kind(name: str) -> Literal["text", "tokenizer"] | None:
    """What a file is by its name, when its kind holds no weights: text (configs, cards, code,
    templates, vocabularies, licences) or a tokenizer model (sentencepiece or tiktoken)."""
    low = name.lower()
    if low.endswith(TEXT_SUFFIXES) or low in TEXT_NAMES:
        return "text"
    if any(fnmatch.fnmatchcase(low, p) for p in TOKENIZER_MODELS):
        return "tokenizer"
    return None


def copy_limit(name: str) -> int:
    """The size bound of a file copied as it is: larger for tokenizer files."""
    low = name.lower()
    tokenizer = any(k in low for k in _TOKENIZER_WORDS) or low.endswith((".tiktoken", ".spm", ".vocab"))
    return TOKENIZER_FILE_LIMIT if tokenizer else TEXT_FILE_LIMIT


def name_refusal(name: str, size: int) -> str | None:
    """Why a file may hold weights, by its name and size alone (`copy_refusal` without its content)."""
    reason = weights_reason(name, size, b"")
    if reason is None and copy_kind(name) is None:
        reason = "its name is not one of a config, tokenizer or text file"
    if reason is None and size > copy_limit(name):
        reason = f"it is over {human_bytes(copy_limit(name))}"
    return reason


def copy_refusal(path: Path, name: str) -> str | None:
    """Why a file may not be stored as it is (it may hold weights), or None: its name says it holds
    none (`copy_kind`), it is within its size bound (`copy_limit`), and its bytes agree: text (UTF-8,
    no NUL byte) or a sentencepiece model (a protobuf of its pieces and specs, nothing else).

    Raises:
        `IOFailure`: the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(512)
            reason = weights_reason(name, size, head) or name_refusal(name, size)
            if reason is not None:
                return reason
            f.seek(0)
            if copy_kind(name) == "tokenizer" and head[:1] == b"\n":
                return model_refusal(f.read(size), name)
            return _not_text(f, size)
    except OSError as e:
        raise IOFailure("reading", path, e) from e


def _not_text(f: Any, size: int) -> str | None:
    """Why the bytes of `f` (`size` of them) are not UTF-8 text, or None."""
    decoder, at = codecs.getincrementaldecoder("utf-8")(), 0
    while at < size and (chunk := f.read(min(1 << 20, size - at))):
        nul = chunk.find(b"\0")
        try:
            decoder.decode(chunk[: nul if nul >= 0 else len(chunk)], final=nul >= 0)
        except UnicodeDecodeError as e:
            return f"it is not text (not UTF-8 at byte {at + e.start})"
        if nul >= 0:
            return f"it is not text (a NUL byte at byte {at + nul})"
        at += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "it is not text (it ends inside a UTF-8 character)"
    return None


def unmasked_bytes(
    dtype: str, shape: tuple[int, ...], base_dtype: str, base_shape: tuple[int, ...]
) -> tuple[int, bool]:
    """Bytes of a tensor left unmasked by a base tensor read as `base_dtype`, and whether they are
    whole new rows within `MAX_GROWTH` (a grown vocabulary)."""
    have, want = nbytes_of(base_dtype, base_shape), nbytes_of(dtype, shape)
    if have >= want:
        return 0, False
    grown = (
        len(shape) == len(base_shape) >= 1
        and shape[1:] == base_shape[1:]
        and nbytes_of(dtype, (1,)) == nbytes_of(base_dtype, (1,))
        and base_shape[0] > 0
        and shape[0] - base_shape[0] <= max(1, int(base_shape[0] * MAX_GROWTH))
    )
    return want - have, grown


@dataclass(frozen=True)
class RawItem:
    """A tensor (or a whole file, `tensor` None) that a payload stores, in whole or in part, unmasked."""

    file: str
    tensor: str | None
    nbytes: int
    """Bytes left unmasked."""
    reason: str
    hint: str | None = None
    """The closest base tensor, when the names differ only by a prefix or a suffix."""
    note: RawNote | None = None
    """What the manifest records for it (publishing)."""

    @property
    def name(self) -> str:
        """What an `allow_raw` pattern is matched against."""
        return self.tensor if self.tensor is not None else self.file

    @property
    def label(self) -> str:
        return f"{self.file}:{self.tensor}" if self.tensor is not None else self.file

    @property
    def grown(self) -> bool:
        return self.note is not None and self.note.allowed_by == GROWN_ROWS


def allowing(name: str, patterns: Sequence[str]) -> str | None:
    """The first pattern that names `name`, or None."""
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)


class NameHints:
    """Finds, for a tensor name the base lacks, a base name that is the same name with dotted parts
    added or dropped at its start (a prefix) or its end (a suffix); at least two parts MUST remain
    shared, so that `weight` alone matches nothing."""

    def __init__(self, base_names: Iterable[str]) -> None:
        self._names: set[tuple[str, ...]] = set()
        self._tails: dict[tuple[str, ...], str] = {}
        self._heads: dict[tuple[str, ...], str] = {}
        for b in sorted(base_names):
            parts = tuple(b.split("."))
            self._names.add(parts)
            for k in range(1, len(parts) - 1):
                self._tails.setdefault(parts[k:], b)
                self._heads.setdefault(parts[: len(parts) - k], b)

    def closest(self, name: str) -> str | None:
        parts = tuple(name.split("."))
        if len(parts) < 2:
            return None
        for k in range(1, len(parts) - 1):  # the base name is this one, shortened
            for key, how in ((parts[k:], "prefix"), (parts[: len(parts) - k], "suffix")):
                if key in self._names:
                    return f"{'.'.join(key)} (the names differ by a {how})"
        for index, how in ((self._tails, "prefix"), (self._heads, "suffix")):  # or lengthened
            if parts in index:
                return f"{index[parts]} (the names differ by a {how})"
        return None


def _file_items(f: FileEntry, payload_dir: Path) -> list[RawItem]:
    if f.method == "copy":
        reason = copy_refusal(payload_dir / f.name, f.name)  # a copy: the payload is the file
        if reason is not None or f.raw is not None:
            return [RawItem(f.name, None, f.size, reason or "noted raw", note=f.raw)]
    elif f.method == "file-xor" and f.base_file is not None and f.base_file.size < f.size:
        reason = name_refusal(f.name, f.size)  # XOR-ed: only the name tells what the file is
        if reason is not None or f.raw is not None:
            left = f.size - f.base_file.size
            return [RawItem(f.name, None, left, f"its base file is {left} bytes shorter", note=f.raw)]
    return []


def check_frames(manifest: NativeManifest, payload_dir: Path, *, publishing: bool = False) -> int:
    """Check every frame of every compressed payload file against the manifest: a tensor masked by
    a base tensor MUST be in delta frames, stored frames are for the header and raw tensors. Reads
    frame heads only (and the stored header), nothing else is decompressed. Returns the frames checked.

    Raises:
        `UnmaskedFrameError`: stored frames over masked tensors, naming file, tensor and frame.
        `FormatError`: a frame head out of range, or frames not making the output's size.
    """
    bad: list[tuple[str, str, int]] = []
    nbytes = frames = 0
    for f in manifest.files:
        if f.compression is None:
            continue
        path = payload_dir / f.name
        spans = masked_spans(payload_header(FileSource(path), f), f)
        end = 0
        try:
            with open(path, "rb") as stream:
                for index, offset, head in frame_heads(stream, os.fstat(stream.fileno()).st_size, str(path)):
                    frames, end = frames + 1, offset + head.out_size
                    tensor = spans.hit(offset, end) if head.transform == STORED else None
                    if tensor is not None:
                        bad.append((f.name, tensor, index))
                        nbytes += head.out_size
        except OSError as e:
            raise IOFailure("reading", path, e) from e
        if end != f.size:
            raise FormatError(
                f"payload file {path}: its frames make {end} bytes, {MANIFEST_NAME} gives {f.size}; "
                "the payload is not what its manifest says: encode it again",
                path=path,
            )
    if bad:
        listed = abridged(f"{n} frame {i} (tensor {t})" for n, t, i in bad)
        raise UnmaskedFrameError(
            f"{'refusing to publish: ' if publishing else ''}{payload_dir} holds {len(bad)} stored "
            f"frame{'s' if len(bad) != 1 else ''} ({human_bytes(nbytes)} of fine-tuned bytes in the clear) "
            f"in tensors {MANIFEST_NAME} masks by a base tensor: {listed}; the payload is not what "
            "its manifest says (altered, or not made by xorweights encode): encode it again",
            path=payload_dir,
            items=sorted({f"{n}:{t}" for n, t, _ in bad}),
            nbytes=nbytes,
        )
    return frames


def manifest_items(manifest: NativeManifest, payload_dir: Path, *, publishing: bool = False) -> list[RawItem]:
    """Every fine-tuned item a native payload stores unmasked, from its manifest and payload files,
    whatever the manifest's notes say (an edited manifest cannot hide one).

    Raises:
        `UnmaskedFrameError`: a compressed file holds a masked tensor in stored frames (`check_frames`).
    """
    check_frames(manifest, payload_dir, publishing=publishing)
    out: list[RawItem] = []
    for f in manifest.files:
        out += _file_items(f, payload_dir)
        for t in f.tensors:
            if t.base is None:
                out.append(RawItem(f.name, t.name, nbytes_of(t.dtype, t.shape), "no base tensor", note=t.raw))
                continue
            b = manifest.base_tensors[t.base]
            left, grown = unmasked_bytes(t.dtype, t.shape, b.dtype, b.shape)
            if left:
                note = t.raw if t.raw is not None and (grown or t.raw.allowed_by != GROWN_ROWS) else None
                if grown and note is None:
                    note = RawNote(f"{t.shape[0] - b.shape[0]} rows past the base's {b.shape[0]}", GROWN_ROWS)
                out.append(RawItem(f.name, t.name, left, "its base tensor is shorter", note=note))
    return out


def refuse_unallowed(
    items: Sequence[RawItem], patterns: Sequence[str], *, where: Path | str, publishing: bool = False
) -> dict[str, str]:
    """The pattern allowing each raw item (by label); raise if any item is not allowed.

    Grown rows are allowed by their rule. Publishing, an item the manifest notes as allowed by a
    pattern needs that very pattern again (a broader one does not do).

    Raises:
        `RawStorageError`: one line naming the first few items, their count and bytes, the likely
            cause and the way out (`--allow-raw`).
    """
    allowed: dict[str, str] = {}
    refused: list[RawItem] = []
    for item in items:
        if item.grown:
            allowed[item.label] = GROWN_ROWS
            continue
        pattern = allowing(item.name, patterns)
        if publishing and item.note is not None and item.note.allowed_by not in patterns:
            pattern = None
        if pattern is None:
            refused.append(item)
        else:
            allowed[item.label] = pattern
    if not refused:
        return allowed
    nbytes = sum(i.nbytes for i in refused)
    tensors = sum(i.tensor is not None for i in refused)
    files = len(refused) - tensors
    what = " and ".join(
        s
        for s in (
            f"{tensors} fine-tuned tensor{'s' if tensors != 1 else ''}" if tensors else "",
            f"{files} file{'s' if files != 1 else ''} that may hold weights" if files else "",
        )
        if s
    )
    listed = abridged(map(_described, refused))
    if publishing:
        message = (
            f"refusing to publish: {where} stores {what} ({human_bytes(nbytes)}) in the clear: {listed}; "
            "to publish them unmasked on purpose, pass the `allow_raw` patterns the payload was encoded with"
        )
    else:
        if files:
            cause = (
                "only config, tokenizer and text files are copied as they are, others are XOR-ed whole "
                "with the same-named base file (give the base file that name, or convert the fine-tuned "
                "model to safetensors)"
            )
        elif any(i.hint for i in refused):
            cause = "the tensor names differ from the base's (see the closest base tensors)"
        else:
            cause = "a partial base, or one whose tensor names, shapes or dtypes differ"
        message = (
            f"refusing to store {what} ({human_bytes(nbytes)}) in the clear: {where} does not mask "
            f"{listed}; likely cause: {cause}; to store them raw on purpose, name them with "
            "`allow_raw=PATTERN`"
        )
    raise RawStorageError(message, path=where, items=[i.label for i in refused], nbytes=nbytes)


def _described(item: RawItem) -> str:
    hint = f"; closest base tensor {item.hint}" if item.hint else ""
    return f"{item.label} ({human_bytes(item.nbytes)}: {item.reason}{hint})"


def notes(items: Sequence[RawItem], allowed: dict[str, str]) -> dict[str, RawNote]:
    """What the manifest records for each raw item (by label)."""
    return {i.label: i.note or RawNote(i.reason, allowed[i.label]) for i in items}
