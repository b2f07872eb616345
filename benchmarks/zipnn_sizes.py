"""ZipNN sizes for a base / fine-tune pair: of the per-tensor XOR, and of the fine-tuned model alone.

Usage: python benchmarks/zipnn_sizes.py --python VENV_PYTHON BASE FINETUNED
       python benchmarks/zipnn_sizes.py --workdir DIR [--python VENV_PYTHON]

BASE and FINETUNED are safetensors files, or folders holding model.safetensors. Each tensor's
bytes in the fine-tune are XORed with the same tensor's bytes in the base (same name, dtype and
shape required) and ZipNN compresses each XOR on its own (`ZipNN(input_format="byte",
bytearray_dtype=...)` per the tensor's dtype; fp16, bf16 and fp32 only); the same is done to the
fine-tuned tensors alone. The `_concat` sizes compress all tensors of one dtype as one buffer,
as a whole-model ZipNN call would. ZipNN runs in VENV_PYTHON (see benchmarks/minilm_pair.py); it
reorders its input in place, so each call gets a copy. Ratios are over the fine-tuned file size.

With --workdir (a folder made by minilm_pair.py) every dtype's fine-tune and light fine-tune are
measured against its base, VENV_PYTHON defaulting to DIR/venv/bin/python; one JSON line each.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import struct
import subprocess
import time
from pathlib import Path

ZIPNN_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
WIDTH = {"F16": 2, "BF16": 2, "F32": 4}


def _model_file(path: Path) -> Path:
    return path / "model.safetensors" if path.is_dir() else path


def _read(path: Path) -> tuple[dict[str, dict], bytes]:
    """A safetensors file's tensor entries (dtype, shape, data_offsets) and its data section."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    return header, raw[8 + n :]


def _measure(base: Path, finetuned: Path) -> dict:
    """Run inside the venv: compress every tensor XOR and every fine-tuned tensor with ZipNN."""
    import numpy as np
    import zipnn

    def size(buf: bytes, dtype: str) -> int:
        z = zipnn.ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPES[dtype])
        return len(z.compress(bytearray(buf)))  # a copy: ZipNN reorders its input in place

    hb, db = _read(base)
    hf, df = _read(finetuned)
    if hb.keys() != hf.keys():
        raise ValueError(f"tensor names differ: {sorted(hb.keys() ^ hf.keys())[:5]}")
    r = dict.fromkeys(("zipnn_xor_bytes", "zipnn_finetuned_bytes", "tensor_bytes"), 0)
    elements = changed = 0
    xors: dict[str, list[bytes]] = {}
    fts: dict[str, list[bytes]] = {}
    t0 = time.monotonic()
    for name in sorted(hf):
        b, f = hb[name], hf[name]
        if (b["dtype"], b["shape"]) != (f["dtype"], f["shape"]):
            raise ValueError(f"{name}: base {b['dtype']}{b['shape']}, fine-tune {f['dtype']}{f['shape']}")
        if f["dtype"] not in ZIPNN_DTYPES:
            raise ValueError(f"{name}: dtype {f['dtype']} is not one ZipNN takes")
        fb = df[slice(*f["data_offsets"])]
        x = (np.frombuffer(fb, np.uint8) ^ np.frombuffer(db[slice(*b["data_offsets"])], np.uint8)).tobytes()
        r["tensor_bytes"] += len(fb)
        words = np.frombuffer(x, np.uint16 if WIDTH[f["dtype"]] == 2 else np.uint32)
        elements, changed = elements + words.size, changed + int(np.count_nonzero(words))
        r["zipnn_xor_bytes"] += size(x, f["dtype"])
        r["zipnn_finetuned_bytes"] += size(fb, f["dtype"])
        xors.setdefault(f["dtype"], []).append(x)
        fts.setdefault(f["dtype"], []).append(fb)
    r["zipnn_xor_concat_bytes"] = sum(size(b"".join(v), dt) for dt, v in xors.items())
    r["zipnn_finetuned_concat_bytes"] = sum(size(b"".join(v), dt) for dt, v in fts.items())
    r["file_bytes"] = finetuned.stat().st_size
    for k in ("zipnn_xor", "zipnn_xor_concat", "zipnn_finetuned", "zipnn_finetuned_concat"):
        r[f"{k}_ratio"] = round(r[f"{k}_bytes"] / r["file_bytes"], 4)
    r["changed_frac"] = round(changed / elements, 4)
    r.update(dtypes=sorted(xors), tensors=len(hf), seconds=round(time.monotonic() - t0, 1))
    r["zipnn"] = importlib.metadata.version("zipnn")
    return r


def zipnn_xor_sizes(venv_python: Path, base: Path, finetuned: Path) -> dict:
    """ZipNN sizes (bytes and ratios to the fine-tuned file) of the per-tensor XOR and of the fine-tune."""
    cmd = [venv_python, __file__, "--measure", _model_file(base), _model_file(finetuned)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", type=Path, nargs="?")
    ap.add_argument("finetuned", type=Path, nargs="?")
    ap.add_argument("--python", type=Path, help="interpreter with zipnn and numpy")
    ap.add_argument("--workdir", type=Path, help="a folder made by minilm_pair.py: measure all of it")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.base, args.finetuned)))
    elif args.workdir:
        py = args.python or args.workdir / "venv" / "bin" / "python"
        for dt in ("fp16", "bf16", "fp32"):
            for role in ("light", "strong"):
                r = zipnn_xor_sizes(py, args.workdir / dt / "base", args.workdir / dt / role)
                print(json.dumps({"dtype": dt, "pair": role, **r}), flush=True)
    elif args.base and args.finetuned and args.python:
        print(json.dumps(zipnn_xor_sizes(args.python, args.base, args.finetuned), indent=1))
    else:
        ap.error("give --python BASE FINETUNED, or --workdir")


if __name__ == "__main__":
    main()
