"""What the Hub path costs on top of a local decode: publish, download, the sha256 check, second runs.

Usage: python benchmarks/bench_hub.py [--mb 512] [--rates 100,400] [--save FILE] [--workdir DIR]

Makes a float16 model of about `--mb` MB and a fine-tuned copy, encodes a native payload, serves
an empty Hub from `tests/hubserver.py` in another process on 127.0.0.1 (plain HTTP, no Xet), and
times, each as its own `xorweights` process under GNU time (wall seconds, peak RSS):

  - `cp -r` of the payload (the floor for reading and writing those bytes here);
  - `publish` (hash every payload file against xorweights.json, upload, compare the Hub's sha256);
  - `decode OWNER/NAME` into an empty Hub cache (download, check every payload file against the
    Hub's sha256, decode);
  - the same command again with everything in place;
  - `decode OWNER/NAME` offline from the cache into a new folder (check + decode, no download);
  - `decode PAYLOAD_DIR` of the same payload folder (no Hub, no payload check);
  - `decode OWNER/NAME --base OWNER/BASE` (the base uploaded with `HfApi.upload_folder`) into an
    empty out folder, downloading the base; then offline from the cache: minus the offline run
    with the base as a folder, what the base's check against the Hub costs.

The offline run minus the local one is what the payload check costs. Download speed over
localhost from a Python test server says nothing about the real Hub; it is reported for
completeness.

With `--rates` (MB/s, comma-separated; 0 = unthrottled), the server then limits each file download
to each rate in turn (`HubState.rate`, set over the server's stdin), and for each rate times
`decode OWNER/NAME` (download, then decode) against `decode OWNER/NAME --stream` (payload weights
read over HTTP as they are decoded), each into an empty Hub cache (its own HF_HOME) and an empty
out folder, one process at a time after a `sync`. Per run: wall seconds, peak RSS, the bytes the
process and its children wrote to disk (`write_bytes` of /proc/PID/io, read from the zombie of the
GNU time process that ran the command, which holds its reaped children's counts), and the apparent
size of the regular files left in the cache and out folder (no symlink followed, hard links once).
The server throttles each file, not the link: files downloaded at the same time add up.
`--save FILE` also writes the tables to FILE.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_decode import TIME, run, settle  # noqa: E402

SERVE = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.hubserver import HubServer
with HubServer(Path({store!r}), token="hf_bench") as hub:
    print(hub.url, flush=True)
    for line in sys.stdin:  # "rate BYTES_PER_S" (0: unthrottled), answered "ok"; end of input stops
        hub.state.rate = float(line.split()[1]) or None
        print("ok", flush=True)
"""
MODES = (("download+decode", []), ("--stream", ["--stream"]))


def set_rate(server: subprocess.Popen[str], mbps: float) -> None:
    """Throttle each file download of the server to `mbps` MB/s (0: unthrottled)."""
    server.stdin.write(f"rate {mbps * 1e6}\n")  # type: ignore[union-attr]
    server.stdin.flush()  # type: ignore[union-attr]
    assert server.stdout.readline().strip() == "ok"  # type: ignore[union-attr]


def run_io(cmd: list[str], scratch: Path, env: dict[str, str]) -> tuple[float, int, int, int]:
    """Run `cmd` under GNU time: wall seconds, peak RSS, write_bytes and cancelled_write_bytes.

    The I/O counts are read from /proc of the GNU time process once it has exited but before it is
    reaped: they include those of `cmd` (and its children), which it reaped.
    """
    rss_file, err_file = scratch / "rss.txt", scratch / "stderr.txt"
    with open(err_file, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [TIME, "-f", "%M", "-o", str(rss_file), *cmd], stdout=subprocess.DEVNULL, stderr=err, env=env
        )
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        secs = time.perf_counter() - start
        io = dict(line.split(": ") for line in Path(f"/proc/{proc.pid}/io").read_text().splitlines())
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}\n{err_file.read_text()}")
    rss = int(rss_file.read_text().split()[-1]) * 1024
    return secs, rss, int(io["write_bytes"]), int(io["cancelled_write_bytes"])


