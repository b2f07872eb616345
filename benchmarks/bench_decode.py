"""Decode benchmark: xorweights vs the legacy 4 KiB-block algorithm vs `cp` of the same bytes.

Usage: python benchmarks/bench_decode.py [--sizes 1,4] [--kinds plain,gzip] [--repeat 3] [--workdir DIR]
                                         [--files N] [--jobs J]

For each size and payload kind it makes a synthetic pair (the fine-tuned file is 16 rows of
6656 fp16 longer than the base, as in the LLaMA-30B releases; a gzip payload is compressible
like a real fp16 XOR, whose high bytes are mostly zero; with `--files N`, N such pairs of that size
each, as the shards of one release), then times, in one run on the same files:
  - `cp` of the output bytes, and `cp` followed by `sync` of the copy;
  - `xorweights decode` verifying md5 and sha256 of the base and the output in the same pass,
    as it runs by default (each output fsynced before its rename), and with `--no-fsync`
    (`--jobs J` is passed to every xorweights decode; by default it decodes as many files at once
    as there are cores, at most 4);
  - `xorweights decode` verifying md5 only (all the legacy releases publish), and without checksums;
  - the legacy algorithm (4 KiB blocks, as the published script, one file after another), alone
    and followed by `md5sum` of its output and the base (what users had to do to verify).
Each contender is its own process, started by GNU time, which reports that process's peak RSS;
each runs `--repeat` times and the median wall time is reported. Before every run the machine
is synced; with `--cache warm` (the default) inputs stay in the page cache, which makes runs
reproducible and the pass CPU-bound; `--cache cold` (as root) drops the page cache first, as a
real 65 GB decode reads from disk (on a virtual disk backed by the host's cache, that is noisy).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
#: A safetensors output (one U8 tensor), so that a decode without checksums passes its plausibility check.
NAME = "model-00001-of-00001.safetensors"
GROWTH = 16 * 6656 * 2  # 16 extra vocabulary rows of hidden 6656 in fp16
TIME = "/usr/bin/time"  # GNU time: reports the peak RSS of exactly the process it starts
RELEASE_BYTES = 65_057_902_592 + 16 * 6656 * 2 * 2  # LLaMA-30B hf_base total_size plus the grown rows


def _gzip_writer(path: Path):  # type: ignore[no-untyped-def]
    try:
        from isal import igzip  # fast to make; decoding speed does not depend on the level

        return igzip.open(path, "wb", compresslevel=1)
    except ImportError:
        import gzip

        return gzip.open(path, "wb", compresslevel=1)


def _safetensors_header(size: int) -> bytes:
    """The first bytes of a `size`-byte safetensors file holding one U8 tensor (header padded with
    spaces to a multiple of 8 bytes, as the writer does)."""

    def text(n: int) -> str:
        return json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}})

    length = len(text(size)) + 7 & ~7
    t = text(size - 8 - length).ljust(length)
    return length.to_bytes(8, "little") + t.encode()


def names(files: int) -> list[str]:
    """The file names of a pair split into `files` files (`[NAME]` for one)."""
    return [f"model-{i:05d}-of-{files:05d}.safetensors" for i in range(1, files + 1)]


def make_pair(folder: Path, size: int, kind: str, files: int = 1) -> tuple[Path, Path, Path]:
    """payload/NAME (size bytes decoded), base/NAME (size - GROWTH bytes), and a manifest; with
    `files`, that many such files (`names(files)`), each of its own random bytes."""
    payload, base = folder / "payload", folder / "base"
    for d in (payload, base):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    stages: dict[str, dict[str, dict[str, str]]] = {"hf_base": {}, "decoded": {}}
    for seed, name in enumerate(names(files)):
        stages["hf_base"][name], stages["decoded"][name] = _make_file(payload, base, name, size, kind, seed)
    manifest = folder / "manifest.json"
    manifest.write_text(
        json.dumps({"format": "xorweights-checksums/1", "release": "bench", "stages": stages})
    )
    return payload, base, manifest


def _make_file(
    payload: Path, base: Path, name: str, size: int, kind: str, seed: int
) -> tuple[dict[str, str], dict[str, str]]:
    """One payload file and its base file; the digests of the base and of the decoded output."""
    rng = np.random.default_rng(seed)
    step = 64 * 1024 * 1024
    header = _safetensors_header(size)
    hb = {a: hashlib.new(a) for a in ("md5", "sha256")}
    ho = {a: hashlib.new(a) for a in ("md5", "sha256")}
    fp = _gzip_writer(payload / name) if kind == "gzip" else open(payload / name, "wb")
    with fp, open(base / name, "wb") as fb:
        done = 0
        while done < size:
            n = min(step, size - done)
            p = rng.integers(0, 256, n, dtype=np.uint8)
            p[1::2] &= 0x03  # like an fp16 XOR: high bytes nearly zero
            b = rng.integers(0, 256, n, dtype=np.uint8)
            if done == 0:  # the output starts with its header
                p[: len(header)] = np.frombuffer(header, np.uint8) ^ b[: len(header)]
            nb = max(0, min(n, size - GROWTH - done))
            fp.write(p.data)
            fb.write(b[:nb].data)
            o = p.copy()
            o[:nb] ^= b[:nb]
            for h in hb.values():
                h.update(b[:nb].data)
            for h in ho.values():
                h.update(o.data)
            done += n
    return {a: h.hexdigest() for a, h in hb.items()}, {a: h.hexdigest() for a, h in ho.items()}


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


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def settle(cold: bool) -> None:
    """Start each contender alike: nothing dirty, and with `cold`, nothing cached either."""
    subprocess.run(["sync"], check=True)
    if cold:
        DROP_CACHES.write_text("3\n")


LEGACY = """
import os, sys; sys.path.insert(0, {root!r})
from tests.legacy_reference import {fn}
for name in {names!r}:
    {fn}(os.path.join({dst!r}, name), os.path.join({payload!r}, name), os.path.join({base!r}, name))
