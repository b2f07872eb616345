"""Can huggingface_hub's `HfFileSystem` carry `decode --stream`? Today's `hub.stream` reader against
`HfFileSystem().open(...)`, on throughput, memory, faults and Ctrl-C.

Usage: python benchmarks/bench_hffs_stream.py [--mb 256,1024] [--runs 2] [--timeout 1]
       [--trickle 0.9] [--cap 60] [--only TEXT] [--save FILE]

Serves payload-sized LFS files of random bytes (`--mb`, MiB each) from `tests/hubserver.py` (in
this process, on 127.0.0.1, plain HTTP) and reads each, front to back in 16 MiB reads (the decode
pipeline's chunk) with a sha256 of every byte compared at the end with the Hub's LFS sha256, in a
process of its own, in a worker thread as `decode` does (a thread pool under `_cancel.guard`, the
main thread waiting), by one of these readers:

  - `xorweights`: today's `hub.stream.HubFileSource(...).open()` (its own network thread, range
    resumes, the watch of `hub.watch`);
  - `hffs-b0`: `HfFileSystem().open(path, "rb", block_size=0)`, huggingface_hub's streaming file
    (one GET, reopened once per `read` call after an error, from the bytes handed over);
  - `hffs-b5M`, `hffs-b64M`: `HfFileSystem().open(path, "rb", block_size=5 MiB / 64 MiB)`, fsspec's
    buffered file (a ranged GET per block through `http_backoff`, readahead cache);
  - `+watch`: the same, the reading thread inside `hub.watch.Watch(...).active()` and the main
    thread in `watch.wait_for` (our hooks on huggingface_hub's client: bounded connect/read, the
    stall rule, the bounded `Retry-After`, a stop that shuts the socket).

Three tables:

  - throughput: MB/s of the reader (open to last byte, digest checked), peak RSS of the process
    (and its RSS before reading), for each file size (`--runs` runs, the best and the median);
  - faults (`HF_HUB_DOWNLOAD_TIMEOUT=--timeout`, the smallest file): a connection cut once after
    3 MiB + 123 bytes and once after 100 MB + 123 bytes (does the reader resume from the last byte
    received?), every connection dropped after 8 MiB and after 100 bytes, a body trickling a byte
    every `--trickle` s, `Retry-After` of a day, an illegal status line, a server that never
    answers, a tampered body (the listing keeps the sha256): exit code, seconds to the end (runs
    still going after `--cap` s are killed and say so), stderr lines, the GETs of the file and
    their `Range` headers, the error;
  - Ctrl-C (`HF_HUB_DOWNLOAD_TIMEOUT=10`, huggingface_hub's default): SIGINT `SETTLE` (0.5) s
    after the server or the reader reports a state (reading a body throttled to 20 MB/s, a
    trickling body, an unanswered request, a `Retry-After: 30`, connections dropped after 100
    bytes): seconds from the signal to the exit (killed after `--cap` s). A reader that ended by
    itself before the signal shows its own exit code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # the test server speaks no Xet

REPO = "org/big-xor"
CHUNK = 16 << 20
MODES = ("xorweights", "hffs-b0", "hffs-b0+watch", "hffs-b5M", "hffs-b64M", "hffs-b64M+watch")
#: Seconds from the server's (or reader's) event to the SIGINT: the reader is then in that state.
SETTLE = 0.5
BLOCKS = {"b0": 0, "b5M": 5 << 20, "b64M": 64 << 20}


# --- the reading process ---------------------------------------------------------------------


def _memory(field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def _read_ours(spec: dict[str, Any], started: threading.Event) -> int:
    from xorweights import _cancel
    from xorweights.hub.access import HubFile
    from xorweights.hub.stream import HubFileSource

    listed = HubFile(spec["size"], blob_id=spec["oid"], sha256=spec["sha256"])
    source = HubFileSource(spec["repo"], spec["path"], spec["commit"], listed, spec["url"], spec["token"])
    buf = bytearray(CHUNK)
    view, total = memoryview(buf), 0
    with source.open() as stream:
        while True:  # fill the chunk as the pipeline does (readinto until full or at the end)
            got = 0
            while got < CHUNK and (n := stream.readinto(view[got:])):
                got += n
            total += got
            started.set()
            _cancel.check()
            if got < CHUNK:
                return total  # the digest was checked by the stream at its end


def _read_hffs(spec: dict[str, Any], started: threading.Event, block: int) -> int:
    from huggingface_hub import HfFileSystem

    from xorweights import _cancel

    fs = HfFileSystem(endpoint=spec["url"], token=spec["token"])
    digest, total = hashlib.sha256(), 0
    path = f"{spec['repo']}@{spec['commit']}/{spec['path']}"
    with fs.open(path, "rb", block_size=block, size=spec["size"]) as f:
        while total < spec["size"]:
            data = f.read(CHUNK)
            if not data:
                break
            digest.update(data)
            total += len(data)
            started.set()
            _cancel.check()
    if total != spec["size"]:
        raise OSError(f"the body ended at byte {total} of {spec['size']}")
    if digest.hexdigest() != spec["sha256"]:
        raise ValueError(f"differs from the sha256 the Hub lists ({digest.hexdigest()} as received)")
    return total


def child(spec: dict[str, Any]) -> None:
    """Read the file as `spec["mode"]` says; print one JSON line (or one error line, exit 1; 130)."""
    from concurrent.futures import ThreadPoolExecutor

    import huggingface_hub  # noqa: F401  (imported before the baseline RSS, as by the readers)

    from xorweights import _cancel
    from xorweights.hub import watch as hubwatch

    mode = spec["mode"]
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on (imports are not the reader's)
    base_rss = _memory("VmRSS")
    started, finished = threading.Event(), threading.Event()
    watch = hubwatch.Watch(spec["path"]) if mode.endswith("+watch") else None

    def work() -> int:
        try:
            if mode == "xorweights":
                return _read_ours(spec, started)
            block = BLOCKS[mode.split("-")[1].split("+")[0]]
            if watch is None:
                return _read_hffs(spec, started, block)
            with watch.active():
                return _read_hffs(spec, started, block)
        finally:
            finished.set()

    def announce() -> None:
        if started.wait():
            print("reading", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    began = time.monotonic()
    try:
        with ThreadPoolExecutor(1) as pool, _cancel.guard(pool):
            future = pool.submit(work)
            if watch is not None:
                hubwatch.wait_for(finished, watch)
            total = future.result()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as e:
        text = " ".join(str(e).split())[:300]
        print(f"Error: {type(e).__name__}: {text}", file=sys.stderr, flush=True)
        sys.exit(1)
    took = time.monotonic() - began
    doc = {"bytes": total, "seconds": took, "rss_base": base_rss, "rss_peak": _memory("VmHWM")}
    print(json.dumps(doc), flush=True)


# --- the orchestrating process -----------------------------------------------------------------


class Run:
    """One reading process: its result, and what the server saw of it."""

    def __init__(self, code: int | None, seconds: float, out: str, err: str, gets: list[str | None]):
        self.code, self.seconds, self.gets = code, seconds, gets
        self.lines = [line for line in err.splitlines() if line.strip()]
        found = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        self.doc: dict[str, Any] = found[0] if found else {}

    def ranges(self) -> str:
        """The GETs of the file: how many, and their first Range headers."""
        shown = ", ".join(r or "-" for r in self.gets[:4])
        return f"{len(self.gets)}: {shown}{', ...' if len(self.gets) > 4 else ''}"

    def ending(self) -> str:
        errors = [line for line in self.lines if line.startswith("Error:")]
        return (errors or self.lines or [""])[-1][:200]


def spawn(spec: dict[str, Any], timeout: float) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_ENDPOINT": spec["url"],
        "HF_HOME": spec["home"],
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DOWNLOAD_TIMEOUT": str(int(timeout)) if timeout >= 1 else str(timeout),
        "HF_HUB_ETAG_TIMEOUT": str(int(timeout)) if timeout >= 1 else str(timeout),
    }
    return subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def collect(hub: Any, spec: dict[str, Any], proc: subprocess.Popen[str], began: float, cap: float) -> Run:
    try:
        out, err = proc.communicate(timeout=max(cap - (time.monotonic() - began), 0.1))
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        code = None
    took = time.monotonic() - began
    asked = hub.requests_for("GET", spec["path"])  # header names as sent: fsspec's file says "range"
    gets = [next((v for k, v in h.items() if k.lower() == "range"), None) for h in asked]
    return Run(code, took, out, err, gets)


def reset(hub: Any) -> None:
    hub.state.requests.clear()
    hub.state.faults.clear()
    hub.state.cut_after.clear()
    hub.state.faulted.clear()
    hub.state.trickling.clear()
    hub.state.rate = None


def make_file(folder: Path, mib: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    (folder / "payload").mkdir(parents=True)
    with open(folder / "payload" / "model.safetensors", "wb") as f:
        for _ in range(mib // 16):
            f.write(rng.bytes(16 << 20))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--mb", default="256,1024", help="file sizes in MiB (multiples of 16), comma-separated")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1, help="HF_HUB_DOWNLOAD_TIMEOUT for the faults (s)")
    ap.add_argument("--trickle", type=float, default=0.9, help="seconds between trickled bytes")
    ap.add_argument("--cap", type=float, default=60, help="a run still going after this is killed (s)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--only", default="", help="only the tables/scenarios whose label holds this")
    ap.add_argument("--save", type=Path)
    opts = ap.parse_args()
    if opts.child:
        child(json.loads(opts.child))
        return

    import huggingface_hub

    from tests.hubserver import TOKEN, Fault, HubServer

    modes = opts.modes.split(",")
    sizes = [int(x) for x in opts.mb.split(",")]
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    def wanted(label: str) -> bool:
        return all(word in label for word in opts.only.split())

    say(f"# python benchmarks/bench_hffs_stream.py {' '.join(sys.argv[1:])}")
    say(
        f"# huggingface_hub {huggingface_hub.__version__}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores; test Hub on 127.0.0.1 in the benchmark process, each reader its own process"
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench-hffs-") as tmp,
        HubServer(Path(tmp) / "hub", token=TOKEN) as hub,
    ):
        specs: dict[int, dict[str, Any]] = {}
        for i, mib in enumerate(sizes):
            folder = Path(tmp) / f"src{mib}"
            make_file(folder, mib, i)
            repo = f"{REPO}-{mib}"
            commit = hub.state.add_folder(repo, folder)
            entry = hub.state.repos[repo].commits[commit]["payload/model.safetensors"]
            specs[mib] = {
                "repo": repo,
                "url": hub.url,
                "token": TOKEN,
                "commit": commit,
                "path": "payload/model.safetensors",
                "size": entry.size,
                "sha256": entry.sha256,
                "oid": entry.oid,
            }
            (folder / "payload" / "model.safetensors").unlink()
        n = 0

        def one(
            mib: int, mode: str, timeout: float, cap: float, state: str | None = None
        ) -> tuple[Run, float | None]:
            """A reading process; with `state`, SIGINT once the reader is in it: (run, s to stop)."""
            nonlocal n
            n += 1
            spec = {**specs[mib], "mode": mode, "home": str(Path(tmp) / f"home{n}")}
            proc = spawn(spec, timeout)
            began = time.monotonic()
            if state is None:
                return collect(hub, spec, proc, began, cap), None
            seen = reached(hub, proc, state, cap)
            time.sleep(SETTLE)  # the server's event comes as it answers: let the answer arrive
            sent = time.monotonic()
            if seen:
                proc.send_signal(signal.SIGINT)
            run = collect(hub, spec, proc, sent, cap)
            return run, (run.seconds if seen else None)

        small = min(sizes)
        if wanted("throughput"):
            say()
            say(f"throughput: 16 MiB reads, sha256 of every byte checked; {opts.runs} runs, best and median")
            say(f"{'size':>8} {'reader':<16} {'best MB/s':>9} {'median':>7} {'RSS before':>10} peak RSS GETs")
            for mib in sizes:
                for mode in modes:
                    if not wanted(f"throughput {mib} {mode}"):
                        continue
                    runs = []
                    for _ in range(opts.runs):
                        reset(hub)
                        run, _ = one(mib, mode, 10, 600)
                        if run.code != 0 or not run.doc:
                            say(f"{mib:>5} MiB {mode:<16} failed ({run.code}): {run.ending()}")
                            break
                        runs.append(run)
                    if len(runs) == opts.runs:
                        rates = [r.doc["bytes"] / r.doc["seconds"] / 1e6 for r in runs]
                        peak = max(r.doc["rss_peak"] for r in runs)
                        say(
                            f"{mib:>5} MiB {mode:<16} {max(rates):9.0f} {statistics.median(rates):7.0f} "
                            f"{runs[0].doc['rss_base']:6.0f} MiB {peak:5.0f} MiB {len(runs[0].gets):>4}"
                        )

        cut_small, cut_mid = (3 << 20) + 123, 100_000_000 + 123
        faults: dict[str, tuple[str, Any]] = {
            f"cut-once@{cut_small}": ("cut", cut_small),
            f"cut-once@{cut_mid}": ("cut", cut_mid),
            "drop-every-8MiB": ("fault", Fault("drop", 8 << 20)),
            "drop-every-100B": ("fault", Fault("drop", 100)),
            "trickle": ("fault", Fault("trickle", opts.trickle)),
            "retry-after-a-day": ("fault", Fault("retry_after", 86_400)),
            "bad-status-line": ("fault", Fault("bad_status")),
            "hang": ("fault", Fault("hang")),
            "tampered": ("tamper", None),
        }
        say()
        say(
            f"faults: HF_HUB_DOWNLOAD_TIMEOUT={opts.timeout:g} s, trickle a byte every {opts.trickle:g} s, "
            f"{small} MiB file; killed after {opts.cap:g} s"
        )
        say(f"{'fault':<24} {'reader':<16} {'exit':>6} {'seconds':>8} {'lines':>5}  GETs: Ranges | error")
        for name, (kind, value) in faults.items():
            for mode in modes:
                if not wanted(f"faults {name} {mode}"):
                    continue
                reset(hub)
                repo, path = specs[small]["repo"], specs[small]["path"]
                if kind == "cut":
                    hub.state.cut_after[path] = value
                elif kind == "fault":
                    hub.state.faults[path] = value
                else:
                    hub.state.tamper(repo, path)
                run, _ = one(small, mode, opts.timeout, opts.cap)
                if kind == "tamper":
                    hub.state.tamper(repo, path)  # the same byte flipped back
                code = "killed" if run.code is None else str(run.code)
                cut = ""
                if kind == "cut":
                    cut = "cut met; " if cut_met(run.gets, value, specs[small]["size"]) else "cut not met; "
                say(
                    f"{name:<24} {mode:<16} {code:>6} {run.seconds:8.2f} {len(run.lines):>5}  "
                    f"{cut}{run.ranges()} | {run.ending()}"
                )

        states: dict[str, tuple[str, Any, str]] = {
            "reading@20MB/s": ("rate", 20e6, "reading"),
            "trickling": ("fault", Fault("trickle", 9), "trickling"),
            "connecting(hang)": ("fault", Fault("hang"), "faulted"),
            "retry-after-30": ("fault", Fault("retry_after", 30), "faulted"),
            "reopen-backoff": ("fault", Fault("drop", 100), "faulted"),
        }
        say()
        say(f"Ctrl-C: HF_HUB_DOWNLOAD_TIMEOUT=10 s, {small} MiB file, SIGINT once the reader is in the state")
        say(f"{'state':<24} {'reader':<16} {'exit':>6} {'s to stop':>9} {'lines':>5}")
        for name, (kind, value, event) in states.items():
            for mode in modes:
                if not wanted(f"ctrl-c {name} {mode}"):
                    continue
                reset(hub)
                path = specs[small]["path"]
                if kind == "rate":
                    hub.state.rate = value
                else:
                    hub.state.faults[path] = value
                run, stop = one(small, mode, 10, opts.cap, event)
                code = "killed" if run.code is None else str(run.code)
                took = "never" if stop is None else f"{stop:9.3f}"
                say(f"{name:<24} {mode:<16} {code:>6} {took:>9} {len(run.lines):>5}  {run.ending()[:120]}")
    if opts.save:
        opts.save.write_text("\n".join(lines) + "\n")


def cut_met(gets: list[str | None], cut: int, size: int) -> bool:
    """Whether the server's cut (after `cut` bytes of a GET from byte 0) met the first such GET:
    one asking up to a byte before `cut` ends whole (the server disarms its cut all the same)."""
    for asked in gets:
        if asked is None:
            return size > cut
        first, _, last = asked.removeprefix("bytes=").partition("-")
        if int(first) == 0:
            return (int(last) + 1 if last else size) > cut
    return False


def reached(hub: Any, proc: subprocess.Popen[str], state: str, cap: float) -> bool:
    """Wait until the reader is in `state`: the server's event, or the reader's "reading" line."""
    if state == "reading":
        assert proc.stdout is not None
        return proc.stdout.readline().strip() == "reading"
    return bool(getattr(hub.state, state).wait(cap))


if __name__ == "__main__":
    main()
