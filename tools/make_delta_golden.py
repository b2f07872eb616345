r"""Make the golden additive-delta fixtures with the REAL peer scripts. Never run in CI.

For each recipe this makes a tiny fine-tuned model from the tiny LLaMA base
(`tests/golden/llama-tiny-1shard/meta`, converted to HF with transformers' own `write_model`),
turns it into a delta release with the publisher's own make-delta code, then runs the peer's own
recovery script on (HF base, delta) and records every tensor the peer wrote (dtype, shape, sha256 of
its C-contiguous little-endian bytes) in `<recipe>/expected.json`. The delta folders are kept (they
are the inputs xorweights must recover from); the base and the recovered models are not.

Nothing is downloaded at run time: the peer files are read from a directory given with `--peers`,
laid out as below and taken unmodified from these commits (the mirrors are bare git dirs):

    PEERS/fastchat/{apply_delta,make_delta}.py
        lm-sys/FastChat @ 0e6d3e4beaab66f4d3f93db72541a4abab8af28d  fastchat/model/{apply_delta,make_delta}.py
        (HEAD, 2025-04-12; both files last changed 2023-04-29 / f4758176)
    PEERS/fastchat-v0/{apply_delta,make_delta}.py
        lm-sys/FastChat @ d245e37382ee0da849f608de2cf4652771066639  fastchat/model/{apply_delta,make_delta}.py
        (2023-04-06 "[FIX] Fix tokenizer (#251)": the v0 scripts that add `[PAD]` and zero its rows)
    PEERS/llava/llava/...   (the whole `llava` package, run as `python -m llava.model.apply_delta`)
        haotian-liu/LLaVA @ 6e38fbf504187954d5a47f6860645f60b3c8a585 (2023-04-30, "Fix")  llava/
        apply_delta.py there is byte-identical to HEAD c121f0432da27facab705978f83c4ada465e46fd; the
        model class LlavaLlamaForCausalLM is the one of that commit (llava/model/llava.py, for
        transformers 4.28), since HEAD's needs transformers 4.37.
    PEERS/alpaca/{weight_diff,train,utils}.py
        tatsu-lab/stanford_alpaca @ 761dc5bfbdeeffa89b8bff5d038781a4055f796a  (HEAD, 2023-05-29)
    PEERS/easylm/EasyLM/...   (the whole `EasyLM` package; koala only)
        young-geng/EasyLM @ 8aa5a9c5b425e6b98a18b4f09b6e9a38d6ec2a88  (2023-04-06, the Koala doc with the
        HF download link; EasyLM/scripts/diff_checkpoint.py is unchanged from 75ca80d to HEAD fe5b2c35,
        EasyLM/models/llama/convert_torch_to_easylm.py exists only in that era)

To reproduce (about twelve minutes on two cores, mostly transformers 4.28 converting the 32000-piece
sentencepiece model to a fast tokenizer, about three minutes each time it happens):

    python3.11 -m venv /tmp/venv-peers
    /tmp/venv-peers/bin/pip install torch==2.0.1 transformers==4.28.1 tokenizers==0.13.3 \
        sentencepiece==0.1.98 protobuf==3.20.3 "numpy<2" tqdm fire accelerate==0.18.0 openai==0.27.8
    P=/tmp/delta-peers; mkdir -p $P/fastchat $P/fastchat-v0 $P/llava $P/alpaca
    F=<bare git dir of lm-sys/FastChat>; L=<of haotian-liu/LLaVA>; A=<of tatsu-lab/stanford_alpaca>
    for f in apply_delta make_delta; do
      git --git-dir=$F show 0e6d3e4beaab66f4d3f93db72541a4abab8af28d:fastchat/model/$f.py > $P/fastchat/$f.py
      git --git-dir=$F show d245e37382ee0da849f608de2cf4652771066639:fastchat/model/$f.py \
        > $P/fastchat-v0/$f.py
    done
    git --git-dir=$L archive 6e38fbf504187954d5a47f6860645f60b3c8a585 llava | tar -x -C $P/llava
    for f in weight_diff train utils; do
      git --git-dir=$A show 761dc5bfbdeeffa89b8bff5d038781a4055f796a:$f.py > $P/alpaca/$f.py
    done
    # koala only: a second venv (the oldest jaxlib PyPI still has is 0.4.13)
    /root/.pyenv/versions/3.10.13/bin/python -m venv /tmp/venv-easylm
    /tmp/venv-easylm/bin/pip install jax==0.4.13 jaxlib==0.4.13 optax==0.1.5 chex==0.1.7 ml_collections \
        dill absl-py msgpack rich pyyaml "numpy<1.25" transformers==4.27.2 sentencepiece torch==2.0.1 \
        cloudpickle gcsfs==2023.3.0 fsspec==2023.3.0 wandb==0.13.5 "protobuf<4" scipy==1.10.1 ml_dtypes==0.2.0
    /tmp/venv-easylm/bin/pip install --no-deps flax==0.6.11 mlxu==0.1.9
    E=<bare git dir of young-geng/EasyLM>; mkdir -p $P/easylm
    git --git-dir=$E archive 8aa5a9c5b425e6b98a18b4f09b6e9a38d6ec2a88 EasyLM | tar -x -C $P/easylm

    /tmp/venv-peers/bin/python tools/make_delta_golden.py --peers $P --out tests/golden/delta \
        --work /tmp/delta-golden-work --recipes fastchat,fastchat-v0,llava,alpaca,koala \
        --easylm-python /tmp/venv-easylm/bin/python   # (those two are the defaults)

`accelerate` is needed by `low_cpu_mem_usage=True`/`device_map` (every peer uses one), `openai<1` only
because Alpaca's `train.py` imports its `utils.py`, which imports `openai.openai_object`. LLaVA's
config names its vision tower `openai/clip-vit-large-patch14`, which LLaVA's model class loads in its
constructor (it is held in a plain list, so it is in no state dict): a tiny random CLIPVisionModel is
saved under that relative path in the working directory the LLaVA steps run in, so the name resolves
to a local folder.

Koala: EasyLM's own `convert_torch_to_easylm` turns the Meta checkpoint into the fp16 streaming base,
the fine-tuned checkpoint is saved with EasyLM's StreamingCheckpointer (fp32), and EasyLM's
`diff_checkpoint` makes the diff (`--recover_diff=False`, bf16) and recovers (`--recover_diff=True`).
These run under jax 0.4.13, which moved `jax.experimental.PartitionSpec` and
`jax.experimental.maps.Mesh` to `jax.sharding`: `JAX_SHIM` aliases the two names back before the
peer module runs (via runpy, as `python -m`); nothing else is touched.

The 32000-piece sentencepiece model the peers need (`tokenizer/tokenizer.model`) is trained here,
deterministically, with LLaMA's trainer settings on a seeded synthetic corpus, unless it exists.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from llama_spm import LLAMA_TRAINER  # beside this tool (run as tools/make_delta_golden.py)

try:
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer
    from transformers.models.llama import convert_llama_weights_to_hf as convert
except ImportError:  # the EasyLM interpreter running --koala-helper has a pre-LLaMA transformers
    transformers = None

REPO = Path(__file__).resolve().parent.parent
BASE_META = "tests/golden/llama-tiny-1shard/meta"
PEERS = {
    "fastchat": {
        "repo": "lm-sys/FastChat",
        "commit": "0e6d3e4beaab66f4d3f93db72541a4abab8af28d",
        "path": "fastchat/model/apply_delta.py",
        "make_delta": "fastchat/model/make_delta.py (same commit)",
    },
    "fastchat-v0": {
        "repo": "lm-sys/FastChat",
        "commit": "d245e37382ee0da849f608de2cf4652771066639",
        "path": "fastchat/model/apply_delta.py",
        "make_delta": "fastchat/model/make_delta.py (same commit)",
    },
    "llava": {
        "repo": "haotian-liu/LLaVA",
        "commit": "6e38fbf504187954d5a47f6860645f60b3c8a585",
        "path": "llava/model/apply_delta.py",
        "make_delta": "llava/model/make_delta.py (same commit)",
        "same_file_at_head": "c121f0432da27facab705978f83c4ada465e46fd",
    },
    "koala": {
        "repo": "young-geng/EasyLM",
        "commit": "8aa5a9c5b425e6b98a18b4f09b6e9a38d6ec2a88",
        "path": "EasyLM/scripts/diff_checkpoint.py",
        "make_delta": "the same script with --recover_diff=False",
    },
    "alpaca": {
        "repo": "tatsu-lab/stanford_alpaca",
        "commit": "761dc5bfbdeeffa89b8bff5d038781a4055f796a",
        "path": "weight_diff.py",
        "make_delta": "weight_diff.py make_diff (same commit)",
    },
}
CLIP_NAME = "openai/clip-vit-large-patch14"
MM_HIDDEN = 32
LLAVA_TOKENS = ["<im_patch>", "<im_start>", "<im_end>"]


# ---------------------------------------------------------------- tokenizer and base


def make_tokenizer(out: Path) -> None:
    import sentencepiece as spm

    rng = np.random.default_rng(1234)
    cons, vow = "bcdfghjklmnpqrstvwxyz", "aeiou"
    syl = [c + v for c in cons for v in vow] + [c + v + e for c in cons[:8] for v in vow for e in "nrst"]
    syl_a = np.array(syl)
    words = ["".join(rng.choice(syl_a, size=rng.integers(1, 5))) for _ in range(60000)]
    lines = [" ".join(rng.choice(words, size=12)) for _ in range(20000)]
    lines += ["Numbers 1234567890, 3.14159; punctuation: (a) [b] {c} <d> 'e' \"f\" - _ / \\ ! ?"]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=32000, **LLAMA_TRAINER
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    (out / "toolchain.txt").write_text(
        f"sentencepiece {spm.__version__}, python {sys.version.split()[0]}; trained by "
        "tools/make_delta_golden.py (seeded synthetic corpus, LLaMA trainer settings, vocab_size 32000)\n"
    )


def make_hf_base(meta: Path, tok_model: Path, out: Path) -> None:
    """transformers' own converter, unmodified: weights (write_model) and tokenizer (write_tokenizer)."""
    convert.write_model(model_path=str(out), input_base_path=str(meta), model_size="7B")
    convert.write_tokenizer(str(out), str(tok_model))
    md5 = hashlib.md5((out / "pytorch_model.bin").read_bytes()).hexdigest()
    want = (REPO / "tests/golden/llama-tiny-1shard/hf.md5").read_text()
    assert f"{md5}  pytorch_model.bin" in want, "HF base differs from the committed conversion"


