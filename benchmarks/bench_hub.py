"""What the Hub path costs on top of a local decode: publish, download, the sha256 check, second runs.

Usage: python benchmarks/bench_hub.py [--mb 512] [--rates 25,100 [--shards 8] [--repeat 2]] [--save FILE]
       [--workdir DIR]

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

With `--rates` (MB/s, comma-separated; 0 = unthrottled), the server then limits its link, all
downloads together, to each rate in turn (`HubState.rate`, set over the server's stdin: files
downloaded at once share it), and for each rate and each of two payloads of the same model, in
one file and in `--shards` files (each encoded and published as its own repo), times:

  - the download alone: `snapshot_download` of the payload files into the Hub cache, no decode;
  - `decode OWNER/NAME --stream` (payload weights read over HTTP as they are decoded);
  - `decode OWNER/NAME` (download, then decode);

each `--repeat` times (the contenders taking turns), each its own process under GNU time after a
`sync`, into an empty Hub cache (its own HF_HOME) and an empty out folder. Per contender: best
and median wall seconds, their ratio to the download alone's, the floor (payload bytes over the
rate), peak RSS, the bytes the process and its children wrote to disk (`write_bytes` of
/proc/PID/io, read from the zombie of the GNU time process that ran the command, which holds its
reaped children's counts), downloads the client hung up on (the test server's log), and, from
the server's side of the link (median): the seconds from the start of the process to the first
body byte asked for, and from the last body byte sent to the end of the process.
`--save FILE` also writes the tables to FILE.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import stat
import statistics
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

XW = [sys.executable, "-m", "xorweights.cli"]

SERVE = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.hubserver import HubServer
with HubServer(Path({store!r}), token="hf_bench") as hub:
    send, marks = hub.state.link.send, []
    def timed(n, rate):  # when body bytes were first asked for, and when the last were sent
        marks.append(time.time()) if not marks else None
        send(n, rate)
        marks[1:] = [time.time()]
    hub.state.link.send = timed
    print(hub.url, flush=True)
    for line in sys.stdin:  # answered by one line; end of input stops
        if line.startswith("rate "):  # "rate BYTES_PER_S" (0: unthrottled): "ok"
            hub.state.rate = float(line.split()[1]) or None
            print("ok", flush=True)
        elif line.startswith("marks"):  # "FIRST LAST" (unix seconds, 0 0 if none) since the last ask
            print(*(marks + [0, 0])[:2], flush=True)
            marks.clear()
"""
DOWNLOAD = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], allow_patterns=sys.argv[2:])
"""
CONTENDERS = ("download", "--stream", "download+decode")


def set_rate(server: subprocess.Popen[str], mbps: float) -> None:
    """Limit the server's link (all downloads together) to `mbps` MB/s (0: unthrottled)."""
    server.stdin.write(f"rate {mbps * 1e6}\n")  # type: ignore[union-attr]
    server.stdin.flush()  # type: ignore[union-attr]
    assert server.stdout.readline().strip() == "ok"  # type: ignore[union-attr]


def link_marks(server: subprocess.Popen[str]) -> tuple[float, float]:
    """When body bytes were first asked for and last sent through the throttled link since the last
    call (unix seconds; 0, 0 if none)."""
    server.stdin.write("marks\n")  # type: ignore[union-attr]
    server.stdin.flush()  # type: ignore[union-attr]
    first, last = server.stdout.readline().split()  # type: ignore[union-attr]
    return float(first), float(last)


def run_io(cmd: list[str], scratch: Path, env: dict[str, str]) -> tuple[float, int, int, int, float]:
    """Run `cmd` under GNU time: wall seconds, peak RSS, write_bytes, cancelled_write_bytes and
    when it started (unix seconds).

    The I/O counts are read from /proc of the GNU time process once it has exited but before it is
    reaped: they include those of `cmd` (and its children), which it reaped.
    """
    rss_file, err_file = scratch / "rss.txt", scratch / "stderr.txt"
    with open(err_file, "wb") as err:
        began = time.time()
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
    return secs, rss, int(io["write_bytes"]), int(io["cancelled_write_bytes"]), began


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
    payload: str
    mode: str
    secs: float
    rss: int
    written: int
    first: float
    """Seconds from the start of the process to the first body byte asked for (nan: unthrottled)."""
    tail: float
    """Seconds from the last body byte sent to the end of the process (nan: unthrottled)."""
    hangups: int


