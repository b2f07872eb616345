"""Make the golden `tokenizer.json` fixtures with the real old toolchain. Never run in CI.

Run it once in a throwaway environment holding the pinned-era tokenizer stack:

    python -m venv /tmp/oldtok
    /tmp/oldtok/bin/pip install transformers==4.28.1 tokenizers==0.13.3 sentencepiece==0.1.98 protobuf==3.20.1
    /tmp/oldtok/bin/python tools/make_tokenizer_golden.py tests/golden/tokenizers

For each case it trains a small sentencepiece BPE model with LLaMA's trainer settings (byte fallback,
split digits, identity normalisation, unk/bos/eos = 0/1/2), then runs the conversion script's own
`write_tokenizer`, unmodified, which saves what the pinned conversion saved next to the weights.
The sentencepiece model and the converted `tokenizer.json` are both kept (a few hundred KB); the
toolchain versions go to `toolchain.txt`.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import sentencepiece as spm
import tokenizers
import transformers
from llama_spm import LLAMA_TRAINER  # beside this tool (run as tools/make_tokenizer_golden.py)
from transformers.models.llama import convert_llama_weights_to_hf as convert

MULTILINGUAL = [
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe, Maß, Straße.",
    "Le cœur a ses raisons que la raison ne connaît point — Pascal, « Pensées ».",
    "日本語のテキストも少し入れておきます。東京、大阪、京都。",
    "中文文本：模型权重的分发需要校验和。",
    "Русский текст: быстрая коричневая лиса прыгает через ленивую собаку.",
    "Emoji and symbols: 🦙🚀✨ ≤ ≥ ∑ ∞ \\ \" quotes ' and tabs\tinside.",
    "Numbers 1234567890 and 3.14159 and 2023-04-15 and 65057902592 bytes.",
    "    indented code:    def f(x):\n        return x ** 2  # four spaces",
]


def corpus() -> list[str]:
    """Deterministic training text: docstrings of a few stdlib modules plus multilingual lines."""
    import collections
    import json
    import pathlib
    import string
    import textwrap as tw

    lines: list[str] = []
    for mod in (collections, json, pathlib, string, tw, io, hashlib, shutil, tempfile):
        for obj in [mod, *(getattr(mod, n) for n in sorted(dir(mod)) if not n.startswith("_"))]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str):
                lines.extend(line.strip() for line in doc.splitlines() if line.strip())
    return lines + MULTILINGUAL * 20


CASES = {
    "bpe-1000": {"vocab_size": 1000},
    "bpe-600-nosplitdigits": {"vocab_size": 600, "split_digits": False},
}


def train(out: Path, **overrides: object) -> None:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model, **{**LLAMA_TRAINER, **overrides}
    )
    out.write_bytes(model.getvalue())


def main(out_root: Path) -> None:
    versions = (
        f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
        f"sentencepiece {spm.__version__}, python {sys.version.split()[0]}\n"
    )
    for case, overrides in CASES.items():
        dest = out_root / case
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        train(dest / "tokenizer.model", **overrides)
        with tempfile.TemporaryDirectory() as tmp:
            convert.write_tokenizer(tmp, str(dest / "tokenizer.model"))
            shutil.copyfile(Path(tmp) / "tokenizer.json", dest / "tokenizer.json")
        (dest / "toolchain.txt").write_text(versions + f"trainer overrides: {overrides}\n")
        digest = hashlib.md5((dest / "tokenizer.json").read_bytes()).hexdigest()
        (dest / "tokenizer.json.md5").write_text(f"{digest}  tokenizer.json\n")
        print(case, digest)
    print(textwrap.dedent(versions))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
