"""Decode at the limit: a native decode against one sha256 pass over its outputs, on a big pair
made of real (base, fine-tuned) element pairs.

Usage: python benchmarks/bench_limit.py --minilm DIR [--dtype fp16] [--strength strong] [--layers 4]
                                        [--repeat 3] [--workdir W] [--keep]

The pair is LLaMA-7B-shaped (hidden 4096, MLP 11008, vocabulary 32000; `--layers` decoder layers,
4 by default: about 2.2 GB in fp16) in 3 safetensors shards, and every element of it is one
(base, fine-tuned) element pair drawn at random from the real fine-tune in DIR (see
`minilm_pair.py`: all-MiniLM-L6-v2 fine-tuned on real text, light or strong): the joint
distribution of base and change is the real one, only the layout is resampled.

The fine-tune is encoded twice (`--compress zstd`, the default, and `--compress none`); then, in
turns (one round is every contender once; `--repeat` rounds; best and median reported), each its
own process started by GNU time (peak RSS), after a `sync`, inputs in the page cache:
  - `openssl dgst -sha256` over the decoded files (the floor: one sha256 pass over the outputs),
    and `cp` of them;
  - `xorweights decode` of each payload into a fresh folder (so no record of an earlier run is
    there to skip work: each run meets its base for the first time), as it runs by default (each
    output fsynced before its rename) and with `--no-fsync`.
Every decode's outputs are checked against the fine-tuned files (sha256) before it counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_decode import TIME, settle  # noqa: E402
from benchmarks.entropy_floor import tensors  # noqa: E402

HIDDEN, MLP, VOCAB = 4096, 11008, 32000
_NP = {"fp16": np.float16, "bf16": np.uint16, "fp32": np.float32}
_ST = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}


def shapes(layers: int) -> dict[str, tuple[int, ...]]:
    """LLaMA-7B's tensors (as transformers names them) for `layers` decoder layers."""
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{p}self_attn.{n}.weight"] = (HIDDEN, HIDDEN)
        out[f"{p}mlp.gate_proj.weight"] = (MLP, HIDDEN)
        out[f"{p}mlp.up_proj.weight"] = (MLP, HIDDEN)
        out[f"{p}mlp.down_proj.weight"] = (HIDDEN, MLP)
        out[f"{p}input_layernorm.weight"] = (HIDDEN,)
        out[f"{p}post_attention_layernorm.weight"] = (HIDDEN,)
    out["model.norm.weight"] = (HIDDEN,)
    out["lm_head.weight"] = (VOCAB, HIDDEN)
    return out


def element_pairs(minilm: Path, dtype: str, strength: str) -> tuple[np.ndarray, np.ndarray]:
    """Every (base, fine-tuned) element pair of the real fine-tune's float tensors, as bit patterns."""
    base, bdata = tensors(minilm / dtype / "base" / "model.safetensors")
    ft, fdata = tensors(minilm / dtype / strength / "model.safetensors")
    uint = np.uint32 if dtype == "fp32" else np.uint16
    b_parts, f_parts = [], []
    for name, t in ft.items():
        b = base.get(name)
        if b is None or t["dtype"] != _ST[dtype] or b["shape"] != t["shape"]:
            continue
        b_parts.append(np.frombuffer(bdata[slice(*b["data_offsets"])], uint))
        f_parts.append(np.frombuffer(fdata[slice(*t["data_offsets"])], uint))
    return np.concatenate(b_parts), np.concatenate(f_parts)


