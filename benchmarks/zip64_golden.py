"""ZIP64 check: a checkpoint with a record over 4 GiB, from real old torch vs xorweights' writer.

Usage: python benchmarks/zip64_golden.py OLD_TORCH_PYTHON [--workdir DIR]

OLD_TORCH_PYTHON is a Python with torch 2.0.1 (or 1.13.1) installed, e.g. a throwaway venv
(`pip install torch==2.0.1`); it is never needed in CI. The old torch saves a state dict whose
first tensor is 4.1 GiB (so its record needs ZIP64 sizes) followed by a small tensor (whose
header then sits past 4 GiB, needing a ZIP64 offset); xorweights then writes the same tensors
from the old file's bytes, and the two files must be identical. Peak RSS of our writer is shown.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xorweights.llama.torch_save import record_order, save_state_dict  # noqa: E402
from xorweights.tensors.spec import TensorSpec  # noqa: E402
from xorweights.tensors.torch_zip import read_checkpoint  # noqa: E402

OLD = """
import torch
big = torch.arange(4400 * 1024 * 1024 // 2, dtype=torch.int64).to(torch.float16)  # 4.1 GiB of fp16
small = torch.arange(1000, dtype=torch.float32)
torch.save({"big.weight": big, "small.weight": small}, PATH)
print(torch.__version__)
"""


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(64 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old_python")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="xw-zip64-", dir=ROOT))
    work.mkdir(parents=True, exist_ok=True)
    theirs, ours = work / "pytorch_model.bin", work / "ours" / "pytorch_model.bin"
    ours.parent.mkdir(exist_ok=True)
    t = time.perf_counter()
    version = subprocess.run(
        [args.old_python, "-c", OLD.replace("PATH", repr(str(theirs)))],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"torch {version} wrote {theirs.stat().st_size} bytes in {time.perf_counter() - t:.1f} s")
    ck = read_checkpoint(theirs)
    specs = [TensorSpec(n, r.dtype, r.shape) for n, r in ck.tensors.items()]
    t = time.perf_counter()
    with open(theirs, "rb") as src, open(ours, "wb") as out:

        def chunks(name: str):
            begin, end = ck.byte_range(name)
            src.seek(begin)
            left = end - begin
            while left:
                block = src.read(min(left, 64 << 20))
                left -= len(block)
                yield block

        save_state_dict(out, "pytorch_model", specs, ((s.name, chunks(s.name)) for s in record_order(specs)))
    print(
        f"xorweights wrote {ours.stat().st_size} bytes in {time.perf_counter() - t:.1f} s, "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    a, b = md5(theirs), md5(ours)
    print(f"md5 old torch {a}\nmd5 xorweights {b}\n{'IDENTICAL' if a == b else 'DIFFERENT'}")
    if a != b:
        raise SystemExit(1)
    for p in (theirs, ours):
        p.unlink()


if __name__ == "__main__":
    main()
