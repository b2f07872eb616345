"""The entropy floor of a fine-tune's payload: order-0 entropy of the zigzag difference per byte plane,
given the base element's exponent.

Usage: python benchmarks/entropy_floor.py BASE_DIR FINETUNED_DIR   (each holding model.safetensors)

For every tensor present in both files with the same dtype and shape, the difference of the bit
patterns (fine-tuned minus base, wrapping, as unsigned integers of the element's width) is
zigzag-encoded, as a delta frame stores it (docs/formats.md), and split into byte planes. Each
plane is charged its order-0 entropy within each class of elements whose base element has the same
exponent (float16: bits 10-14; bfloat16: bits 7-14; float32: bits 23-30; other dtypes: one class),
that is sum over classes of n_class * H(plane bytes in the class). No table, header or frame cost
is counted: a coder of this model can only come above the figure. Tensors of the fine-tune with no
base counterpart are charged their size. Prints the floor as a fraction of the fine-tuned file's
size, per plane too.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

#: dtype: (unsigned view, exponent shift, exponent mask).
_FLOATS = {
    "F16": (np.uint16, 10, 0x1F),
    "BF16": (np.uint16, 7, 0xFF),
    "F32": (np.uint32, 23, 0xFF),
}
_WIDTH = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def tensors(path: Path) -> tuple[dict[str, dict[str, object]], memoryview]:
    """A safetensors file's header entries and its data section."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    return header, memoryview(raw)[8 + n :]


def _entropy_bits(values: np.ndarray) -> float:
    """n * H(values) in bits, for bytes."""
    counts = np.bincount(values, minlength=256).astype(np.float64)
    counts = counts[counts > 0]
    n = counts.sum()
    return float(-(counts * np.log2(counts / n)).sum())


def floor(base_dir: Path, ft_dir: Path) -> dict[str, object]:
    """The floor of the pair's model.safetensors, as a fraction of the fine-tuned file, and per plane."""
    base, bdata = tensors(base_dir / "model.safetensors")
    ft, fdata = tensors(ft_dir / "model.safetensors")
    size = (ft_dir / "model.safetensors").stat().st_size
    bits = 0.0
    planes: dict[int, list[float]] = {}
    for name, t in ft.items():
        b0, b1 = t["data_offsets"]  # type: ignore[misc]
        b = base.get(name)
        if b is None or b["dtype"] != t["dtype"] or b["shape"] != t["shape"] or t["dtype"] not in _WIDTH:
            bits += 8.0 * (b1 - b0)
            continue
        w = _WIDTH[str(t["dtype"])]
        uint = _UINT[w]
        f = np.frombuffer(fdata[b0:b1], dtype=uint)
        c0, c1 = b["data_offsets"]  # type: ignore[misc]
        g = np.frombuffer(bdata[c0:c1], dtype=uint)
        d = (f - g).astype(uint)  # wrapping difference
        sign = (d >> np.array(8 * w - 1, dtype=uint)).astype(uint)
        z = ((d << np.array(1, dtype=uint)) ^ (np.zeros_like(d) - sign)).astype(uint)
        if str(t["dtype"]) in _FLOATS:
            _, shift, mask = _FLOATS[str(t["dtype"])]
            key = ((g.astype(np.uint32) >> shift) & mask).astype(np.int64)
        else:
            key = np.zeros(len(g), dtype=np.int64)
        zb = z.view(np.uint8).reshape(-1, w)
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        for j in range(w):
            col = zb[order, j]
            plane_bits = sum(_entropy_bits(part) for part in np.split(col, bounds))
            planes.setdefault(j, [0.0, 0.0])
            planes[j][0] += plane_bits
            planes[j][1] += 8.0 * len(col)
            bits += plane_bits
    return {
        "floor_ratio": round(bits / 8 / size, 4),
        "plane_ratios": {j: round(b / n, 4) for j, (b, n) in sorted(planes.items())},
        "finetuned_bytes": size,
    }


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    print(json.dumps(floor(Path(sys.argv[1]), Path(sys.argv[2])), indent=1))


if __name__ == "__main__":
    main()
