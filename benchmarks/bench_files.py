"""File-count benchmark: decoding 1,000 and 10,000 files of 4 KiB must scale linearly.

Usage: python benchmarks/bench_files.py [--counts 1000,10000] [--size 4096] [--workdir DIR] [--no-fsync]

For each count it makes a fine-tuned folder and a base folder of that many random 4 KiB files,
encodes a legacy (`oasst`) payload with `xorweights.encode`, then times `xorweights.decode` of it
into an empty folder (as the CLI runs it: each output fsynced before its rename), and a second
decode into the same folder (every output kept). It prints both times per count and the ratio of
the largest count's time to the smallest's (linear: the ratio of the counts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import xorweights  # noqa: E402


def make(folder: Path, count: int, size: int) -> tuple[Path, Path]:
    tuned, base = folder / "tuned", folder / "base"
    for d in (tuned, base):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for i in range(count):
        name = f"part-{i:05d}.dat"
        (base / name).write_bytes(os.urandom(size))
        (tuned / name).write_bytes(os.urandom(size))
    return tuned, base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1000,10000")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--no-fsync", action="store_true")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="xorweights-bench-files-"))
    fsync = not args.no_fsync
    print(f"{os.cpu_count()} cores, {args.size}-byte files, legacy payload, fsync={'on' if fsync else 'off'}")
    times: dict[int, float] = {}
    try:
        for count in counts:
            folder = work / str(count)
            tuned, base = make(folder, count, args.size)
            payload, out = folder / "payload", folder / "out"
            xorweights.encode(tuned, base=base, out=payload, format="oasst")
            os.sync()
            t = time.perf_counter()
            report = xorweights.decode(payload, base=base, out=out, fsync=fsync)
            times[count] = time.perf_counter() - t
            assert len(report.files) == count
            t = time.perf_counter()
            again = xorweights.decode(payload, base=base, out=out, fsync=fsync)
            rerun = time.perf_counter() - t
            assert all(f.kept for f in again.files)
            print(
                f"  {count:>6} files: decode {times[count]:7.2f} s ({count / times[count]:6.0f} files/s), "
                f"second run (all kept) {rerun:6.2f} s"
            )
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    lo, hi = min(times), max(times)
    if lo != hi:
        print(
            f"ratio {hi} / {lo} files: {times[hi] / times[lo]:.1f}x the time for {hi / lo:.0f}x the files "
            f"(target: at most 15x, and {hi} files under 60 s)"
        )


if __name__ == "__main__":
    main()
