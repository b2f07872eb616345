"""Decode rate and memory of a compressed native payload at two model sizes.

Usage: python benchmarks/bench_rate.py [--mb 512,2048] [--repeat 3] [--workdir DIR]

For each size it makes a float16 pair (`bench_hub.make_pair`: 32 MiB tensors in two shards, the
fine-tune nudged by small noise), encodes it compressed (the default) and `--compress none`, then
times in one run, each command its own process started by GNU time (wall, CPU, peak RSS):
  - `xorweights --help`: the command's start-up (imports), paid once per decode whatever its size;
  - `xorweights decode` of the compressed payload and of the uncompressed one (the base proof,
    the pass with the sha256 of every output, the fsync and the rename included);
  - `cp -r` of the fine-tuned folder.
MB/s are of output bytes; "net" leaves out the start-up, as a decode of a whole release does.
The package is byte-compiled first, as an installed one is.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import xorweights  # noqa: E402
from benchmarks.bench_decode import TIME, settle  # noqa: E402
from benchmarks.bench_hub import files_bytes, make_pair, same_files  # noqa: E402


def timed(cmd: list[str], scratch: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (bytes) of one command."""
    report = scratch / "time.txt"
    proc = subprocess.run(
        [TIME, "-f", "%e %U %S %M", "-o", str(report), *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()}")
    wall, user, system, rss = report.read_text().split()[-4:]
    return float(wall), float(user) + float(system), int(rss) * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", default="512,2048", help="model sizes in MB, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="runs per contender; the median is reported")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "xorweights")], check=True)
    cli = [sys.executable, "-m", "xorweights.cli"]
    print(
        f"{'model':>8} {'contender':<22} {'payload MB':>10} {'wall s':>7} {'CPU s':>6} {'MB/s':>6} "
        f"{'net MB/s':>8} {'peak RSS':>9}"
    )
    for mb in (int(v) for v in args.mb.split(",")):
        work = Path(tempfile.mkdtemp(prefix="bench-rate-", dir=args.workdir))
        try:
            base, ft = make_pair(work, mb)
            size = files_bytes(ft)
            payloads = {"compressed": work / "zstd", "uncompressed": work / "none"}
            for mode, dest in (("zstd", payloads["compressed"]), ("none", payloads["uncompressed"])):
                xorweights.encode(ft, base=base, out=dest, compress=mode)  # type: ignore[arg-type]
            out = work / "out"
            contenders = {"start-up (--help)": ([*cli, "--help"], None)}
            for name, payload in payloads.items():
                cmd = [*cli, "decode", str(payload), "--base", str(base), "--out", str(out), "--quiet"]
                contenders[f"decode {name}"] = (cmd, payload)
            contenders["cp -r"] = (["cp", "-r", str(ft), str(out)], None)
            medians: dict[str, tuple[float, float, int]] = {}
            for name, (cmd, payload) in contenders.items():
                runs = []
                for _ in range(args.repeat):
                    shutil.rmtree(out, ignore_errors=True)
                    settle(False)
                    runs.append(timed(cmd, work))
                    if payload is not None:
                        assert same_files(ft, out), f"{name}: output differs from the fine-tuned files"
                wall = statistics.median(r[0] for r in runs)
                medians[name] = (wall, statistics.median(r[1] for r in runs), max(r[2] for r in runs))
            start = medians["start-up (--help)"][0]
            for name, (wall, cpu, rss) in medians.items():
                payload = contenders[name][1]
                stored = f"{files_bytes(payload) / 1e6:10.1f}" if payload is not None else f"{'':>10}"
                rate = f"{size / wall / 1e6:6.0f}" if name != "start-up (--help)" else f"{'':>6}"
                net = f"{size / (wall - start) / 1e6:8.0f}" if payload is not None else f"{'':>8}"
                print(
                    f"{size / 1e6:8.0f} {name:<22} {stored} {wall:7.2f} {cpu:6.2f} {rate} {net} "
                    f"{rss / 2**20:5.0f} MiB",
                    flush=True,
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("every decode checked byte for byte against the fine-tuned files; medians of --repeat runs")


if __name__ == "__main__":
    main()