# ---------------------------------------------------------------- fine-tuned models


def _noise(rng, t: torch.Tensor, scale: float = 0.01) -> torch.Tensor:
    return torch.from_numpy(rng.normal(0.0, scale, size=tuple(t.shape)).astype(np.float64))


def plant_fp16(rng, base: torch.Tensor, tgt: torch.Tensor, n: int = 6) -> list[str]:
    """Exact-zero deltas, and targets whose fp16 difference from the base is an exact tie."""
    b, t = base.view(-1), tgt.view(-1)
    idx = rng.choice(b.numel(), size=n, replace=False)
    t[idx] = b[idx]  # delta exactly +0
    bf = b.double()
    k = bf * 1024
    cand = torch.nonzero((bf.abs() >= 0.25) & (bf.abs() < 0.5) & (k == k.round()) & (k.remainder(2) == 1))
    cand = cand.view(-1).numpy()
    pick = rng.choice(cand, size=min(n, cand.size), replace=False)
    for i in pick:  # |t - b| in [2, 4) (fp16 ulp 2^-9) and t - b = odd multiple of 2^-10: a tie
        t[i] = torch.tensor(float(b[i]) + np.sign(float(b[i])) * 2.5).half()
    return [f"{len(idx)} exact-zero deltas", f"{len(pick)} fp16 ties (|b| in [.25,.5), |t-b|~2.5)"]


