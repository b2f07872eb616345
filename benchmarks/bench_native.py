"""Native vs legacy payloads on a realistic pair: a small pretrained LLaMA-style model and a copy
fine-tuned for a few optimizer steps, both made here.

Usage: python benchmarks/bench_native.py [--dim 768] [--layers 12] [--pretrain-steps 20]
                                         [--finetune-steps 5] [--repeat 3] [--workdir DIR] [--shards 2]

No model can be downloaded here, so the benchmark pretrains its own: a decoder-only transformer
with LLaMA's tensor names (RMSNorm, SwiGLU MLP, untied lm_head, vocabulary 32000), trained with
AdamW on byte-pair-free text (the Python standard library's sources, hashed into the vocabulary)
for `--pretrain-steps`, then fine-tuned from that checkpoint for `--finetune-steps` with AdamW at
lr 1e-5, as a short SFT run does. Weights are saved in bfloat16 (as LLaMA fine-tunes ship), the
base as two safetensors shards and also as three `.bin` shards in another layout; the fine-tune
as two safetensors shards with 16 extra vocabulary rows (`--shards N`: N safetensors shards each).

Reported, from one run on the same pair:
  - encode wall time (median of `--repeat`) and peak RSS: native, and legacy `--format oasst`;
  - payload sizes and their compressibility with gzip (level 6) and zstd (level 3 and 19, when
    `zstandard` is installed), next to the fine-tuned model's own;
  - decode wall time (median of `--repeat`) and peak RSS: native against the safetensors base and
    against the `.bin` base, legacy file-level XOR (xorweights' `oasst` decode, verified by
    sha256), the legacy 4 KiB-block algorithm, and `cp` of the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_decode import run, settle  # noqa: E402

VOCAB, GROW = 32000, 16


def build(dim: int, layers: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    inter = ((8 * dim // 3 + 255) // 256) * 256

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * shape[-1] ** -0.5).requires_grad_()

    p = {"model.embed_tokens.weight": w(VOCAB, dim), "model.norm.weight": torch.ones(dim, requires_grad=True)}
    for i in range(layers):
        q = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            p[f"{q}self_attn.{n}.weight"] = w(dim, dim)
        p[f"{q}mlp.gate_proj.weight"] = w(inter, dim)
        p[f"{q}mlp.up_proj.weight"] = w(inter, dim)
        p[f"{q}mlp.down_proj.weight"] = w(dim, inter)
        p[f"{q}input_layernorm.weight"] = torch.ones(dim, requires_grad=True)
        p[f"{q}post_attention_layernorm.weight"] = torch.ones(dim, requires_grad=True)
    p["lm_head.weight"] = w(VOCAB, dim)
    return p


def forward(p: dict[str, torch.Tensor], ids: torch.Tensor, layers: int, heads: int) -> torch.Tensor:
    def norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight

    x = p["model.embed_tokens.weight"][ids]
    b, t, d = x.shape
    for i in range(layers):
        q = f"model.layers.{i}."
        h = norm(x, p[f"{q}input_layernorm.weight"])
        qs, ks, vs = (
            (h @ p[f"{q}self_attn.{n}.weight"].T).view(b, t, heads, d // heads).transpose(1, 2)
            for n in ("q_proj", "k_proj", "v_proj")
        )
        a = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
        x = x + a.transpose(1, 2).reshape(b, t, d) @ p[f"{q}self_attn.o_proj.weight"].T
        h = norm(x, p[f"{q}post_attention_layernorm.weight"])
        gate = torch.nn.functional.silu(h @ p[f"{q}mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ p[f"{q}mlp.up_proj.weight"].T)) @ p[f"{q}mlp.down_proj.weight"].T
    return norm(x, p["model.norm.weight"]) @ p["lm_head.weight"].T


def corpus_ids(n_tokens: int) -> torch.Tensor:
    """Word-level tokens of the standard library's sources, hashed into the vocabulary."""
    words: list[int] = []
    for path in sorted(Path(sys.base_prefix, "lib").glob("python3*/*.py")):
        for word in path.read_text(errors="replace").split():
            words.append(
                int.from_bytes(hashlib.blake2s(word.encode(), digest_size=4).digest(), "little") % VOCAB
            )
            if len(words) >= n_tokens:
                return torch.tensor(words)
    return torch.tensor(words)


