"""Additive-delta recovery (Vicuna style): `xorweights decode --recipe fastchat` vs FastChat's apply_delta.

Usage: python benchmarks/bench_delta.py [--layers 4] [--shard-gb 10] [--work DIR]
                                        [--peer-python /tmp/venv-fastchat/bin/python] [--save FILE] [--append]

It makes, once (kept in `--work`, default /tmp/bench-delta, and reused by later runs of the same
shape), a LLaMA-7B-shaped model of `--layers` layers (hidden 4096, intermediate 11008, 32 heads,
vocabulary 32000; 4 layers are 2.15 GB in fp16) twice, in the 2023 layout FastChat's script reads:
`base/` (seeded random fp16 weights) and `delta/` (a seeded small fp16 delta, same names and
shapes), each with config.json (LlamaForCausalLM, float16), `pytorch_model-0000K-of-0000M.bin`
shards (torch.save state dicts of at most `--shard-gb` GB) and pytorch_model.bin.index.json, and
the tokenizer files FastChat loads with `AutoTokenizer.from_pretrained(delta, use_fast=False)`
(the sentencepiece model of tests/golden/tokenizers/bpe-1000, tokenizer_config.json naming
LlamaTokenizer, special_tokens_map.json). As the 2023 checkpoints did, every layer also holds its
`rotary_emb.inv_freq` buffer (zero in the delta). Tensors are filled block by block in a
memory-mapped scratch file, so the maker's own memory stays small.

Then it times, one process at a time, each started by GNU time (wall, CPU = user + system of the
process tree, peak RSS of the largest process), after a `sync` and a read of every input file (the
page cache holds all inputs for every contender: warm cache for all, nothing dropped):
  - `xorweights decode DELTA --base BASE --out OUT --recipe fastchat --quiet` (next to python);
  - FastChat `python3 -m fastchat.model.apply_delta --base-model-path BASE --target-model-path OUT
    --delta-path DELTA` (both models loaded whole, then `save_pretrained`);
  - the same with `--low-cpu-mem` (inputs re-split into 4 GB temporary pieces, then added piece by
    piece; its temporary folders go under TMPDIR, set to a folder in `--work`).
'written' is `write_bytes` of the process tree (bench_hub.run_io: read from the GNU time process
before it is reaped), 'cancelled' its `cancelled_write_bytes` (dirty pages of files deleted before
writeback, e.g. temporary files); 'output' the apparent size of the files left in OUT.
Every tensor of each FastChat output is then checked bit for bit against xorweights' output
(names, dtypes, shapes and values; `rotary_emb.inv_freq` buffers are ignored: xorweights and
current transformers drop them, --low-cpu-mem copies them).

FastChat runs in a throwaway venv (`--peer-python`), made with:
  python3 -m venv /tmp/venv-fastchat
  /tmp/venv-fastchat/bin/pip install torch==2.13.0       # the local CPU build; unpinned pulls CUDA
  /tmp/venv-fastchat/bin/pip install "fschat==0.2.36" --no-deps
  /tmp/venv-fastchat/bin/pip install "transformers==4.46.3" accelerate sentencepiece protobuf tqdm \
      huggingface_hub numpy psutil
fschat 0.2.36's fastchat/model/apply_delta.py is byte for byte that of lm-sys/FastChat HEAD (last
changed in f475817683152f40eed36e72ae0bd9f976816fc4, #647); `-m fastchat.model.apply_delta` imports
fastchat/model/__init__.py, hence psutil. `--save FILE` writes the report to FILE (`--append`: adds
it at the end).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_decode import TIME, settle  # noqa: E402
from benchmarks.bench_hub import disk_bytes, run_io  # noqa: E402

HIDDEN, INTER, HEADS, VOCAB = 4096, 11008, 32, 32000
TOKENIZER = ROOT / "tests" / "golden" / "tokenizers" / "bpe-1000" / "tokenizer.model"
SKIP = "rotary_emb.inv_freq"
BLOCK = 16 * 2**20  # values generated at a time
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": HIDDEN,
    "initializer_range": 0.02,
    "intermediate_size": INTER,
    "max_position_embeddings": 2048,
    "model_type": "llama",
    "num_attention_heads": HEADS,
    "num_hidden_layers": 0,  # set per model
    "pad_token_id": 0,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.28.0.dev0",
    "use_cache": True,
    "vocab_size": VOCAB,
}
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "clean_up_tokenization_spaces": False,
    "legacy": True,
    "model_max_length": 2048,
    "pad_token": None,
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizer",
    **SPECIAL,
}
PEER_VERSIONS = (
    "import sys, torch, transformers, accelerate, sentencepiece, fastchat; "
    "print(f'python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
    "{transformers.__version__}, accelerate {accelerate.__version__}, sentencepiece "
    "{sentencepiece.__version__}, fschat {fastchat.__version__}')"
)


def llama_specs(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a LLaMA-7B-shaped checkpoint of `layers` layers, in the 2023 order."""
    specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [(f"{p}self_attn.{n}_proj.weight", (HIDDEN, HIDDEN)) for n in "qkvo"]
        specs += [
            (f"{p}self_attn.{SKIP}", (HIDDEN // HEADS // 2,)),
            (f"{p}mlp.gate_proj.weight", (INTER, HIDDEN)),
            (f"{p}mlp.down_proj.weight", (HIDDEN, INTER)),
            (f"{p}mlp.up_proj.weight", (INTER, HIDDEN)),
            (f"{p}input_layernorm.weight", (HIDDEN,)),
            (f"{p}post_attention_layernorm.weight", (HIDDEN,)),
        ]
    return specs + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def fill(out: np.ndarray, name: str, rng: np.random.Generator, delta: bool) -> None:
    """Base: weights ~ N(0, 0.02), norms ~ 1 + N(0, 0.02), LLaMA's inv_freq; delta: N(0, 1e-3), inv_freq 0."""
    flat = out.reshape(-1)
    if name.endswith(SKIP):
        flat[:] = 0 if delta else 1.0 / 10000 ** (np.arange(0, 2 * flat.size, 2) / (2 * flat.size))
        return
    scale, offset = (1e-3, 0.0) if delta else (0.02, 1.0 if out.ndim == 1 else 0.0)
    for start in range(0, flat.size, BLOCK):
        chunk = rng.standard_normal(min(BLOCK, flat.size - start), dtype=np.float32)
        chunk *= scale
        chunk += offset
        flat[start : start + chunk.size] = chunk


def make_model(folder: Path, layers: int, shard_bytes: int, seed: int, delta: bool) -> None:
    """One 2023-layout checkpoint folder (see the module docstring); `.complete` marks it done."""
    import torch

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    specs = llama_specs(layers)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in specs:
        n = int(np.prod(shape)) * 2
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    rng = np.random.default_rng(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(shards, 1):
        file = f"pytorch_model-{k:05d}-of-{len(shards):05d}.bin"
        scratch = folder / f".scratch-{k}"
        nbytes = sum(int(np.prod(s)) * 2 for _, s in group)
        with open(scratch, "wb") as f:
            f.truncate(nbytes)
        state: dict[str, torch.Tensor] = {}
        offset = 0
        for name, shape in group:
            mm = np.memmap(scratch, dtype=np.float16, mode="r+", offset=offset, shape=shape)
            fill(mm, name, rng, delta)
            state[name] = torch.from_numpy(mm)
            weight_map[name] = file
            offset += mm.nbytes
        torch.save(state, folder / file)
        del state, mm
        scratch.unlink()
        total += nbytes
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps({**CONFIG, "num_hidden_layers": layers}, indent=2) + "\n")
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2) + "\n"
    )
    shutil.copyfile(TOKENIZER, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL, indent=2) + "\n")
    (folder / ".complete").write_text(json.dumps({"layers": layers, "shard_bytes": shard_bytes}) + "\n")