def plant_fp32(rng, base: torch.Tensor, tgt: torch.Tensor, n: int = 6) -> list[str]:
    b, t = base.view(-1), tgt.view(-1)
    idx = rng.choice(b.numel(), size=n, replace=False)
    t[idx] = b[idx]
    cand = torch.nonzero(b <= -(2.0**-12)).view(-1).numpy()
    pick = rng.choice(cand, size=n, replace=False)
    for j, i in enumerate(pick):  # t in [3.5, 4) odd multiple of 2^-22, t - b in [4, 8): a tie
        t[i] = 4.0 - (2 * j + 1) * 2.0**-22
    return [f"{len(idx)} exact-zero deltas", f"{len(pick)} fp32 ties (t=4-(2j+1)2^-22, b<0)"]


def raw_rows(rng, shape, dtype) -> torch.Tensor:
    """Values of rows the base lacks: random, plus -0.0, +0.0, subnormals and fp16's max."""
    r = torch.from_numpy(rng.normal(0.0, 0.5, size=shape)).to(dtype)
    flat = r.view(-1)
    specials = [-0.0, 0.0, -0.0, 2.0**-24, -(2.0**-24), 65504.0, 1.0 + 2.0**-10]
    flat[: len(specials)] = torch.tensor(specials, dtype=dtype)
    return r