def disk_bytes(*folders: Path) -> int:
    """Apparent size of the regular files below `folders` (symlinks not followed, hard links once)."""
    seen: dict[tuple[int, int], int] = {}
    for folder in folders:
        for top, _, files in os.walk(folder):
            for name in files:
                st = os.lstat(os.path.join(top, name))
                if stat.S_ISREG(st.st_mode):
                    seen[st.st_dev, st.st_ino] = st.st_size
    return sum(seen.values())


def files_bytes(folder: Path) -> int:
    """Total size of the files directly in `folder` (the decoded outputs)."""
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def same_files(a: Path, b: Path) -> bool:
    """Whether `b` holds the same visible files as `a`, byte for byte."""
    names = sorted(f.name for f in a.iterdir() if f.is_file() and not f.name.startswith("."))
    ours = sorted(f.name for f in b.iterdir() if f.is_file() and not f.name.startswith("."))
    return names == ours and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


class RateRun(NamedTuple):
    mbps: float
    mode: str
    secs: float
    rss: int
    written: int
    cancelled: int
    left: int
    hangups: int


def hangups(log: Path, start: int) -> tuple[int, int]:
    """Requests the client hung up on (tracebacks the test server logged after `start`); the log's end."""
    text = log.read_bytes()[start:]
    return text.count(b"ConnectionResetError") + text.count(b"BrokenPipeError"), start + len(text)


def compare_rates(
    server: subprocess.Popen[str], rates: list[float], dec: list[str], work: Path, ref: Path, payload: int
) -> list[str]:
    """Download-then-decode vs `--stream` at each rate; the report lines."""
    _, pos = hangups(work / "server.log", 0)
    runs: list[RateRun] = []
    for mbps in rates:
        set_rate(server, mbps)
        for mode, extra in MODES:
            tag = f"{mbps:g}-{'stream' if extra else 'seq'}"
            home, out = work / f"hf-{tag}", work / f"out-{tag}"
            settle(False)
            secs, rss, wrote, cancelled = run_io(
                [*dec, str(out), *extra], work, {**os.environ, "HF_HOME": str(home)}
            )
            left = disk_bytes(home, out)
            assert same_files(ref, out), f"{out} differs from {ref}"
            cut, pos = hangups(work / "server.log", pos)
            runs.append(RateRun(mbps, mode, secs, rss, wrote, cancelled, left, cut))
            print(
                f"{mbps:g} MB/s {mode:<16} {secs:8.2f} s {rss / 2**20:7.0f} MiB "
                f"{wrote / 1e6:8.0f} MB written {left / 1e6:8.0f} MB left",
                flush=True,
            )
            shutil.rmtree(home)
            shutil.rmtree(out)
    set_rate(server, 0)
    outputs = files_bytes(ref)
    lines = [
        f"{'rate MB/s':>9} {'mode':<16} {'wall s':>8} {'peak RSS':>10} {'written MB':>11} "
        f"{'cancel kB':>9} {'left MB':>8} {'x out':>6} {'hang-ups':>8}"
    ]
    for r in runs:
        lines.append(
            f"{_rate(r.mbps):>9} {r.mode:<16} {r.secs:8.2f} {r.rss / 2**20:6.0f} MiB {r.written / 1e6:11.1f} "
            f"{r.cancelled / 1e3:9.0f} {r.left / 1e6:8.1f} {r.written / outputs:6.2f} {r.hangups:8d}"
        )
    for seq, st in zip(runs[::2], runs[1::2], strict=True):
        floor = f"; payload at that rate: {payload / (seq.mbps * 1e6):.2f} s" if seq.mbps else ""
        lines.append(f"{_rate(seq.mbps):>9} stream/sequential wall {st.secs / seq.secs:.2f}{floor}")
    lines += [
        f"outputs {outputs / 1e6:.1f} MB, payload {payload / 1e6:.1f} MB; 'written': write_bytes",
        "('cancel': cancelled_write_bytes) of the process tree; 'left': files in cache and out after it;",
        "'x out': written / outputs; 'hang-ups': downloads the client closed early (test server log)",
    ]
    return lines


