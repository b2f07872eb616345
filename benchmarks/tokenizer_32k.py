"""tokenizer.json at LLaMA's scale: a 32,000-piece sentencepiece BPE model converted by the real
pinned-era toolchain vs derived by xorweights. The two files must be identical.

Usage: python benchmarks/tokenizer_32k.py OLD_PYTHON [--workdir DIR]

OLD_PYTHON has transformers 4.28.1, tokenizers 0.13.3, sentencepiece 0.1.98, protobuf 3.20.1 and
torch (any; the conversion script imports it), e.g. the throwaway venv of
tools/make_tokenizer_golden.py; never needed in CI. It trains the model on the Python standard
library's sources (LLaMA's trainer settings, 32,000 pieces) and saves `LlamaTokenizerFast`, as the
conversion script did. Times of both converters are printed.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xorweights.llama.tokenizer import derive_tokenizer_json, parse_model  # noqa: E402

OLD = """
import io, pathlib, shutil, sys, tempfile, time
sys.path.insert(0, TOOLS)
import make_tokenizer_golden as g
import sentencepiece as spm
from transformers import LlamaTokenizerFast
root = pathlib.Path(sys.base_prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}")
lines = []
for p in sorted(root.rglob("*.py")) + sorted(root.rglob("*.txt")) + sorted(root.rglob("*.rst")):
    if "site-packages" not in p.parts:
        lines += [line for line in p.read_text(errors="replace").splitlines() if line.strip()]
lines += g.MULTILINGUAL * 200
out = pathlib.Path(OUT)
model = io.BytesIO()
settings = {**g.LLAMA_TRAINER, "vocab_size": 32000, "num_threads": 2, "input_sentence_size": 2000000}
spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **settings)
(out / "tokenizer.model").write_bytes(model.getvalue())
t = time.perf_counter()
with tempfile.TemporaryDirectory() as d:
    LlamaTokenizerFast(str(out / "tokenizer.model")).save_pretrained(d)
    shutil.copyfile(pathlib.Path(d) / "tokenizer.json", out / "tokenizer.json")
print(f"{time.perf_counter() - t:.2f}")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old_python")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        script = f"TOOLS = {str(ROOT / 'tools')!r}\nOUT = {tmp!r}\n" + OLD
        run = subprocess.run([args.old_python, "-c", script], capture_output=True, text=True, check=True)
        old_seconds = float(run.stdout.split()[-1])
        model = Path(tmp) / "tokenizer.model"
        want = (Path(tmp) / "tokenizer.json").read_bytes()
        t = time.perf_counter()
        got = derive_tokenizer_json(model)
        ours = time.perf_counter() - t
        pieces = len(parse_model(model.read_bytes()).pieces)
    print(f"pieces: {pieces}, tokenizer.json {len(want)} bytes, md5 {hashlib.md5(want).hexdigest()}")
    print(f"transformers 4.28.1 + tokenizers 0.13.3: {old_seconds:.2f} s; xorweights: {ours:.2f} s")
    print("identical" if got == want else "DIFFERENT")
    return 0 if got == want else 1


if __name__ == "__main__":
    sys.exit(main())