def fine_tuned(base_sd: dict, rng, dtype, vocab: int, notes: list[str]) -> dict:
    """base + N(0, 0.01) in `dtype`; rows past the base's vocabulary random (raw_rows)."""
    out = {}
    for name, v in base_sd.items():
        if "rotary_emb.inv_freq" in name:
            out[name] = v.to(dtype).clone()
            continue
        t = (v.double() + _noise(rng, v)).to(dtype)
        if name in ("model.embed_tokens.weight", "lm_head.weight") and vocab > v.shape[0]:
            t = torch.cat([t, raw_rows(rng, (vocab - v.shape[0], v.shape[1]), dtype)])
        out[name] = t
    plant = plant_fp16 if dtype == torch.float16 else plant_fp32
    for name in ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        b = base_sd[name].to(dtype)
        notes += [f"{name}: {s}" for s in plant(rng, b, out[name][: b.shape[0]])]
    return out


def make_tokenizer_for(ctx, extra: list[str] | None = None, pad: bool = False, fast: bool = False):
    """The fine-tuned model's tokenizer: the base's, grown. Fast ones are loaded from the base's
    tokenizer.json (converting a 32000-piece model to a fast tokenizer takes minutes here)."""
    if fast:
        tok = transformers.LlamaTokenizerFast.from_pretrained(ctx.base)
    else:
        tok = LlamaTokenizer(str(ctx.tok))
    if pad:
        tok.add_special_tokens({"pad_token": "[PAD]"})
    if extra:
        tok.add_tokens(extra, special_tokens=True)
    return tok


def save_llama(sd: dict, base_dir: Path, out: Path, dtype, tok) -> None:
    cfg = LlamaConfig.from_pretrained(base_dir)
    cfg.vocab_size = sd["model.embed_tokens.weight"].shape[0]
    model = LlamaForCausalLM(cfg).to(dtype)
    model.load_state_dict(sd)
    model.save_pretrained(out)
    tok.save_pretrained(out)


# ---------------------------------------------------------------- peers


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(cmd: list[str], cwd: Path | None = None, env_path: Path | None = None) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    if env_path is not None:
        env["PYTHONPATH"] = str(env_path)
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


@contextlib.contextmanager
def chdir(p: Path):
    old = os.getcwd()
    os.chdir(p)
    try:
        yield
    finally:
        os.chdir(old)


def make_clip(work: Path) -> None:
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=MM_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    transformers.CLIPVisionModel(cfg).save_pretrained(work / CLIP_NAME)


# ---------------------------------------------------------------- recording


DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}


def digest(t: torch.Tensor) -> dict:
    raw = t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    assert sys.byteorder == "little"
    return {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "sha256": hashlib.sha256(raw).hexdigest()}


def load_output(d: Path) -> dict:
    sd = {}
    for f in sorted(d.glob("*.bin")):
        sd.update(torch.load(f, map_location="cpu"))
    for f in sorted(d.glob("*.safetensors")):
        from safetensors.torch import load_file

        sd.update(load_file(f))
    return sd


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view({2: torch.int16, 4: torch.int32}[t.element_size()])


def observe(base: dict, delta: dict, out: dict, pad_mean: bool = False) -> list[str]:
    """What the peer did, read off its output: checked facts, written into the notes."""
    seen = []
    inv = sorted(k for k in out if k.endswith("rotary_emb.inv_freq"))
    if inv:
        same = all(torch.equal(out[k], base[k].to(out[k].dtype)) for k in inv)
        seen.append(
            f"OBSERVED: {len(inv)} rotary_emb.inv_freq buffers saved, dtype {out[inv[0]].dtype}"
            f" (base file: {base[inv[0]].dtype}, delta file: {delta[inv[0]].dtype}, delta all zero:"
            f" {all(not delta[k].any() for k in inv)}), equal to the base's: {same}."
        )
    exact = [k for k in out if k in base and out[k].shape == base[k].shape]
    ok = all(
        torch.equal(_bits(out[k]), _bits(base[k].to(delta[k].dtype) + delta[k]))
        for k in exact
        if out[k].dtype == delta[k].dtype
    )
    seen.append(
        f"OBSERVED: same-shape tensors ({len(exact)}) bitwise equal base.to(delta dtype) + delta"
        f" in {delta[exact[0]].dtype}: {ok}."
    )
    for k in out:
        if k in base and out[k].shape != base[k].shape:
            n = base[k].shape[0]
            top = torch.equal(_bits(out[k][:n]), _bits(base[k].to(delta[k].dtype) + delta[k][:n]))
            rows, drows = out[k][n:], delta[k][n:]
            negz_d = int((drows == 0).logical_and(drows.signbit()).sum())
            negz_o = int((rows == 0).logical_and(rows.signbit()).sum())
            s = (
                f"OBSERVED: {k} {tuple(out[k].shape)}: rows [:{n}] == base + delta: {top}; rows {n}+"
                f" bitwise == delta rows: {torch.equal(_bits(rows), _bits(drows))}, by value:"
                f" {torch.equal(rows, drows)}; -0.0 in delta rows {negz_d}, in output rows {negz_o}"
            )
            if pad_mean:
                mean = base[k].to(rows.dtype).mean(dim=0, keepdim=True)
                s += (
                    f"; == base[:{n}].mean(0, keepdim) + delta rows (fp32): {torch.equal(rows, mean + drows)}"
                )
            seen.append(s + ".")
        elif k not in base:
            same = torch.equal(_bits(out[k]), _bits(delta[k]))
            seen.append(f"OBSERVED: {k} (not in base) bitwise == delta's: {same}.")
    return seen