class Payload(NamedTuple):
    """A published payload (`repo`) of the pair `base` -> `ft`, `size` bytes in `files` (their
    names; `publish` puts them in a folder of the repo)."""

    label: str
    repo: str
    base: Path
    ft: Path
    files: list[str]
    size: int


def hangups(log: Path, start: int) -> tuple[int, int]:
    """Requests the client hung up on (tracebacks the test server logged after `start`); the log's end."""
    text = log.read_bytes()[start:]
    return text.count(b"ConnectionResetError") + text.count(b"BrokenPipeError"), start + len(text)


def compare_rates(
    server: subprocess.Popen[str], rates: list[float], payloads: list[Payload], work: Path, repeat: int
) -> list[str]:
    """The download alone, `--stream` and download-then-decode at each rate; the report lines."""
    py = sys.executable
    _, pos = hangups(work / "server.log", 0)
    runs: list[RateRun] = []
    for mbps in rates:
        set_rate(server, mbps)
        for pay in payloads:
            for _ in range(repeat):
                for mode in CONTENDERS:
                    home, out = work / "hf-rate", work / "out-rate"
                    if mode == "download":
                        cmd = [py, "-c", DOWNLOAD, pay.repo, *pay.files, *(f"*/{f}" for f in pay.files)]
                    else:
                        cmd = [*XW, "decode", pay.repo, "--base", str(pay.base), "-q", "--out", str(out)]
                        cmd += ["--stream"] if mode == "--stream" else []
                    settle(False)
                    link_marks(server)
                    secs, rss, wrote, _, began = run_io(cmd, work, {**os.environ, "HF_HOME": str(home)})
                    first, last = link_marks(server)
                    if mode == "download":
                        got = disk_bytes(home)
                        assert got >= pay.size, f"downloaded {got} bytes of {pay.size}"
                    else:
                        assert same_files(pay.ft, out), f"{out} differs from {pay.ft}"
                    cut, pos = hangups(work / "server.log", pos)
                    nan = float("nan")
                    timed = (first - began, began + secs - last) if first else (nan, nan)
                    runs.append(RateRun(mbps, pay.label, mode, secs, rss, wrote, *timed, cut))
                    print(
                        f"{mbps:g} MB/s {pay.label:<10} {mode:<16} {secs:8.2f} s {rss / 2**20:7.0f} MiB "
                        f"{wrote / 1e6:8.0f} MB written; 1st byte {timed[0]:6.2f} s, tail {timed[1]:6.2f} s",
                        flush=True,
                    )
                    shutil.rmtree(home, ignore_errors=True)
                    shutil.rmtree(out, ignore_errors=True)
    set_rate(server, 0)
    lines = [
        f"{'rate MB/s':>9} {'payload':<10} {'mode':<16} {'best s':>7} {'median s':>8} {'x dl best':>9} "
        f"{'x dl med':>8} {'floor s':>7} {'peak RSS':>10} {'written MB':>10} {'1st byte s':>10} "
        f"{'tail s':>6} {'hang-ups':>8}"
    ]
    for mbps in rates:
        for pay in payloads:
            group = {
                m: [r for r in runs if (r.mbps, r.payload, r.mode) == (mbps, pay.label, m)]
                for m in CONTENDERS
            }
            dl_best = min(r.secs for r in group["download"])
            dl_med = statistics.median(r.secs for r in group["download"])
            floor = f"{pay.size / (mbps * 1e6):7.2f}" if mbps else f"{'-':>7}"
            for mode, rs in group.items():
                best, med = min(r.secs for r in rs), statistics.median(r.secs for r in rs)
                first, tail = (statistics.median(getattr(r, k) for r in rs) for k in ("first", "tail"))
                lines.append(
                    f"{_rate(mbps):>9} {pay.label:<10} {mode:<16} {best:7.2f} {med:8.2f} "
                    f"{best / dl_best:9.3f} {med / dl_med:8.3f} {floor} "
                    f"{max(r.rss for r in rs) / 2**20:6.0f} MiB "
                    f"{statistics.median(r.written for r in rs) / 1e6:10.1f} {first:10.2f} {tail:6.2f} "
                    f"{sum(r.hangups for r in rs):8d}"
                )
    lines += [
        "payloads (safetensors files, all files' bytes): "
        + "; ".join(f"{p.label} {_weights(p)}, {p.size / 1e6:.1f} MB" for p in payloads),
        f"{repeat} run(s) each, the contenders taking turns; 'x dl': wall over the download alone's (best",
        "over best, median over median); 'floor': payload bytes over the rate; 'peak RSS': the highest",
        "run; 'written': write_bytes of the process tree (median); '1st byte': from the start of the",
        "process to the first body byte asked for, 'tail': from the last body byte sent to the end of the",
        "process (median, the server's side of the link); 'hang-ups': downloads the client closed early",
    ]
    return lines