"""


def scenario(
    work: Path, size: int, kind: str, repeat: int, cold: bool, files: int = 1, jobs: int | None = None
) -> dict[str, tuple[float, int]]:
    t = time.perf_counter()
    payload, base, manifest = make_pair(work, size, kind, files)
    files_, total = names(files), size * files
    stored = sum((payload / n).stat().st_size for n in files_)
    what = (
        f"{size / 2**30:g} GiB {kind} payload"
        if files == 1
        else f"{files} x {size / 2**30:g} GiB {kind} payload files"
    )
    print(
        f"\n== {what} ({stored / 2**20:.0f} MiB stored), made in {time.perf_counter() - t:.0f} s",
        flush=True,
    )
    py = sys.executable
    xw = [py, "-m", "xorweights.cli", "decode", str(payload), "--base", str(base), "--quiet"]
    xw += [*(["--jobs", str(jobs)] if jobs else []), "--out"]
    legacy_fn = "xor_decode" if kind == "gzip" else "xor_uncompressed"
    # The legacy releases publish md5 only: the same check with the sha256 entries left out.
    md5_only = work / "manifest-md5.json"
    doc = json.loads(manifest.read_text())
    for files in doc["stages"].values():
        for entry in files.values():
            entry.pop("sha256")
    md5_only.write_text(json.dumps(doc))

    def out(tag: str) -> Path:
        d = work / f"out-{tag}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        return d

    def legacy(tag: str) -> list[str]:
        code = LEGACY.format(
            root=str(ROOT),
            fn=legacy_fn,
            names=files_,
            dst=str(out(tag)),
            payload=str(payload),
            base=str(base),
        )
        return [py, "-c", code]

    def each(folder: str) -> str:
        return " ".join(f"{work}/{folder}/{n}" for n in files_)

    contenders = {
        "cp": lambda: [["cp", *(str(work / "out-xw" / n) for n in files_), str(out("cp"))]],
        "cp + sync": lambda: [["sh", "-c", f"cp {each('out-xw')} {out('cps')}/ && sync {each('out-cps')}"]],
        "xorweights + md5,sha256 verify": lambda: [[*xw, str(out("xwv")), "--checksums", str(manifest)]],
        "  same, --no-fsync": lambda: [[*xw, str(out("xwn")), "--checksums", str(manifest), "--no-fsync"]],
        "xorweights + md5 verify": lambda: [[*xw, str(out("xw5")), "--checksums", str(md5_only)]],
        "xorweights, no verify": lambda: [[*xw, str(out("xw"))]],
        "legacy 4 KiB": lambda: [legacy("leg")],
        "legacy 4 KiB + md5sum": lambda: [
            legacy("legm"),
            ["md5sum", *(str(base / n) for n in files_), *(str(work / "out-legm" / n) for n in files_)],
        ],
    }
    # Order: cp copies the no-verify output; the legacy output is compared with ours. Every
    # contender starts from a synced machine and outputs go as soon as they are not needed, so
    # no one pays for another's writeback.
    plan = [
        ("xorweights, no verify", []),
        ("cp", []),
        ("cp + sync", ["cp", "cps", "xw"]),
        ("xorweights + md5,sha256 verify", []),
        ("  same, --no-fsync", ["xwn"]),
        ("xorweights + md5 verify", ["xw5"]),
        ("legacy 4 KiB", []),
        ("legacy 4 KiB + md5sum", ["legm"]),
    ]
    results: dict[str, tuple[float, int]] = {}
    for name, remove_after in plan:
        times, peak = [], 0
        for _ in range(repeat):
            settle(cold)
            secs, rss = run(contenders[name](), work)
            times.append(secs)
            peak = max(peak, rss)
        results[name] = (statistics.median(times), peak)
        print(
            f"  {name:<32} median {results[name][0]:7.2f} s of {' '.join(f'{t:.2f}' for t in times)}",
            flush=True,
        )
        if name == "legacy 4 KiB":
            for n in files_:
                same = subprocess.run(["cmp", str(work / "out-xwv" / n), str(work / "out-leg" / n)])
                assert same.returncode == 0, f"xorweights and the legacy algorithm disagree on {n}"
            remove_after = ["xwv", "leg"]
        for tag in remove_after:
            shutil.rmtree(work / f"out-{tag}", ignore_errors=True)

    cp_s, cps_s = results["cp"][0], results["cp + sync"][0]
    print(f"{'contender':<32} {'wall s':>8} {'MB/s':>8} {'peak RSS':>10} {'x cp':>6} {'x cp+sync':>10}")
    for name in contenders:
        secs, rss = results[name]
        print(
            f"{name:<32} {secs:8.2f} {total / secs / 1e6:8.0f} {rss / 2**20:7.0f} MiB "
            f"{secs / cp_s:6.2f} {secs / cps_s:10.2f}"
        )
    ours = results["xorweights + md5,sha256 verify"][0]
    print(
        f"verified decode is {results['legacy 4 KiB + md5sum'][0] / ours:.1f}x faster than legacy + md5sum; "
        f"a 65 GB release at this rate: {RELEASE_BYTES / (total / ours) / 60:.1f} min"
    )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,4", help="GiB per pair, comma-separated")
    ap.add_argument("--kinds", default="plain,gzip", help="payload kinds: plain,gzip")
    ap.add_argument("--repeat", type=int, default=3, help="runs per contender; the median is reported")
    ap.add_argument(
        "--cache",
        choices=["cold", "warm"],
        default="warm",
        help="warm: inputs stay cached (reproducible; the pass is CPU-bound); cold: drop the page cache "
        "before every run (needs root), as a 65 GB decode reads from disk (on a virtual disk, noisy)",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--files",
        type=int,
        default=1,
        help="files per pair, each of the size given (as the shards of a release)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="passed to xorweights decode (default: its own, the cores, at most 4)",
    )
    args = ap.parse_args()
    if args.files < 1 or (args.jobs is not None and args.jobs < 1):
        raise SystemExit("--files and --jobs must be at least 1")
    if not Path(TIME).exists():
        raise SystemExit(f"{TIME} (GNU time) is needed to measure peak RSS: apt-get install time")
    cold = args.cache == "cold"
    if cold and not os.access(DROP_CACHES, os.W_OK):
        raise SystemExit(f"--cache cold needs write access to {DROP_CACHES} (root); use --cache warm")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="xorweights-bench-", dir=ROOT))
    work.mkdir(parents=True, exist_ok=True)
    shape = ""
    if args.files > 1 or args.jobs:
        jobs = f"--jobs {args.jobs}" if args.jobs else "default jobs"
        shape = f"{args.files} file{'s' if args.files > 1 else ''} per pair, {jobs}, "
    print(
        f"{os.cpu_count()} cores, {args.cache} cache, {shape}{args.repeat} runs per contender; "
        "all figures below come from this run"
    )
    summary = {}
    try:
        for kind in args.kinds.split(","):
            for gib in args.sizes.split(","):
                size = int(float(gib) * 2**30)
                summary[(kind, gib)] = scenario(work, size, kind, args.repeat, cold, args.files, args.jobs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nsummary: verified decode (md5+sha256 of base and output, fsync) vs the floors, and peak RSS")
    for (kind, gib), r in summary.items():
        ours, rss = r["xorweights + md5,sha256 verify"]
        cp, cps, nofsync = r["cp"][0], r["cp + sync"][0], r["  same, --no-fsync"][0]
        legacy = r["legacy 4 KiB + md5sum"][0]
        print(
            f"  {kind:<5} {gib:>3} GiB: {ours / cp:.2f}x cp, {ours / cps:.2f}x cp+sync, "
            f"--no-fsync {nofsync / cp:.2f}x cp, {legacy / ours:.1f}x faster than legacy+md5sum, "
            f"RSS {rss / 2**20:.0f} MiB"
        )


if __name__ == "__main__":
    main()