def _header(entries: dict[str, tuple[str, tuple[int, ...], int]]) -> bytes:
    doc, at = {}, 0
    for name, (dt, shape, nbytes) in entries.items():
        doc[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [at, at + nbytes]}
        at += nbytes
    raw = json.dumps(doc, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def make_pair(work: Path, minilm: Path, dtype: str, strength: str, layers: int, seed: int = 0) -> int:
    """Write base/ and ft/ (3 shards each, safetensors); returns the fine-tune's bytes."""
    pool_b, pool_f = element_pairs(minilm, dtype, strength)
    rng = np.random.default_rng(seed)
    names = shapes(layers)
    per = -(-len(names) // 3)
    groups = [list(names)[i : i + per] for i in range(0, len(names), per)]
    total = 0
    for side in ("base", "ft"):
        (work / side).mkdir(parents=True, exist_ok=True)
    for k, group in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        width = pool_b.itemsize
        entries = {n: (_ST[dtype], names[n], int(np.prod(names[n])) * width) for n in group}
        with open(work / "base" / fname, "wb") as fb, open(work / "ft" / fname, "wb") as ff:
            head = _header(entries)
            fb.write(head)
            ff.write(head)
            for n in group:
                left = int(np.prod(names[n]))
                while left:
                    m = min(left, 1 << 24)
                    idx = rng.integers(0, len(pool_b), m)
                    fb.write(pool_b[idx].tobytes())
                    ff.write(pool_f[idx].tobytes())
                    left -= m
        total += (work / "ft" / fname).stat().st_size
    index = {
        "metadata": {"total_size": total},
        "weight_map": {
            n: f"model-{k:05d}-of-{len(groups):05d}.safetensors" for k, g in enumerate(groups, 1) for n in g
        },
    }
    for side in ("base", "ft"):
        (work / side / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return total


def timed(cmd: list[str], scratch: Path) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (bytes) and CPU seconds (user + system) of one command, started by
    GNU time."""
    settle(False)
    t = time.perf_counter()
    proc = subprocess.run(
        [TIME, "-f", "%M %U %S", "-o", str(scratch / "rss"), *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()[-2000:]}")
    rss, user, system = (scratch / "rss").read_text().split()[-3:]
    return wall, int(rss) * 1024, float(user) + float(system)


def sha256_tree(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
            out[p.name] = h.hexdigest()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minilm", type=Path, required=True, help="the real fine-tune (minilm_pair.py's DIR)")
    ap.add_argument("--dtype", default="fp16", choices=sorted(_NP))
    ap.add_argument("--strength", default="strong", choices=("light", "strong"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--modes", default="zstd,zstd-grouped,none", help="encode modes to decode (none is needed)"
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the pair and payloads (reused when present)")
    args = ap.parse_args()
    if not Path(TIME).exists():
        raise SystemExit(f"{TIME} (GNU time) is needed to measure peak RSS: apt-get install time")
    work = (
        args.workdir / f"limit-{args.dtype}-{args.strength}-{args.layers}"
        if args.workdir
        else Path(tempfile.mkdtemp(prefix="bench-limit-"))
    )
    py = [sys.executable, "-m", "xorweights.cli"]
    try:
        if not (work / "ft" / "model.safetensors.index.json").exists():
            t = time.perf_counter()
            size = make_pair(work, args.minilm, args.dtype, args.strength, args.layers)
            print(
                f"# pair: {size / 1e9:.2f} GB of {args.dtype} in 3 shards, "
                f"made in {time.perf_counter() - t:.0f} s",
                flush=True,
            )
        size = sum(p.stat().st_size for p in (work / "ft").iterdir())
        want = sha256_tree(work / "ft")
        payloads = {}
        for mode in args.modes.split(","):
            dest = work / f"payload-{mode}"
            if not (dest / "xorweights.json").exists():
                shutil.rmtree(dest, ignore_errors=True)
                t, rss, _ = timed(
                    [
                        *py,
                        "encode",
                        str(work / "ft"),
                        "--base",
                        str(work / "base"),
                        "--out",
                        str(dest),
                        "--compress",
                        mode,
                        "-q",
                    ],
                    work,
                )
                print(
                    f"# encode --compress {mode}: {t:.2f} s ({size / t / 1e6:.0f} MB/s), "
                    f"peak RSS {rss >> 20} MiB",
                    flush=True,
                )
            payloads[mode] = dest
        psizes = {
            m: sum(p.stat().st_size for p in d.iterdir() if p.is_file() and p.name != "xorweights.json")
            for m, d in payloads.items()
        }
        outs = sorted(str(p) for p in (work / "ft").iterdir() if p.suffix == ".safetensors")
        contenders = {
            "sha256 (openssl, one pass over the outputs)": ["openssl", "dgst", "-sha256", *outs],
            "cp of the outputs": ["cp", *outs, str(work / "cp")],
        }
        for mode in args.modes.split(","):
            for extra in ([], ["--no-fsync"]):
                label = f"decode --compress {mode} payload" + (" --no-fsync" if extra else "")
                contenders[label] = [
                    *py,
                    "decode",
                    str(payloads[mode]),
                    "--base",
                    str(work / "base"),
                    "--out",
                    str(work / "out"),
                    "-q",
                    *extra,
                ]
        runs: dict[str, list[tuple[float, int, float]]] = {k: [] for k in contenders}
        for _ in range(args.repeat):
            for label, cmd in contenders.items():
                shutil.rmtree(work / "out", ignore_errors=True)
                shutil.rmtree(work / "cp", ignore_errors=True)
                (work / "cp").mkdir()
                runs[label].append(timed(cmd, work))
                if label.startswith("decode"):
                    got = sha256_tree(work / "out")
                    assert all(got.get(n) == d for n, d in want.items()), f"{label}: outputs differ"
        floor = min(r[0] for r in runs["sha256 (openssl, one pass over the outputs)"])
        print(
            f"# {args.dtype} {args.strength}: output {size / 1e9:.2f} GB; payload / output: "
            + ", ".join(f"{m} {b / size:.3f}" for m, b in psizes.items())
            + f"; {args.repeat} rounds, 2 cores"
        )
        print(
            f"{'contender':<52} {'best s':>7} {'median s':>9} {'GB/s':>6} {'x sha256':>9} "
            f"{'x uncompressed':>15} {'peak RSS':>9} {'CPU s':>6}"
        )
        for label, rs in runs.items():
            best = min(r[0] for r in rs)
            med = statistics.median(r[0] for r in rs)
            rss = max(r[1] for r in rs)
            cpu = min(rs)[2]
            twin = (
                runs.get(label.replace("zstd-grouped", "none").replace("zstd", "none"))
                if "zstd" in label
                else None
            )
            vs = f"{best / min(r[0] for r in twin):15.2f}" if twin else f"{'':>15}"
            print(
                f"{label:<52} {best:7.2f} {med:9.2f} {size / best / 1e9:6.2f} {best / floor:9.2f} {vs} "
                f"{rss >> 20:>5} MiB {cpu:6.2f}"
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