def _weights(p: Payload) -> int:
    return sum(f.endswith(".safetensors") for f in p.files)


def _rate(mbps: float) -> str:
    return f"{mbps:g}" if mbps else "none"


def make_tensors(mb: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Base and fine-tune: float16 tensors of 32 MiB, the fine-tune nudged by small noise."""
    rng = np.random.default_rng(0)
    base, ft = {}, {}
    for i in range(max(1, mb // 32)):
        t = rng.standard_normal(16 * 2**20, dtype=np.float32).astype(np.float16).reshape(4096, 4096)
        base[f"model.layers.{i}.mlp.up_proj.weight"] = t
        ft[f"model.layers.{i}.mlp.up_proj.weight"] = t + np.float16(1e-3) * rng.standard_normal(
            t.shape
        ).astype(np.float16)
    return base, ft


def save_pair(
    folder: Path, base: dict[str, np.ndarray], ft: dict[str, np.ndarray], files: int
) -> tuple[Path, Path]:
    """`folder`/base and `folder`/ft: the tensors in `files` safetensors files (fewer if there are
    fewer tensors), in name order."""
    names = sorted(base)
    files = min(files, len(names))
    (folder / "base").mkdir(parents=True)
    (folder / "ft").mkdir()
    for k in range(files):
        group = names[len(names) * k // files : len(names) * (k + 1) // files]
        name = f"model-{k + 1:05d}-of-{files:05d}.safetensors"
        save_file({g: base[g] for g in group}, str(folder / "base" / name))
        save_file({g: ft[g] for g in group}, str(folder / "ft" / name))
    (folder / "ft" / "config.json").write_text('{"model_type": "llama"}\n')
    return folder / "base", folder / "ft"


def make_pair(work: Path, mb: int) -> tuple[Path, Path]:
    """Base and fine-tune in two files each."""
    return save_pair(work, *make_tensors(mb), 2)


def encode(base: Path, ft: Path, out: Path) -> int:
    """Encode the native payload of `base` -> `ft` into `out`; its size."""
    subprocess.run([*XW, "encode", str(ft), "--base", str(base), "--out", str(out), "-q"], check=True)
    return sum(p.stat().st_size for p in out.iterdir())


def rate_payloads(work: Path, mb: int, shards: int) -> list[Payload]:
    """The same model in one file and in `shards` files, each encoded and published as its own repo."""
    tensors = make_tensors(mb)
    payloads = []
    for label, files in (("one file", 1), (f"{shards} files", shards)):
        folder = work / f"pair-{files}"
        base, ft = save_pair(folder, *tensors, files)
        size = encode(base, ft, folder / "payload")
        repo = f"me/bench-rate-{files}"
        subprocess.run([*XW, "publish", str(folder / "payload"), repo, "-q"], check=True)
        names = sorted(p.name for p in (folder / "payload").iterdir())
        payloads.append(Payload(label, repo, base, ft, names, size))
    return payloads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--rates", default="", help="MB/s of the link, comma-separated (0: unthrottled)")
    ap.add_argument("--shards", type=int, default=8, help="files of the many-file payload of --rates")
    ap.add_argument("--repeat", type=int, default=2, help="runs per contender and rate of --rates")
    ap.add_argument("--save", type=Path, default=None, help="also write the tables to this file")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-hub-", dir=args.workdir))
    try:
        base, ft = make_pair(work, args.mb)
        py = sys.executable
        size = encode(base, ft, work / "payload")
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
        xw = XW
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
        rate_lines = []
        if rates:
            payloads = rate_payloads(work, args.mb, args.shards)
            rate_lines = compare_rates(server, rates, payloads, work, args.repeat)
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
                "the download alone, --stream and download+decode, the server's link throttled"
                " (all downloads together)",
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
