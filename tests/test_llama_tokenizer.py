"""tokenizer.json derived from tokenizer.model, byte for byte as transformers 4.28 + tokenizers 0.13.3
wrote it (golden files made by tools/make_tokenizer_golden.py with that toolchain)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from xorweights.errors import FormatError
from xorweights.llama.tokenizer import derive_tokenizer_json, merges, parse_model, tokenizer_json

GOLDEN = Path(__file__).resolve().parent / "golden" / "tokenizers"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())


def test_there_are_golden_cases() -> None:
    assert CASES == ["bpe-1000", "bpe-600-nosplitdigits"]


@pytest.mark.parametrize("case", CASES)
def test_tokenizer_json_matches_the_real_toolchain_byte_for_byte(case: str) -> None:
    got = derive_tokenizer_json(GOLDEN / case / "tokenizer.model")
    want = (GOLDEN / case / "tokenizer.json").read_bytes()
    assert got == want
    listed = (GOLDEN / case / "tokenizer.json.md5").read_text().split()[0]
    assert hashlib.md5(got).hexdigest() == listed


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _model(pieces: list[tuple[str, float]], model_type: int = 2) -> bytes:
    body = b"".join(
        _field(1, _field(1, p.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", s)) for p, s in pieces
    )
    return body + _field(2, _varint(3 << 3) + _varint(model_type))


SMALL = [("<unk>", 0), ("<s>", 0), ("</s>", 0), ("a", -5), ("b", -6), ("ab", 0.0), ("abb", -1), ("bb", -2)]


def test_parse_model_reads_pieces_and_trainer_spec() -> None:
    m = parse_model(_model(SMALL))
    assert m.pieces[5] == ("ab", 0.0) and m.pieces[6] == ("abb", -1.0) and m.model_type == 2
    assert m.unk_piece == "<unk>"


def test_merges_skip_zero_scores_and_order_by_score_then_ids() -> None:
    # "ab" scores 0.0, which the conversion treated as absent; "abb" splits as a+bb and ab+b.
    got = merges(SMALL, [p for p, _ in SMALL])
    assert got == [("a", "bb"), ("ab", "b"), ("b", "b")]


def test_vocab_is_ordered_by_id_and_specials_renamed() -> None:
    pieces = [("<u>", 0), ("<b>", 0), ("<e>", 0), ("é", -1), ("\t", -2)]
    doc = json.loads(tokenizer_json(_model(pieces)))
    assert list(doc["model"]["vocab"].items()) == [("<unk>", 0), ("<s>", 1), ("</s>", 2), ("é", 3), ("\t", 4)]
    assert doc["post_processor"]["special_tokens"]["<s>"]["ids"] == [0]  # no "<s>" piece: unk's id
    raw = tokenizer_json(_model(pieces))
    assert '"é": 3' in raw.decode() and '"\\t": 4' in raw.decode() and not raw.endswith(b"\n")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no pieces"),
        (b"\x0a\xff", "truncated or overlong varint"),
        (b"\x0a\x10abc", "runs past the end"),
        (b"\x0b", "unsupported protobuf wire type 3"),
        (_field(1, _field(1, b"\xff\xfe")), "not valid UTF-8"),
    ],
)
def test_malformed_models_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        tokenizer_json(data, "x/tokenizer.model")


def test_a_unigram_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(_model(SMALL, model_type=1))
    with pytest.raises(
        FormatError, match=r"tokenizer.model: a LLaMA tokenizer is a sentencepiece BPE model"
    ) as e:
        derive_tokenizer_json(path)
    assert e.value.path == str(path)
