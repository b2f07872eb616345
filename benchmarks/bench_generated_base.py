"""Streamed decode from a Meta-format base: peak memory and throughput, at LLaMA-30B's shapes.

Usage: python benchmarks/bench_generated_base.py [--layers 2] [--workdir DIR]   (needs torch to
write the Meta files, and GNU time)

It writes a Meta-format LLaMA with the 30B's tensor shapes (dim 6656, 52 heads, 4 model-parallel
`consolidated.NN.pth`, vocabulary 32000) but only `--layers` layers, a random payload as long as
the converted checkpoint, then times `xorweights decode --base-mode generate` (the converted
base computed tensor by tensor and streamed into the XOR pass, never written) against `cp` of
the same output bytes, with each process's peak RSS. Memory does not depend on the layer count:
it is bounded by the largest tensors (the 32000 x 6656 embeddings, 426 MB each).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TIME = "/usr/bin/time"


def meta_30b(folder: Path, layers: int) -> None:
    import torch

    dim, heads, shards, vocab = 6656, 52, 4, 32000
    inter = 17920
    rng = np.random.default_rng(0)

    def w(*shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.integers(0, 2**16, shape, dtype=np.uint16).view(np.float16))

    folder.mkdir(parents=True)
    for s in range(shards):
        sd = {
            "tok_embeddings.weight": w(vocab, dim // shards),
            "norm.weight": w(dim),
            "output.weight": w(vocab // shards, dim),
        }
        for i in range(layers):
            p = f"layers.{i}."
            for n in ("wq", "wk", "wv"):
                sd[f"{p}attention.{n}.weight"] = w(dim // shards, dim)
            sd[f"{p}attention.wo.weight"] = w(dim, dim // shards)
            sd[f"{p}feed_forward.w1.weight"] = w(inter // shards, dim)
            sd[f"{p}feed_forward.w2.weight"] = w(dim, inter // shards)
            sd[f"{p}feed_forward.w3.weight"] = w(inter // shards, dim)
            sd[f"{p}attention_norm.weight"] = w(dim)
            sd[f"{p}ffn_norm.weight"] = w(dim)
        torch.save(sd, folder / f"consolidated.{s:02d}.pth")
        del sd
    (folder / "params.json").write_text(
        json.dumps(
            {
                "dim": dim,
                "multiple_of": 256,
                "n_heads": heads,
                "n_layers": layers,
                "norm_eps": 1e-6,
                "vocab_size": -1,
            }
        )
    )
    (folder.parent / "tokenizer.model").write_bytes(b"stand-in tokenizer")


def timed(cmd: list[str], scratch: Path) -> tuple[float, int]:
    subprocess.run(["sync"], check=True)
    t = time.perf_counter()
    proc = subprocess.run(
        [TIME, "-f", "%M", "-o", str(scratch / "rss"), *cmd], capture_output=True, text=True
    )
    secs = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return secs, int((scratch / "rss").read_text().split()[-1]) * 1024


def main() -> None:
    from xorweights.llama.convert import MetaCheckpoint

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="xw-genbase-", dir=ROOT))
    try:
        t = time.perf_counter()
        meta = work / "LLaMA" / "30B"
        meta_30b(meta, args.layers)
        layout = MetaCheckpoint.open(meta).layout()
        payload = work / "payload"
        payload.mkdir()
        names = layout.shard_names()
        assert len(names) == 1, "keep --layers small enough for one shard"
        # An all-zero payload as long as the generated file (tensor bytes plus the zip's records):
        # the output is the generated base itself, a valid checkpoint (decode refuses an output that
        # is not one when no digest vouches for it).
        from xorweights.llama.base import GeneratedBase

        total = 0
        with GeneratedBase(meta).opener(names[0])() as g:
            while block := g.read(64 << 20):
                total += len(block)
        with open(payload / names[0], "wb") as f:
            left = total
            while left:
                n = min(left, 64 << 20)
                f.write(bytes(n))
                left -= n
        made = time.perf_counter() - t
        print(f"30B-shaped Meta base, {args.layers} layers, {total / 2**30:.2f} GiB, made in {made:.0f} s")
        out = work / "out"
        ours = timed(
            [
                sys.executable,
                "-m",
                "xorweights.cli",
                "decode",
                str(payload),
                "--base",
                str(meta),
                "--out",
                str(out),
                "--base-mode",
                "generate",
                "--quiet",
                "--jobs",
                "1",
            ],
            work,
        )
        (work / "cp").mkdir()
        cp = timed(["cp", str(out / names[0]), str(work / "cp" / names[0])], work)
        print(f"{'contender':<44} {'wall s':>7} {'MB/s':>7} {'peak RSS':>10}")
        for label, (secs, rss) in (
            ("xorweights decode, base generated from Meta", ours),
            ("cp of the same output bytes", cp),
        ):
            print(f"{label:<44} {secs:7.2f} {total / secs / 1e6:7.0f} {rss / 2**20:7.0f} MiB")
        print(f"a 65 GB release at this rate: {65.06e9 / (total / ours[0]) / 60:.1f} min")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
