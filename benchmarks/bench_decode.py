"""Decode benchmark: xorweights vs the legacy 4 KiB-block algorithm vs `cp` of the same bytes.

Usage: python benchmarks/bench_decode.py [--size-gib 1] [--workdir DIR] [--keep]

Makes a synthetic payload/base pair (random bytes; the fine-tuned file is 16 rows of 6656 fp16
longer than the base, as in the LLaMA-30B releases), then times, in one run and on the same files:
  - `xorweights decode` (no checksums), and with md5 verification of base and output fused in;
  - the legacy algorithm (4 KiB blocks, as the published script), alone and followed by `md5sum`
    of its output and base (what users had to do to verify);
  - `cp` of the payload bytes, and `cp` followed by `sync` of the copy (xorweights fsyncs its
    outputs before renaming them, so that is the like-for-like floor).
Each contender runs as its own process; peak RSS is that process's (with md5sum, the larger of
the two), measured by GNU time. All inputs are in the page cache for every contender (the
machine has RAM to spare).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NAME = "pytorch_model-00001-of-00001.bin"
GROWTH = 16 * 6656 * 2  # 16 extra vocabulary rows of hidden 6656 in fp16


def make_pair(folder: Path, size: int) -> tuple[Path, Path, Path]:
    """payload/NAME (size bytes), base/NAME (size - GROWTH bytes), and an md5 manifest."""
    payload, base = folder / "payload", folder / "base"
    payload.mkdir(parents=True, exist_ok=True)
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    step = 64 * 1024 * 1024
    hp, hb, ho = hashlib.md5(), hashlib.md5(), hashlib.md5()
    with open(payload / NAME, "wb") as fp, open(base / NAME, "wb") as fb:
        done = 0
        while done < size:
            n = min(step, size - done)
            p = rng.integers(0, 256, n, dtype=np.uint8)
            b = rng.integers(0, 256, n, dtype=np.uint8)
            nb = max(0, min(n, size - GROWTH - done))
            fp.write(p.data)
            fb.write(b[:nb].data)
            hp.update(p.data)
            hb.update(b[:nb].data)
            o = p.copy()
            o[:nb] ^= b[:nb]
            ho.update(o.data)
            done += n
    manifest = folder / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "format": "xorweights-checksums/1",
                "release": "bench",
                "stages": {
                    "hf_base": {NAME: {"md5": hb.hexdigest()}},
                    "decoded": {NAME: {"md5": ho.hexdigest()}},
                },
            }
        )
    )
    return payload, base, manifest


TIME = "/usr/bin/time"  # GNU time: reports the peak RSS of exactly the process it starts


def run(cmds: list[list[str]], scratch: Path) -> tuple[float, int]:
    """Run commands one after another; wall seconds and the peak RSS (bytes) of any of them.

    Each command is started by GNU time, not by this process: on Linux a child's `ru_maxrss`
    includes the high-water mark of the process that forked it, which would add ours to theirs.
    """
    peak = 0
    start = time.perf_counter()
    for cmd in cmds:
        rss_file = scratch / "rss.txt"
        proc = subprocess.run(
            [TIME, "-f", "%M", "-o", str(rss_file), *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()}")
        peak = max(peak, int(rss_file.read_text().split()[-1]) * 1024)
    return time.perf_counter() - start, peak


LEGACY = """
import sys; sys.path.insert(0, {root!r})
from tests.legacy_reference import xor_uncompressed
xor_uncompressed({dst!r}, {payload!r}, {base!r})
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if not Path(TIME).exists():
        raise SystemExit(f"{TIME} (GNU time) is needed to measure peak RSS: apt-get install time")
    size = int(args.size_gib * 1024**3)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="xorweights-bench-", dir=ROOT))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        payload, base, manifest = make_pair(work, size)
        print(f"pair of {size / 2**30:.2f} GiB made in {time.perf_counter() - t:.1f} s in {work}", flush=True)
        py = sys.executable
        xw = [py, "-m", "xorweights.cli"]

        def out(tag: str) -> Path:
            d = work / f"out-{tag}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            return d

        contenders = {
            "cp": lambda: [["cp", str(payload / NAME), str(out("cp") / NAME)]],
            "cp + sync": lambda: [
                ["sh", "-c", f"cp {payload / NAME} {out('cps') / NAME} && sync {work}/out-cps/{NAME}"]
            ],
            "xorweights decode": lambda: [
                [*xw, "decode", str(payload), "--base", str(base), "--out", str(out("xw")), "--quiet"]
            ],
            "xorweights decode + md5 verify": lambda: [
                [
                    *xw,
                    "decode",
                    str(payload),
                    "--base",
                    str(base),
                    "--out",
                    str(out("xwv")),
                    "--checksums",
                    str(manifest),
                    "--quiet",
                ]
            ],
            "legacy 4 KiB": lambda: [
                [
                    py,
                    "-c",
                    LEGACY.format(
                        root=str(ROOT),
                        dst=str(out("leg") / NAME),
                        payload=str(payload / NAME),
                        base=str(base / NAME),
                    ),
                ]
            ],
            "legacy 4 KiB + md5sum": lambda: [
                [
                    py,
                    "-c",
                    LEGACY.format(
                        root=str(ROOT),
                        dst=str(out("legm") / NAME),
                        payload=str(payload / NAME),
                        base=str(base / NAME),
                    ),
                ],
                ["md5sum", str(base / NAME), str(work / "out-legm" / NAME)],
            ],
        }
        results = {}
        for name, make_cmds in contenders.items():
            results[name] = run(make_cmds(), work)
            print(f"  {name:<32} {results[name][0]:7.2f} s", flush=True)
        # Every contender wrote the same bytes.
        ref = (work / "out-cp" / NAME).stat().st_size
        for tag in ("xw", "xwv", "leg", "legm"):
            assert (work / f"out-{tag}" / NAME).stat().st_size == ref
        assert (
            subprocess.run(["cmp", str(work / "out-xw" / NAME), str(work / "out-leg" / NAME)]).returncode == 0
        )

        cp_s = results["cp"][0]
        cps_s = results["cp + sync"][0]
        print(
            f"\ndecode of a {size / 2**30:.2f} GiB payload ({size} bytes out), "
            f"one run, {os.cpu_count()} cores"
        )
        print(f"{'contender':<32} {'wall s':>8} {'MB/s':>8} {'peak RSS':>10} {'x cp':>6} {'x cp+sync':>10}")
        for name, (secs, rss) in results.items():
            print(
                f"{name:<32} {secs:8.2f} {size / secs / 1e6:8.0f} {rss / 2**20:7.0f} MiB "
                f"{secs / cp_s:6.2f} {secs / cps_s:10.2f}"
            )
        leg, ours = results["legacy 4 KiB + md5sum"][0], results["xorweights decode + md5 verify"][0]
        print(f"\nverified decode vs legacy + md5sum: {leg / ours:.1f}x faster")
        plain = results["legacy 4 KiB"][0] / results["xorweights decode"][0]
        print(f"plain decode vs legacy: {plain:.1f}x faster")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