def record(recipe: str, out_root: Path, target: Path, notes: list[str], model_sum=None, base=None) -> None:
    sd = load_output(target)
    if base is not None:
        notes = notes + observe(
            base, load_output(out_root / recipe / "delta"), sd, pad_mean=recipe == "alpaca"
        )
    exp = {
        "recipe": recipe,
        "peer": {k: PEERS[recipe][k] for k in ("repo", "commit", "path")},
        "toolchain": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "accelerate": __import__("accelerate").__version__,
            "tokenizers": __import__("tokenizers").__version__,
            "sentencepiece": __import__("sentencepiece").__version__,
        },
        "base": BASE_META,
        "peer_output_files": sorted(p.name for p in target.iterdir()),
        "tensors": {k: digest(v) for k, v in sd.items()},
        "model_sum": model_sum,
        "notes": " ".join(notes),
    }
    (out_root / recipe / "expected.json").write_text(json.dumps(exp, indent=1) + "\n")


def publish(delta: Path, dest: Path, drop: tuple[str, ...] = ()) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(delta, dest, ignore=shutil.ignore_patterns(*drop) if drop else None)


# ---------------------------------------------------------------- recipes


def fresh_dir(w: Path) -> Path:
    """`w`, emptied (a recipe's working folder)."""
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    return w


def recipe_fastchat(ctx, v0: bool) -> None:
    recipe = "fastchat-v0" if v0 else "fastchat"
    peer, w = ctx.peers / recipe, fresh_dir(ctx.work / recipe)
    rng = np.random.default_rng(11 if v0 else 10)
    notes: list[str] = []
    vocab = 32001 if v0 else 32000
    tgt_sd = fine_tuned(ctx.base_sd, rng, torch.float16, vocab, notes)
    save_llama(tgt_sd, ctx.base, w / "target", torch.float16, make_tokenizer_for(ctx, pad=v0))
    mk = load_module(peer / "make_delta.py", f"{recipe.replace('-', '_')}_make_delta")
    mk.args = argparse.Namespace(hub_repo_id=None)  # the script reads the global `args`; no push
    torch.manual_seed(0)
    mk.make_delta(str(ctx.base), str(w / "target"), str(w / "delta"))
    publish(w / "delta", ctx.out / recipe / "delta")
    run(
        [
            sys.executable,
            str(peer / "apply_delta.py"),
            "--base-model-path",
            str(ctx.base),
            "--target-model-path",
            str(w / "out"),
            "--delta-path",
            str(ctx.out / recipe / "delta"),
        ]
    )
    notes.insert(
        0, f"target = base + N(0,0.01) in fp16, vocab {vocab}; delta by the same commit's make_delta."
    )
    if v0:
        notes.append(
            "target row 32000 (the [PAD] row) random with -0.0/+0.0/subnormals/65504 planted;"
            " the v0 scripts zero the base's grown row, so delta row 32000 = target row."
        )
    record(recipe, ctx.out, w / "out", notes, base=ctx.base_sd)


