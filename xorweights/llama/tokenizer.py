"""Derive the pinned conversion's `tokenizer.json` from a sentencepiece `tokenizer.model`, without
sentencepiece, protobuf, tokenizers or transformers.

The conversion script saved `LlamaTokenizerFast(tokenizer.model)`, which transformers 4.28/4.29
built with its `LlamaConverter` and tokenizers 0.13 serialised. What that wrote, reproduced here:

- vocabulary: every sentencepiece piece with its id, except that ids 0, 1 and 2 are always named
  `<unk>`, `<s>` and `</s>`;
- merges: every split of a piece into two pieces `l + r`, kept only when the merged piece's score
  is truthy (a piece scored 0.0, usually the first merge a BPE trainer learned, yields none),
  ordered by score descending, ties by the ids of `l`, then `r`;
- the fixed normaliser, post-processor (`<s> $A`, `<s> $A $B`), decoder and model options;
- serde_json's pretty printer: two-space indent, raw UTF-8, no final newline.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..outfolder.paths import read_bounded

logger = logging.getLogger(__name__)

#: Largest sentencepiece model read (LLaMA's is 500 KB).
MAX_MODEL_BYTES = 64 * 1024 * 1024
_BPE = 2
_FLOAT = struct.Struct("<f")


@dataclass(frozen=True)
class SentencePieceModel:
    """The parts of a sentencepiece `ModelProto` the conversion used."""

    pieces: tuple[tuple[str, float], ...]  # (piece, score) by id
    model_type: int  # 1 unigram, 2 BPE, 3 word, 4 char
    unk_piece: str


def _fields(buf: bytes, what: str) -> list[tuple[int, int, Any]]:
    """Decode one protobuf message into (field number, wire type, value) triples."""
    out: list[tuple[int, int, Any]] = []
    pos, end = 0, len(buf)

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            if pos >= end or shift > 63:
                raise FormatError(f"{what}: truncated or overlong varint at byte {pos}", path=what)
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while pos < end:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: Any = varint()
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise FormatError(f"{what}: truncated field {number}", path=what)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 2:
            size = varint()
            if pos + size > end:
                raise FormatError(
                    f"{what}: field {number} runs past the end ({size} bytes at {pos})", path=what
                )
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise FormatError(f"{what}: unsupported protobuf wire type {wire} (field {number})", path=what)
        out.append((number, wire, value))
    return out


def _text(value: Any, what: str) -> str:
    try:
        return bytes(value).decode("utf-8")
    except (TypeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{what}: a piece is not valid UTF-8", path=what) from exc


#: Fields of a sentencepiece `ModelProto` (pieces, trainer, normalizer, self-test and denormalizer
#: specs) and of one of its pieces (a string, a float score, a type): a file holding anything else
#: is not only a tokenizer.
_MODEL_FIELDS = frozenset({1, 2, 3, 4, 5})
_PIECE_FIELDS = frozenset({(1, 2), (2, 5), (3, 0)})


def model_refusal(data: bytes, what: str = "tokenizer.model") -> str | None:
    """Why `data` is not a sentencepiece model and nothing else, or None: every byte belongs to a
    field the proto defines, each spec is a message, each piece a UTF-8 string with its score and
    type. What `encode` requires of a tokenizer model it stores as it is."""
    try:
        fields = _fields(data, what)
        for number, wire, value in fields:
            if number not in _MODEL_FIELDS or wire != 2:
                return f"it is not a sentencepiece model (field {number} of wire type {wire})"
            inner = _fields(value, what)
            for n, w, v in inner if number == 1 else ():
                if (n, w) not in _PIECE_FIELDS:
                    return f"it is not a sentencepiece model (a piece with field {n} of wire type {w})"
                if n == 1:
                    _text(v, what)
    except FormatError as e:
        return f"it is not a sentencepiece model ({str(e).removeprefix(what + ': ')})"
    if not any(number == 1 for number, _, _ in fields):
        return "it is not a sentencepiece model (no pieces)"
    return None


def parse_model(data: bytes, what: str = "tokenizer.model") -> SentencePieceModel:
    """Parse a serialised sentencepiece `ModelProto` (field 1 pieces, field 2 trainer spec)."""
    pieces: list[tuple[str, float]] = []
    model_type, unk_piece = 1, "<unk>"  # the proto's defaults
    for number, wire, value in _fields(data, what):
        if number == 1 and wire == 2:
            piece, score = "", 0.0
            for n, w, v in _fields(value, what):
                if n == 1 and w == 2:
                    piece = _text(v, what)
                elif n == 2 and w == 5:
                    score = _FLOAT.unpack(v)[0]
            pieces.append((piece, score))
        elif number == 2 and wire == 2:
            for n, w, v in _fields(value, what):
                if n == 3 and w == 0:
                    model_type = v
                elif n == 45 and w == 2:
                    unk_piece = _text(v, what)
    if not pieces:
        raise FormatError(f"{what}: not a sentencepiece model (no pieces)", path=what)
    return SentencePieceModel(tuple(pieces), model_type, unk_piece)


def merges(vocab_scores: list[tuple[str, float]], pieces: list[str]) -> list[tuple[str, str]]:
    """The BPE merges the conversion extracted: splits `l + r` of a scored piece into two pieces.

    `pieces` are the model's own piece names (by id), which name the halves; `vocab_scores` give
    the merged pieces' scores, with the conversion's renamed specials.
    """
    ids: dict[str, int] = {}
    for i, p in enumerate(pieces):
        ids[p] = i  # sentencepiece forbids duplicates; the conversion's dict kept the last
    scores = dict(vocab_scores)
    found: list[tuple[float, int, int, str, str]] = []
    for merged, score in scores.items():
        if not score:
            continue
        for cut in range(1, len(merged)):
            left, right = merged[:cut], merged[cut:]
            li, ri = ids.get(left), ids.get(right)
            if li is not None and ri is not None:
                found.append((-score, li, ri, left, right))
    found.sort(key=lambda m: m[:3])
    return [(m[3], m[4]) for m in found]


def _added(i: int, content: str) -> dict[str, Any]:
    return {
        "id": i,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": True,
        "special": True,
    }


def tokenizer_json(data: bytes, what: str = "tokenizer.model") -> bytes:
    """The `tokenizer.json` the pinned conversion wrote for the sentencepiece model `data`."""
    model = parse_model(data, what)
    if model.model_type != _BPE:
        raise FormatError(
            f"{what}: a LLaMA tokenizer is a sentencepiece BPE model (type 2), this one has type "
            f"{model.model_type}",
            path=what,
        )
    names = [p for p, _ in model.pieces]
    vocab_scores = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), *model.pieces[3:]]
    vocab: dict[str, int] = {}
    for i, (p, _) in enumerate(vocab_scores):
        vocab[p] = i
    ordered = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    bos = names.index("<s>") if "<s>" in names else 0  # sentencepiece maps unknown pieces to unk (0)
    seq = [{"SpecialToken": {"id": "<s>", "type_id": 0}}]
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(i, t) for i, t in enumerate(("<unk>", "<s>", "</s>"))],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [*seq, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [*seq, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [bos], "tokens": ["<s>"]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": model.unk_piece,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "vocab": ordered,
            "merges": [f"{left} {right}" for left, right in merges(vocab_scores, names)],
        },
    }
    return json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")


def derive_tokenizer_json(path: os.PathLike[str] | str) -> bytes:
    """Read the sentencepiece model at `path` and return the pinned conversion's `tokenizer.json`."""
    p = Path(path)
    data = read_bounded(p, MAX_MODEL_BYTES, "a sentencepiece model")
    logger.debug("deriving tokenizer.json from %s (%d bytes)", p, len(data))
    return tokenizer_json(data, str(p))