def _rate(mbps: float) -> str:
    return f"{mbps:g}" if mbps else "none"


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
    ap.add_argument("--rates", default="", help="MB/s per file download, comma-separated (0: unthrottled)")
    ap.add_argument("--save", type=Path, default=None, help="also write the tables to this file")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
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
        server_log = open(work / "server.log", "wb")
        server = subprocess.Popen(
            [py, "-c", SERVE.format(root=str(ROOT), store=str(work / "store"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=server_log,
            text=True,
        )
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
            (
                "decode local folder",
                [
                    [
                        *xw,
                        "decode",
                        str(work / "payload"),
                        "--base",
                        str(base),
                        "-q",
                        "--out",
                        str(work / "out3"),
                    ]
                ],
            ),
        ]
        from huggingface_hub import HfApi

        api = HfApi(endpoint=url, token="hf_bench")
        api.create_repo("me/bench-base")
        try:
            api.upload_folder(folder_path=str(base), repo_id="me/bench-base")
        except ValueError as e:  # huggingface_hub 0.x: the commit is made, its URL unparsable here
            if not str(e).startswith("Unable to retrieve user and repo ID"):
                raise
        by_id = [*xw, "decode", "me/bench-xor", "--base", "me/bench-base", "-q", "--out"]
        steps += [
            ("decode, base by repo id (download)", [[*by_id, str(work / "out4")]]),
            ("decode offline, base by repo id", [["env", "HF_HUB_OFFLINE=1", *by_id, str(work / "out5")]]),
        ]
        results: dict[str, tuple[float, int]] = {}
        for name, cmds in steps:
            settle(False)
            secs, rss = run(cmds, work)
            results[name] = (secs, rss)
            print(f"{name:<36} {secs:8.2f} s {rss / 2**20:7.0f} MiB", flush=True)
        rate_lines = compare_rates(server, rates, dec, work, work / "out1", size) if rates else []
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(timeout=30)
        server_log.close()
        for a, b in (("out1", "out2"), ("out1", "out3"), ("out1", "out4"), ("out1", "out5")):
            for f in (work / a).iterdir():
                if not f.name.startswith("."):
                    assert f.read_bytes() == (work / b / f.name).read_bytes(), f
        cp_s = results["cp -r payload"][0]
        lines = [
            f"payload {size / 1e6:.0f} MB; python {sys.version.split()[0]}; {os.cpu_count()} cores",
            f"{'step':<36} {'wall s':>8} {'MB/s':>8} {'peak RSS':>10} {'x cp':>6}",
        ]
        for name, (secs, rss) in results.items():
            lines.append(
                f"{name:<36} {secs:8.2f} {size / secs / 1e6:8.0f} {rss / 2**20:7.0f} MiB {secs / cp_s:6.2f}"
            )
        check = results["decode offline (check+decode)"][0] - results["decode local folder"][0]
        lines += [
            "",
            f"sha256 check of the payload against the Hub's digests: {check:.2f} s "
            f"({size / max(check, 1e-9) / 1e6:.0f} MB/s)",
        ]
        base_size = sum(p.stat().st_size for p in base.iterdir())
        base_check = (
            results["decode offline, base by repo id"][0] - results["decode offline (check+decode)"][0]
        )
        lines.append(
            f"base by repo id (files checked against the Hub's sha256 before use), {base_size / 1e6:.0f} MB: "
            f"{base_check:.2f} s more than the same decode with the base as a folder"
        )
        if rate_lines:
            lines += [
                "",
                "download+decode vs --stream, each file download throttled by the server",
                *rate_lines,
            ]
        text = "\n".join(lines) + "\n"
        print("\n" + text, end="")
        if args.save:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            args.save.write_text(f"# bench_hub.py {' '.join(sys.argv[1:])}\n{text}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
