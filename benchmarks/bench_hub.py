"""What the Hub path costs on top of a local decode: publish, download, the sha256 check, second runs.

Usage: python benchmarks/bench_hub.py [--mb 512] [--workdir DIR]

Makes a float16 model of about `--mb` MB and a fine-tuned copy, encodes a native payload, serves
an empty Hub from `tests/hubserver.py` in another process on 127.0.0.1 (plain HTTP, no Xet), and
times, each as its own `xorweights` process under GNU time (wall seconds, peak RSS):

  - `cp -r` of the payload (the floor for reading and writing those bytes here);
  - `publish` (hash every payload file against xorweights.json, upload, compare the Hub's sha256);
  - `decode OWNER/NAME` into an empty Hub cache (download, check every payload file against the
    Hub's sha256, decode);
  - the same command again with everything in place;
  - `decode OWNER/NAME` offline from the cache into a new folder (check + decode, no download);
  - `decode PAYLOAD_DIR` of the same payload folder (no Hub, no payload check).

The offline run minus the local one is what the payload check costs. Download speed over
localhost from a Python test server says nothing about the real Hub; it is reported for
completeness.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_decode import run, settle  # noqa: E402

SERVE = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.hubserver import HubServer
with HubServer(Path({store!r}), token="hf_bench") as hub:
    print(hub.url, flush=True)
    sys.stdin.read()
"""


def make_pair(work: Path, mb: int) -> tuple[Path, Path]:
    """Base and fine-tune: float16 tensors of 32 MiB, the fine-tune nudged by small noise."""
    rng = np.random.default_rng(0)
    n = max(1, mb // 32)
    base, ft = {}, {}
    for i in range(n):
        t = rng.standard_normal(16 * 2**20, dtype=np.float32).astype(np.float16).reshape(4096, 4096)
        base[f"model.layers.{i}.mlp.up_proj.weight"] = t
        ft[f"model.layers.{i}.mlp.up_proj.weight"] = t + np.float16(1e-3) * rng.standard_normal(
            t.shape
        ).astype(np.float16)
    (work / "base").mkdir()
    (work / "ft").mkdir()
    half = (n + 1) // 2
    names = sorted(base)
    for k, group in enumerate((names[:half], names[half:]), 1):
        if group:
            save_file({g: base[g] for g in group}, str(work / "base" / f"model-{k:05d}-of-00002.safetensors"))
            save_file({g: ft[g] for g in group}, str(work / "ft" / f"model-{k:05d}-of-00002.safetensors"))
    (work / "ft" / "config.json").write_text('{"model_type": "llama"}\n')
    return work / "base", work / "ft"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-hub-", dir=args.workdir))
    try:
        base, ft = make_pair(work, args.mb)
        py = sys.executable
        subprocess.run(
            [
                py,
                "-m",
                "xorweights.cli",
                "encode",
                str(ft),
                "--base",
                str(base),
                "--out",
                str(work / "payload"),
                "-q",
            ],
            check=True,
        )
        size = sum(p.stat().st_size for p in (work / "payload").iterdir())
        server = subprocess.Popen(
            [py, "-c", SERVE.format(root=str(ROOT), store=str(work / "store"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        url = server.stdout.readline().strip()  # type: ignore[union-attr]
        env = {**os.environ, "HF_ENDPOINT": url, "HF_TOKEN": "hf_bench", "HF_HUB_DISABLE_XET": "1"}
        env["HF_HOME"] = str(work / "hf-home")
        os.environ.update(env)
        xw = [py, "-m", "xorweights.cli"]
        dec = [*xw, "decode", "me/bench-xor", "--base", str(base), "-q", "--out"]
        steps = [
            ("cp -r payload", [["cp", "-r", str(work / "payload"), str(work / "cp")]]),
            ("publish", [[*xw, "publish", str(work / "payload"), "me/bench-xor", "-q"]]),
            ("decode repo id (download)", [[*dec, str(work / "out1")]]),
            ("decode again (in place)", [[*dec, str(work / "out1")]]),
            ("decode offline (check+decode)", [["env", "HF_HUB_OFFLINE=1", *dec, str(work / "out2")]]),
            ("decode local folder", [[*xw, "decode", str(work / "payload"), "--base", str(base), "-q",
                                      "--out", str(work / "out3")]]),
        ]  # fmt: skip
        results = {}
        for name, cmds in steps:
            settle(False)
            secs, rss = run(cmds, work)
            results[name] = (secs, rss)
            print(f"{name:<32} {secs:8.2f} s {rss / 2**20:7.0f} MiB", flush=True)
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(timeout=30)
        for a, b in (("out1", "out2"), ("out1", "out3")):
            for f in (work / a).iterdir():
                if not f.name.startswith("."):
                    assert f.read_bytes() == (work / b / f.name).read_bytes(), f
        cp_s = results["cp -r payload"][0]
        print(f"\npayload {size / 1e6:.0f} MB; python {sys.version.split()[0]}; {os.cpu_count()} cores")
        print(f"{'step':<32} {'wall s':>8} {'MB/s':>8} {'peak RSS':>10} {'x cp':>6}")
        for name, (secs, rss) in results.items():
            print(
                f"{name:<32} {secs:8.2f} {size / secs / 1e6:8.0f} {rss / 2**20:7.0f} MiB {secs / cp_s:6.2f}"
            )
        check = results["decode offline (check+decode)"][0] - results["decode local folder"][0]
        print(f"\nsha256 check of the payload against the Hub's digests: {check:.2f} s "
              f"({size / max(check, 1e-9) / 1e6:.0f} MB/s)")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