def train(
    p: dict[str, torch.Tensor], ids: torch.Tensor, steps: int, lr: float, layers: int, heads: int
) -> float:
    opt = torch.optim.AdamW(list(p.values()), lr=lr, weight_decay=0.0)
    seq, batch, loss = 128, 4, torch.tensor(0.0)
    g = torch.Generator().manual_seed(steps)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=g)
        x = torch.stack([ids[s : s + seq] for s in starts])
        y = torch.stack([ids[s + 1 : s + seq + 1] for s in starts])
        logits = forward(p, x, layers, heads)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def save_shards(sd: dict[str, torch.Tensor], folder: Path, n: int, kind: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(sd)
    per = -(-len(names) // n)
    for i in range(n):
        part = {k: sd[k].contiguous() for k in names[i * per : (i + 1) * per]}
        if kind == "safetensors":
            save_file(
                part, str(folder / f"model-{i + 1:05d}-of-{n:05d}.safetensors"), metadata={"format": "pt"}
            )
        else:
            torch.save(part, folder / f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def compressed(folder: Path, levels: list[int]) -> dict[str, int]:
    """Compressed sizes of the weight files: gzip -6, zstd -3 and -19 when available."""
    data = [p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".bin")]
    out = {"gzip -6": sum(len(gzip.compress(d, 6)) for d in data)}
    try:
        import zstandard
    except ImportError:
        return out
    for level in levels:
        c = zstandard.ZstdCompressor(level=level, threads=-1)
        out[f"zstd -{level}"] = sum(len(c.compress(d)) for d in data)
    return out


def minilm(workdir: Path, repeat: int) -> None:
    """Payload sizes and decode times on all-MiniLM-L6-v2 fine-tuned on real text, strong (lr 5e-5,
    1,000 AdamW steps) and light (lr 1e-5, 300 steps) (`minilm_pair.py`), fp16, bf16 and fp32, next to
    zstd and ZipNN (`zipnn_sizes.py`)."""
    import zstandard

    from benchmarks.entropy_floor import floor
    from benchmarks.minilm_pair import make_pair, venv_python
    from benchmarks.zipnn_sizes import zipnn_xor_sizes

    pairs = make_pair(workdir)
    zipnn_py = venv_python(workdir / "venv")
    cli = [sys.executable, "-m", "xorweights.cli"]
    scratch = Path(tempfile.mkdtemp(prefix="bench-minilm-"))
    modes = ("zstd", "zstd-grouped", "none")
    print(
        f"{'dtype':<5} {'steps':>5} {'model MB':>8} {'zstd-1':>7} {'ZipNN':>7} {'ZipNN XOR':>9} {'floor':>6} "
        + " ".join(f"{m:>13}" for m in modes)
        + f" {'decode s':>8} {'v1 s':>6} {'cp s':>6} {'peak RSS':>9}"
    )
    try:
        for dt, roles in pairs.items():
            for role, steps in (("strong", 1000), ("light", 300)):
                base, ft = roles["base"], roles[role]
                model = ft / "model.safetensors"
                size = model.stat().st_size
                z = zipnn_xor_sizes(zipnn_py, base, ft)
                bound = floor(base, ft)["floor_ratio"]
                zstd1 = len(zstandard.ZstdCompressor(level=1).compress(model.read_bytes())) / size
                ratios = {}
                for mode in modes:
                    dest = scratch / f"{dt}-{role}-{mode}"
                    encode = [*cli, "encode", str(ft), "--base", str(base), "--out", str(dest)]
                    run([[*encode, "--compress", mode, "--quiet"]], scratch)
                    ratios[mode] = (dest / "model.safetensors").stat().st_size / size
                times: dict[str, list[float]] = {"zstd": [], "none": [], "cp": []}
                peak = 0
                for _ in range(repeat):
                    for mode in times:
                        out = scratch / "out"
                        shutil.rmtree(out, ignore_errors=True)
                        settle(False)
                        cmd = (
                            ["cp", "-r", str(ft), str(out)]
                            if mode == "cp"
                            else [
                                *cli,
                                "decode",
                                str(scratch / f"{dt}-{role}-{mode}"),
                                "--base",
                                str(base),
                                "--out",
                                str(out),
                                "--quiet",
                            ]
                        )
                        secs, rss = run([cmd], scratch)
                        times[mode].append(secs)
                        if mode == "zstd":
                            peak = max(peak, rss)
                            assert (out / "model.safetensors").read_bytes() == model.read_bytes()
                med = {m: statistics.median(t) for m, t in times.items()}
                print(
                    f"{dt:<5} {steps:>5} {size / 1e6:8.1f} {zstd1:7.3f} {z['zipnn_finetuned_ratio']:7.3f} "
                    f"{z['zipnn_xor_ratio']:9.3f} {bound:6.3f} "
                    + " ".join(f"{ratios[m]:13.3f}" for m in modes)
                    + f" {med['zstd']:8.2f} {med['none']:6.2f} {med['cp']:6.2f} {peak / 2**20:5.0f} MiB",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        "sizes are of model.safetensors (payload / fine-tuned); ZipNN on the fine-tuned tensors and on "
        "their XOR with the base, per tensor; floor: order-0 entropy of the zigzag difference per byte "
        "plane given the base's exponent (entropy_floor.py); decode s: median wall of the whole command, "
        "v1 = --compress none; every compressed decode checked byte for byte"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--pretrain-steps", type=int, default=20)
    ap.add_argument("--finetune-steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--zstd-levels", default="3,19", help="comma-separated zstd levels to report")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--shards", type=int, default=2, help="safetensors shards of the base and the fine-tune")
    ap.add_argument(
        "--minilm",
        type=Path,
        default=None,
        metavar="DIR",
        help="instead: the real-model report (all-MiniLM-L6-v2 fine-tuned in DIR, see minilm_pair.py)",
    )
    args = ap.parse_args()
    if args.minilm is not None:
        minilm(args.minilm, args.repeat)
        return
    torch.manual_seed(0)
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-native-", dir=args.workdir))
    try:
        t = time.perf_counter()
        ids = corpus_ids(2_000_000)
        p = build(args.dim, args.layers)
        pre_loss = train(p, ids, args.pretrain_steps, 3e-4, args.layers, args.heads)
        base_sd = {k: v.detach().to(torch.bfloat16) for k, v in p.items()}
        ft_loss = train(p, ids, args.finetune_steps, 1e-5, args.layers, args.heads)
        g = torch.Generator().manual_seed(1)
        ft_sd = {k: v.detach().to(torch.bfloat16) for k, v in p.items()}
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            ft_sd[k] = torch.cat(
                [ft_sd[k], (torch.randn(GROW, args.dim, generator=g) * 0.02).to(torch.bfloat16)]
            )
        n_params = sum(v.numel() for v in base_sd.values())
        changed = sum(int((ft_sd[k][: len(v)] != v).sum()) for k, v in base_sd.items())
        print(
            f"model: {n_params / 1e6:.1f} M parameters, bf16; pretrained {args.pretrain_steps} steps (loss "
            f"{pre_loss:.2f}), fine-tuned {args.finetune_steps} steps at lr 1e-5 (loss {ft_loss:.2f}); "
            f"{changed / n_params:.1%} of the base's bf16 values changed; "
            f"made in {time.perf_counter() - t:.0f} s",
            flush=True,
        )
        base_st, base_bin, ft = work / "base-st", work / "base-bin", work / "ft"
        save_shards(base_sd, base_st, args.shards, "safetensors")
        save_shards(dict(reversed(list(base_sd.items()))), base_bin, 3, "bin")
        save_shards(ft_sd, ft, args.shards, "safetensors")
        del p, base_sd, ft_sd
        py = sys.executable
        cli = [py, "-m", "xorweights.cli"]
        encode = [*cli, "encode", str(ft), "--base", str(base_st), "--quiet", "--out"]
        # Each encode runs `--repeat` times into a fresh folder (the last run's payload is decoded below).
        encodes: dict[str, tuple[list[float], list[int]]] = {}
        for name, dest, extra in (
            ("native", work / "native", []),
            ("native, --compress none", work / "native-v1", ["--compress", "none"]),
            (
                "legacy format (--format oasst)",
                work / "legacy",
                ["--format", "oasst", "--manifest", str(work / "legacy.json")],
            ),
        ):
            encodes[name] = ([], [])
            for _ in range(args.repeat):
                shutil.rmtree(dest, ignore_errors=True)
                settle(False)
                secs, rss = run([[*encode, str(dest), *extra]], work)  # as the decodes below
                encodes[name][0].append(secs)
                encodes[name][1].append(rss)
        size = folder_bytes(ft)
        columns = ["gzip -6", *(f"zstd -{v}" for v in args.zstd_levels.split(",") if v)]
        print(f"\n{'weights':<26} {'bytes':>12} " + " ".join(f"{k:>16}" for k in columns))
        for label, folder in (
            ("fine-tuned model", ft),
            ("native payload", work / "native"),
            ("native, --compress none", work / "native-v1"),
            ("legacy payload", work / "legacy"),
        ):
            sizes = compressed(folder, [int(v) for v in args.zstd_levels.split(",") if v])
            cells = " ".join(
                f"{sizes[k] / 2**20:8.1f} MiB {folder_bytes(folder) / sizes[k]:4.1f}x"
                if k in sizes
                else f"{'-':>16}"
                for k in columns
            )
            print(f"{label:<26} {folder_bytes(folder):>12} {cells}", flush=True)

        def out(tag: str) -> Path:
            d = work / f"out-{tag}"
            shutil.rmtree(d, ignore_errors=True)
            return d

        legacy_code = (
            "import sys, os; sys.path.insert(0, {root!r})\n"
            "from tests.legacy_reference import xor_uncompressed\n"
            "os.makedirs({dst!r}, exist_ok=True)\n"
            "for n in sorted(os.listdir({payload!r})):\n"
            "    if n.endswith('.safetensors'):\n"
            "        j = os.path.join\n"
            "        xor_uncompressed(j({dst!r}, n), j({payload!r}, n), j({base!r}, n))\n"
        )
        contenders = {
            "cp": lambda: [["cp", "-r", str(ft), str(out("cp"))]],
            "native vs safetensors base": lambda: [
                [
                    *cli,
                    "decode",
                    str(work / "native"),
                    "--base",
                    str(base_st),
                    "--out",
                    str(out("nst")),
                    "--quiet",
                ]
            ],
            "native v1 (--compress none)": lambda: [
                [
                    *cli,
                    "decode",
                    str(work / "native-v1"),
                    "--base",
                    str(base_st),
                    "--out",
                    str(out("nv1")),
                    "--quiet",
                ]
            ],
            "native vs .bin base": lambda: [
                [
                    *cli,
                    "decode",
                    str(work / "native"),
                    "--base",
                    str(base_bin),
                    "--out",
                    str(out("nbin")),
                    "--quiet",
                ]
            ],
            "legacy format (xorweights)": lambda: [
                [
                    *cli,
                    "decode",
                    str(work / "legacy"),
                    "--base",
                    str(base_st),
                    "--out",
                    str(out("leg")),
                    "--checksums",
                    str(work / "legacy.json"),
                    "--quiet",
                ]
            ],
            "legacy 4 KiB algorithm": lambda: [
                [
                    py,
                    "-c",
                    legacy_code.format(
                        root=str(ROOT), dst=str(out("l4k")), payload=str(work / "legacy"), base=str(base_st)
                    ),
                ]
            ],
        }
        results: dict[str, tuple[float, int]] = {}
        for name, make in contenders.items():
            times, peak = [], 0
            for _ in range(args.repeat):
                settle(False)
                secs, rss = run(make(), work)
                times.append(secs)
                peak = max(peak, rss)
            results[name] = (statistics.median(times), peak)
        for tag in ("nst", "nv1", "nbin", "leg"):
            same = subprocess.run(
                ["diff", "-r", "-q", "-x", ".xorweights-state.json", str(ft), str(work / f"out-{tag}")],
                capture_output=True,
            )
            assert same.returncode == 0, f"{tag} decode differs from the fine-tuned model: {same.stdout!r}"
        cp_s = results["cp"][0]
        print(
            f"\n{'decode (same pair, warm cache)':<32} {'wall s':>8} {'MB/s':>8} {'peak RSS':>10} {'x cp':>6}"
        )
        for name, (secs, rss) in results.items():
            print(
                f"{name:<32} {secs:8.2f} {size / secs / 1e6:8.0f} {rss / 2**20:7.0f} MiB {secs / cp_s:6.2f}"
            )
        print("all decodes byte-identical to the fine-tuned files (diff -r)")
        print(
            f"\n{'encode (same pair)':<32} {'wall s':>8} {'MB/s':>8} {'peak RSS':>10}  peak RSS of each run"
        )
        for name, (times, peaks) in encodes.items():
            secs = statistics.median(times)
            each = " ".join(f"{r / 2**20:.0f}" for r in peaks)
            print(
                f"{name:<32} {secs:8.2f} {size / secs / 1e6:8.0f} {max(peaks) / 2**20:7.0f} MiB  {each} MiB"
            )
        manifest = json.loads((work / "native" / "xorweights.json").read_text())
        print(
            f"xorweights.json: {len(json.dumps(manifest))} bytes, "
            f"{len(manifest['base_tensors'])} base tensors"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