def model_pair(work: Path, layers: int, shard_gb: float) -> tuple[Path, Path, str]:
    """Base and delta folders of this shape, made unless already complete; how long making took."""
    shard_bytes = int(shard_gb * 1e9)
    pair = work / f"llama7b-{layers}l-{shard_gb:g}gb"
    base, delta = pair / "base", pair / "delta"
    want = json.dumps({"layers": layers, "shard_bytes": shard_bytes}) + "\n"
    made = []
    for folder, seed, is_delta in ((base, 0, False), (delta, 1, True)):
        mark = folder / ".complete"
        if mark.is_file() and mark.read_text() == want:
            continue
        start = datetime.datetime.now()
        make_model(folder, layers, shard_bytes, seed, is_delta)
        made.append(f"{folder.name} made in {(datetime.datetime.now() - start).total_seconds():.0f} s")
    return base, delta, "; ".join(made) or "reused from an earlier run"


def pre_read(*folders: Path) -> None:
    """Read every file below `folders` once, so that all contenders start with the inputs cached."""
    for folder in folders:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                with open(f, "rb", buffering=0) as fp:
                    while fp.read(64 * 2**20):
                        pass


def timed_io(cmd: list[str], work: Path, env: dict[str, str]) -> tuple[float, float, int, int, int]:
    """`run_io` plus the CPU seconds (user + system) of the process tree it ran."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    secs, rss, wrote, cancelled = run_io(cmd, work, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return secs, cpu, rss, wrote, cancelled


def load_tensors(folder: Path) -> dict[str, object]:
    """name -> a zero-argument loader of that tensor, over the weight files of `folder`."""
    import torch
    from safetensors import safe_open

    found: dict[str, object] = {}
    for f in sorted(folder.glob("*.safetensors")):
        handle = safe_open(str(f), framework="pt")
        for name in handle.keys():
            found[name] = lambda h=handle, n=name: h.get_tensor(n)
    for f in sorted(folder.glob("*.bin")):
        state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        for name, t in state.items():
            found[name] = lambda t=t: t
    return found


def compare(ours: Path, theirs: Path) -> str:
    """Check that every tensor of `theirs` equals, bit for bit, the same tensor of `ours`."""
    import torch

    a, b = load_tensors(ours), load_tensors(theirs)
    skipped = sorted(n for n in (*a, *b) if n.endswith(SKIP))
    names_a = {n for n in a if not n.endswith(SKIP)}
    names_b = {n for n in b if not n.endswith(SKIP)}
    if names_a != names_b:
        raise SystemExit(
            f"{theirs}: tensor names differ from {ours}: only FastChat {sorted(names_b - names_a)[:5]}, "
            f"only xorweights {sorted(names_a - names_b)[:5]}"
        )
    values = 0
    for name in sorted(names_b):
        x, y = a[name](), b[name]()  # type: ignore[operator]
        if x.dtype != y.dtype or x.shape != y.shape:
            raise SystemExit(f"{name}: {x.dtype} {tuple(x.shape)} vs FastChat {y.dtype} {tuple(y.shape)}")
        if not torch.equal(x.view(torch.int16), y.view(torch.int16)):
            diff = int((x.view(torch.int16) != y.view(torch.int16)).sum())
            raise SystemExit(f"{name}: {diff} of {x.numel()} values differ from FastChat's ({theirs})")
        values += x.numel()
    return (
        f"{len(names_b)} tensors, {values / 1e6:.1f} M values bit-identical ({len(skipped)} {SKIP} ignored)"
    )


def git_state() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--short", "--untracked-files=no", "--", "xorweights")
    return f"xorweights at {git('rev-parse', '--short', 'HEAD')}" + (
        f" + uncommitted changes in {len(dirty.splitlines())} file(s) under xorweights/" if dirty else ""
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the LLaMA-7B-shaped model")
    ap.add_argument("--shard-gb", type=float, default=10.0, help="largest .bin shard, GB (1e9 bytes)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-delta"), help="models (kept) and outputs")
    ap.add_argument("--peer-python", default="/tmp/venv-fastchat/bin/python", help="python with fschat")
    ap.add_argument("--xorweights", default=str(Path(sys.executable).parent / "xorweights"))
    ap.add_argument("--save", type=Path, default=None, help="also write the report to this file")
    ap.add_argument("--append", action="store_true", help="with --save: add to the end of the file")
    args = ap.parse_args()
    if not Path(TIME).exists():
        raise SystemExit(f"{TIME} (GNU time) is needed to measure peak RSS: apt-get install time")
    peer = subprocess.run([args.peer_python, "-c", PEER_VERSIONS], capture_output=True, text=True)
    if peer.returncode != 0:
        raise SystemExit(f"{args.peer_python}: no FastChat venv (see the module docstring)\n{peer.stderr}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    base, delta, made = model_pair(work, args.layers, args.shard_gb)
    model_bytes = sum(f.stat().st_size for f in delta.glob("pytorch_model-*.bin"))
    params = sum(int(np.prod(s)) for n, s in llama_specs(args.layers) if not n.endswith(SKIP))
    print(f"model: {args.layers} layers, {params / 1e9:.2f} B parameters, {model_bytes / 1e9:.2f} GB; {made}")

    outs = {"xorweights": work / "out-xorweights", "fastchat": work / "out-fastchat"}
    outs["low"] = work / "out-fastchat-low"
    tmp = work / "tmp"
    fc = [args.peer_python, "-m", "fastchat.model.apply_delta", "--base-model-path", str(base)]
    contenders = [
        (
            "xorweights decode",
            "xorweights",
            [
                args.xorweights,
                "decode",
                str(delta),
                "--base",
                str(base),
                "--out",
                str(outs["xorweights"]),
                "--recipe",
                "fastchat",
                "--quiet",
            ],
        ),
        (
            "FastChat apply_delta",
            "fastchat",
            [*fc, "--target-model-path", str(outs["fastchat"]), "--delta-path", str(delta)],
        ),
        (
            "FastChat --low-cpu-mem",
            "low",
            [*fc, "--target-model-path", str(outs["low"]), "--delta-path", str(delta), "--low-cpu-mem"],
        ),
    ]
    env = {**os.environ, "TMPDIR": str(tmp), "HF_HOME": str(work / "hf-home"), "HF_HUB_OFFLINE": "1"}
    env["TRANSFORMERS_OFFLINE"] = "1"
    load = [os.getloadavg()[0]]
    rows: dict[str, tuple[float, float, int, int, int, int]] = {}
    checks: list[str] = []
    for label, key, cmd in contenders:
        for d in (outs[key], tmp):
            shutil.rmtree(d, ignore_errors=True)
        tmp.mkdir()
        pre_read(base, delta)
        settle(False)
        secs, cpu, rss, wrote, cancelled = timed_io(cmd, work, env)
        load.append(os.getloadavg()[0])
        output = disk_bytes(outs[key])
        rows[label] = (secs, cpu, rss, wrote, cancelled, output)
        print(
            f"{label:<24} {secs:8.2f} s {cpu:8.2f} CPU s {rss / 2**20:7.0f} MiB "
            f"{wrote / 1e6:9.1f} MB written {output / 1e6:9.1f} MB out",
            flush=True,
        )
        if key != "xorweights":
            checks.append(f"{label}: {compare(outs['xorweights'], outs[key])}")
            print(checks[-1], flush=True)
            shutil.rmtree(outs[key])
    shutil.rmtree(outs["xorweights"])
    shutil.rmtree(tmp, ignore_errors=True)

    mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    shards = len(list(delta.glob("pytorch_model-*.bin")))
    lines = [
        f"model: LLaMA-7B shapes (hidden {HIDDEN}, intermediate {INTER}, {HEADS} heads, vocabulary {VOCAB}), "
        f"{args.layers} layers:",
        f"  {params / 1e9:.3f} B parameters, {model_bytes / 1e9:.2f} GB of fp16 .bin shards each for base "
        f"and delta ({shards} shard(s) of <= {args.shard_gb:g} GB)",
        f"machine: {os.cpu_count()} cores, {mem / 2**30:.0f} GiB RAM, {platform.platform()};",
        f"  shared with other sessions: load average {' '.join(f'{v:.1f}' for v in load)} "
        "(before, then after each run)",
        f"xorweights: {sys.executable} (python {sys.version.split()[0]}); {git_state()}",
        f"FastChat: {args.peer_python}: {peer.stdout.strip()}",
        "cache: warm for all (every input file read just before each run; nothing dropped: no root)",
        "",
        f"{'tool':<24} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>12} {'written MB':>11} "
        f"{'cancelled MB':>12} {'output MB':>10} {'x out':>6}",
    ]
    for label, (secs, cpu, rss, wrote, cancelled, output) in rows.items():
        lines.append(
            f"{label:<24} {secs:8.2f} {cpu:8.2f} {rss / 2**20:12.0f} {wrote / 1e6:11.1f} "
            f"{cancelled / 1e6:12.1f} {output / 1e6:10.1f} {wrote / output:6.2f}"
        )
    ours = rows["xorweights decode"]
    for label in ("FastChat apply_delta", "FastChat --low-cpu-mem"):
        wall, rss = ours[0] / rows[label][0], ours[2] / rows[label][2]
        lines.append(f"xorweights / {label}: wall {wall:.2f}, peak RSS {rss:.3f}")
    lines += [
        "written: write_bytes of the process tree (GNU time's /proc/PID/io before reaping); cancelled: "
        "cancelled_write_bytes",
        "(pages of files deleted before writeback); output: files left in the output folder; x out: "
        "written / output",
        *(f"check: {c}" for c in checks),
        "",
        "commands:",
        f"  cd {ROOT} && {shlex.join([sys.executable, *sys.argv])}",
        *(f"  {shlex.join(cmd)}" for _, _, cmd in contenders),
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text, end="")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        header = f"# python benchmarks/bench_delta.py {shlex.join(sys.argv[1:])}   ({stamp})\n"
        gap = "\n" if args.append and args.save.is_file() and args.save.stat().st_size else ""
        with open(args.save, "a" if args.append else "w") as f:
            f.write(gap + header + text)


if __name__ == "__main__":
    main()