def recipe_llava(ctx) -> None:
    recipe = "llava"
    peer, w = ctx.peers / recipe, fresh_dir(ctx.work / recipe)
    make_clip(w)
    sys.path.insert(0, str(peer))
    from llava.model.llava import LlavaConfig, LlavaLlamaForCausalLM  # the peer's model class

    rng = np.random.default_rng(12)
    notes: list[str] = []
    tgt_sd = fine_tuned(ctx.base_sd, rng, torch.float16, 32003, notes)
    tgt_sd["model.mm_projector.weight"] = raw_rows(rng, (16, MM_HIDDEN), torch.float16)
    tgt_sd["model.mm_projector.bias"] = raw_rows(rng, (16,), torch.float16)
    cfg = LlavaConfig(
        **{
            k: v
            for k, v in LlamaConfig.from_pretrained(ctx.base).to_dict().items()
            if k not in ("model_type", "architectures", "transformers_version")
        }
    )
    cfg.vocab_size = 32003
    cfg.architectures = ["LlavaLlamaForCausalLM"]
    cfg.mm_vision_tower = CLIP_NAME
    cfg.mm_hidden_size = MM_HIDDEN
    cfg.mm_vision_select_layer = -2
    cfg.mm_use_im_start_end = True
    cfg.use_mm_proj = True
    cfg.tune_mm_mlp_adapter = False
    with chdir(w):
        model = LlavaLlamaForCausalLM(cfg).to(torch.float16)
        model.load_state_dict(tgt_sd)
        model.save_pretrained(w / "target")
        make_tokenizer_for(ctx, extra=LLAVA_TOKENS, fast=True).save_pretrained(w / "target")
        mk = load_module(peer / "llava/model/make_delta.py", "llava_make_delta")
        mk.make_delta(str(ctx.base), str(w / "target"), str(w / "delta"), None)
    # make_delta saved the fast tokenizer (tokenizer.json too); LLaVA's 2023 delta repos carried the
    # sentencepiece files only, so tokenizer.json is not published (apply_delta rebuilds it).
    publish(w / "delta", ctx.out / recipe / "delta", drop=("tokenizer.json",))
    run(
        [
            sys.executable,
            "-m",
            "llava.model.apply_delta",
            "--base-model-path",
            str(ctx.base),
            "--target-model-path",
            str(w / "out"),
            "--delta-path",
            str(ctx.out / recipe / "delta"),
        ],
        cwd=w,
        env_path=peer,
    )
    notes.insert(
        0,
        "target = LLaVA model (6e38fbf class) fp16, vocab 32003 (<im_patch>,<im_start>,<im_end>"
        " added), rows 32000-32002 and mm_projector raw random with -0.0/+0.0/subnormals/65504"
        f" planted; mm_hidden_size {MM_HIDDEN}; vision tower = tiny random CLIP saved at"
        f" ./{CLIP_NAME} in the working dir; delta by LLaVA's make_delta (same commit).",
    )
    record(recipe, ctx.out, w / "out", notes, base=ctx.base_sd)


def recipe_alpaca(ctx) -> None:
    recipe = "alpaca"
    peer, w = ctx.peers / recipe, fresh_dir(ctx.work / recipe)
    rng = np.random.default_rng(13)
    notes: list[str] = []
    base32 = {k: v.float() for k, v in ctx.base_sd.items()}
    tgt_sd = fine_tuned(base32, rng, torch.float32, 32001, notes)
    save_llama(tgt_sd, ctx.base, w / "tuned", torch.float32, make_tokenizer_for(ctx, pad=True, fast=True))
    sys.path.insert(0, str(peer))
    wd = load_module(peer / "weight_diff.py", "alpaca_weight_diff")
    torch.manual_seed(0)
    wd.make_diff(str(ctx.base), str(w / "tuned"), str(w / "delta"))
    publish(w / "delta", ctx.out / recipe / "delta", drop=("tokenizer.json",))
    run(
        [
            sys.executable,
            str(peer / "weight_diff.py"),
            "recover",
            "--path_raw",
            str(ctx.base),
            "--path_diff",
            str(ctx.out / recipe / "delta"),
            "--path_tuned",
            str(w / "out"),
            "--check_integrity_naively",
            "False",
            "--test_inference",
            "False",
        ],
        cwd=peer,
    )
    sd = load_output(w / "out")
    allsum = sum(sd[key].sum() for key in sd)  # the script's own expression, on what it saved
    notes.insert(
        0,
        "tuned = base(fp32) + N(0,0.01) in fp32, vocab 32001 ([PAD]); row 32000 random with"
        " -0.0/+0.0/subnormals planted; diff by weight_diff.make_diff (same commit); recover run"
        " with --check_integrity_naively False --test_inference False; model_sum ="
        " sum(sd[k].sum() for k in sd) over the saved state dict in its order (fp32).",
    )
    record(recipe, ctx.out, w / "out", notes, model_sum=float(allsum), base=ctx.base_sd)


