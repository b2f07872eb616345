"""Additive-delta recovery against its floor: one sha256 pass over its outputs.

Usage: python benchmarks/bench_delta_floor.py [--layers 4] [--work DIR] [--repeat 3]

The pair is `bench_delta.py`'s (kept in `--work` and reused): a LLaMA-7B-shaped base and a
Vicuna-style fp16 delta of `--layers` layers (2.15 GB each for 4) in the 2023 `.bin` layout. In
turns (`--repeat` rounds), each its own process under GNU time after a `sync`, inputs in the page
cache: `xorweights decode DELTA --base BASE --out OUT --recipe fastchat` into a fresh folder, and
`openssl dgst -sha256` over the recovered weight files (the floor: every output is hashed). Best
and median wall, CPU seconds (user + system) and peak RSS; the ratio of the best to the floor's
best. (`bench_delta.py` compares the same recovery with FastChat's own script.)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_delta import model_pair  # noqa: E402
from benchmarks.bench_limit import timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-delta"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    base, delta, made = model_pair(work, args.layers, 10.0)
    print(f"# pair: {made}", flush=True)
    out = work / "out-floor"
    cli = [sys.executable, "-m", "xorweights.cli"]
    recover = [
        *cli,
        "decode",
        str(delta),
        "--base",
        str(base),
        "--out",
        str(out),
        "--recipe",
        "fastchat",
        "-q",
    ]
    runs: dict[str, list[tuple[float, int, float]]] = {"recovery": [], "sha256": []}
    for _ in range(args.repeat):
        shutil.rmtree(out, ignore_errors=True)
        runs["recovery"].append(timed(recover, work))
        weights = sorted(str(p) for p in out.iterdir() if p.suffix in (".safetensors", ".bin"))
        runs["sha256"].append(timed(["openssl", "dgst", "-sha256", *weights], work))
    size = sum(Path(p).stat().st_size for p in weights)
    floor = min(r[0] for r in runs["sha256"])
    print(f"# output {size / 1e9:.2f} GB of weights; {args.repeat} rounds, 2 cores")
    print(f"{'contender':<40} {'best s':>7} {'median s':>9} {'x sha256':>9} {'peak RSS':>9} {'CPU s':>6}")
    for label, rs in (
        ("recovery (--recipe fastchat)", runs["recovery"]),
        ("sha256 of the outputs", runs["sha256"]),
    ):
        best = min(r[0] for r in rs)
        print(
            f"{label:<40} {best:7.2f} {statistics.median(r[0] for r in rs):9.2f} {best / floor:9.2f} "
            f"{max(r[1] for r in rs) >> 20:>5} MiB {min(rs)[2]:6.2f}"
        )
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