# ---------------------------------------------------------------- koala (EasyLM, JAX)

JAX_SHIM = (  # EasyLM of 2023-04 imports two names that jax >= 0.4.13 (the oldest jaxlib on PyPI
    # now) moved to jax.sharding; aliasing them back is the only change to the peer's environment.
    "import jax, jax.experimental, jax.experimental.maps, jax.sharding; "
    "jax.experimental.PartitionSpec = jax.sharding.PartitionSpec; "
    "jax.experimental.maps.Mesh = jax.sharding.Mesh; "
)


VERSIONS = (
    "import json, platform, importlib.metadata as m; print(json.dumps({'python': platform.python_version(),"
    " **{p: m.version(p) for p in ('jax', 'jaxlib', 'flax', 'mlxu', 'numpy', 'ml_dtypes', 'msgpack')}}))"
)


def run_easylm(ctx, module: str, *flags: str) -> None:
    code = (
        JAX_SHIM + f"import runpy, sys; sys.argv = [{module!r}] + sys.argv[1:]; "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    env = dict(os.environ, PYTHONPATH=str(ctx.peers / "easylm"), JAX_PLATFORMS="cpu")
    cmd = [ctx.easylm_python, "-c", code, *flags]
    print("+", module, " ".join(flags), flush=True)
    subprocess.run(cmd, env=env, check=True, cwd=ctx.peers / "easylm")


def koala_helper(args: list[str]) -> None:
    """Runs inside the EasyLM interpreter: `target BASE OUT` or `digest FILE`."""
    exec(JAX_SHIM)
    import ml_dtypes  # noqa: F401  (numpy bfloat16)
    from EasyLM.checkpoint import StreamingCheckpointer
    from flax.traverse_util import flatten_dict, unflatten_dict

    if args[0] == "target":
        flat = flatten_dict(StreamingCheckpointer.load_checkpoint(args[1]))
        rng = np.random.default_rng(14)
        notes = []
        out = {}
        for key, b in flat.items():
            t = (b.astype(np.float64) + rng.normal(0.0, 0.01, size=b.shape)).astype(np.float32)
            if key[-2:] == ("wq", "kernel") or key[-1] == "embedding" or key == ("lm_head", "kernel"):
                bf, tf = b.reshape(-1), t.reshape(-1)
                idx = rng.choice(bf.size, size=6, replace=False)
                tf[idx] = bf[idx]  # diff exactly 0
                cand = np.nonzero((np.abs(bf) >= 0.25) & (np.abs(bf) < 0.5))[0]
                pick = rng.choice(cand, size=6, replace=False)
                tf[pick] = bf[pick].astype(np.float32) + np.float32(1.0 + 2.0**-8)  # t - b: a bf16 tie
                notes.append("/".join(key) + ": 6 exact-zero diffs, 6 bf16 ties (t = b + 1 + 2^-8)")
            out[key] = t
        StreamingCheckpointer.save_train_state_to_file(unflatten_dict(out), args[2], float_dtype="fp32")
        print(json.dumps(notes))
    elif args[0] == "digest":  # in the file's own order, read as EasyLM's load_checkpoint reads it
        import msgpack
        from flax.serialization import from_bytes

        names = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
        res = {}
        with open(args[1], "rb") as fin:
            pairs = [(tuple(k), from_bytes(None, v)) for k, v in msgpack.Unpacker(fin, max_buffer_size=0)]
        for key, v in pairs:
            v = np.ascontiguousarray(v)
            assert v.dtype.byteorder in "=<|"
            res["/".join(key)] = {
                "dtype": names[v.dtype.name],
                "shape": list(v.shape),
                "sha256": hashlib.sha256(v.tobytes()).hexdigest(),
            }
        print(json.dumps(res))


def recipe_koala(ctx) -> None:
    recipe = "koala"
    w = fresh_dir(ctx.work / recipe)
    env = dict(os.environ, PYTHONPATH=str(ctx.peers / "easylm"), JAX_PLATFORMS="cpu")

    def helper(*a: str) -> str:
        return subprocess.run(
            [ctx.easylm_python, str(Path(__file__).resolve()), "--koala-helper", *a],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()[-1]

    base = w / "llama_7b_easylm"
    run_easylm(
        ctx,
        "EasyLM.models.llama.convert_torch_to_easylm",
        f"--checkpoint_dir={REPO / BASE_META}",
        f"--output_file={base}",
        "--streaming=True",
    )
    notes = json.loads(helper("target", str(base), str(w / "koala_target")))
    run_easylm(
        ctx,
        "EasyLM.scripts.diff_checkpoint",
        "--recover_diff=False",
        f"--load_base_checkpoint=params::{base}",
        f"--load_target_checkpoint=params::{w / 'koala_target'}",
        f"--output_file={w / 'koala_7b_diff_v2'}",
        "--streaming=True",
    )
    dest = ctx.out / recipe / "delta"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copy(w / "koala_7b_diff_v2", dest / "koala_7b_diff_v2")
    out = w / "out"
    out.mkdir()
    run_easylm(
        ctx,
        "EasyLM.scripts.diff_checkpoint",
        "--recover_diff=True",
        f"--load_base_checkpoint=params::{base}",
        f"--load_target_checkpoint=params::{dest / 'koala_7b_diff_v2'}",
        f"--output_file={out / 'koala_7b'}",
        "--streaming=True",
    )
    tensors = json.loads(helper("digest", str(out / "koala_7b")))
    base_digest = json.loads(helper("digest", str(base)))
    exp = {
        "recipe": recipe,
        "peer": {k: PEERS[recipe][k] for k in ("repo", "commit", "path")},
        "toolchain": json.loads(
            subprocess.run(
                [ctx.easylm_python, "-c", VERSIONS], env=env, check=True, capture_output=True, text=True
            ).stdout
        ),
        "base": BASE_META,
        "base_easylm_tensors": base_digest,
        "peer_output_files": sorted(p.name for p in out.iterdir()),
        "tensors": tensors,
        "model_sum": None,
        "notes": " ".join(
            [
                "Base = the Meta checkpoint converted by EasyLM's own convert_torch_to_easylm (same commit;"
                " --streaming=True, no float_dtype so the fp16 tensors stay fp16; kernels transposed,"
                " q/k NOT permuted; no rope/inv_freq). Fine-tuned = fp32(base) + N(0,0.01) in fp32, saved"
                " with EasyLM's StreamingCheckpointer (float_dtype fp32)."
                " Diff = diff_checkpoint --recover_diff=False"
                " (target - base, default float_dtype bf16). Recovery = diff_checkpoint --recover_diff=True"
                " --streaming=True: tree_map(b + t) on numpy arrays (fp16 + bf16 -> float32), saved with the"
                " default float_dtype 'bf16', so the recovered checkpoint is bf16 in EasyLM layout. Not"
                " converted to HF (the koala doc's later HF step, convert_easylm_to_hf, needs a standard"
                " LLaMA size). Run under jax 0.4.13 with two import aliases (JAX_SHIM).",
                *notes,
            ]
        ),
    }
    (ctx.out / recipe / "expected.json").write_text(json.dumps(exp, indent=1) + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--koala-helper":
        return koala_helper(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "tests/golden/delta")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--recipes", default="fastchat,fastchat-v0,llava,alpaca,koala")
    ap.add_argument("--reuse-base", action="store_true", help="keep WORK/base-hf from an earlier run")
    ap.add_argument("--easylm-python", default="/tmp/venv-easylm/bin/python")
    a = ap.parse_args()
    ctx = argparse.Namespace(peers=a.peers.resolve(), out=a.out.resolve(), easylm_python=a.easylm_python)
    ctx.work = (a.work or Path(tempfile.mkdtemp(prefix="delta-golden-"))).resolve()
    ctx.tok = ctx.out / "tokenizer" / "tokenizer.model"
    if not ctx.tok.exists():
        make_tokenizer(ctx.tok.parent)
    ctx.base = ctx.work / "base-hf"
    if any(r != "koala" for r in a.recipes.split(",")):  # koala starts from the Meta files
        if not (a.reuse_base and (ctx.base / "tokenizer.json").exists()):
            shutil.rmtree(ctx.base, ignore_errors=True)
            make_hf_base(REPO / BASE_META, ctx.tok, ctx.base)
        ctx.base_sd = torch.load(ctx.base / "pytorch_model.bin")
    for r in a.recipes.split(","):
        (ctx.out / r).mkdir(parents=True, exist_ok=True)
        if r in ("fastchat", "fastchat-v0"):
            recipe_fastchat(ctx, v0=r == "fastchat-v0")
        elif r == "llava":
            recipe_llava(ctx)
        elif r == "alpaca":
            recipe_alpaca(ctx)
        elif r == "koala":
            recipe_koala(ctx)
        else:
            raise SystemExit(f"unknown recipe {r}")
        print("done", r, flush=True)


if __name__ == "__main__":
    main()
