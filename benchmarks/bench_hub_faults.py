"""A broken Hub never hangs a run: how long each faulty `decode REPO` takes to end by itself, and
how long it takes to stop after Ctrl-C in each network state.

Usage: python benchmarks/bench_hub_faults.py [--timeout 10] [--trickle 9] [--only NAME] [--save FILE]

Serves a small native release from `tests/hubserver.py` (in this process, on 127.0.0.1) and runs
`python -m xorweights decode REPO --base B --out O -q` (and with `--stream`) as its own process,
with `HF_HUB_DOWNLOAD_TIMEOUT=--timeout` and each fault of the server in turn:

  - ends by itself: a `Retry-After` of a day, a body trickling a byte every `--trickle` s, a
    redirect loop, a corrupt `Content-Encoding: gzip` (weights, model card), connections dropped
    after 100 bytes, an illegal status line, a redirect loop on the listing, a `Retry-After: 59` on
    every answer, and a server that never answers (listing, model card, weights: HEAD, or GET with
    `--stream`). Reported: the exit code, the seconds from start to exit, the number of stderr
    lines, and that line.
  - Ctrl-C: SIGINT (once, then twice in a row) once the run is in a network state, a state the
    server reports, never a delay: connecting (the server holds the request unanswered), waiting on
    a `Retry-After: 30`, a trickling body (its first byte sent), the reopen backoff after a dropped
    connection (the dropped request seen). Reported: seconds from the signal to the exit, the exit
    code and the stderr lines.

The bounds these figures stay within (T = HF_HUB_DOWNLOAD_TIMEOUT, `watch.MAX_REOPENS` = 5):
a trickled download (MAX_REOPENS + 1) x T plus huggingface_hub's 1 s pause before each resume;
a trickled stream (MAX_REOPENS + 1) x T; dropped connections on a stream the reopen pauses
0.5 + 1 + 2 + 4 + 8 s; a wait asked beyond `watch.MAX_RETRY_AFTER` (60 s) at once, waits made
beyond it in all at the next ask; a Hub that never answers `watch.MAX_UNANSWERED` (3) x T plus
huggingface_hub's pauses between retries (1 + 2 s), a silent listing T. Stops: 1 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # the test server speaks no Xet

from tests.hubserver import TOKEN, Fault, HubServer  # noqa: E402

REPO = "org/faulty-xor"
WEIGHTS = "payload/model.safetensors"


def make_release(root: Path) -> dict[str, Path]:
    """The small LLaMA-shaped release of the Hub tests (tests/conftest.py's `native_release`)."""
    from tests.conftest import make_native_release

    return make_native_release(root)


def start(
    hub: HubServer, release: dict[str, Path], work: Path, timeout: float, stream: bool
) -> subprocess.Popen:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(work / "hf-home"),
        "HF_HUB_DOWNLOAD_TIMEOUT": str(int(timeout)),  # huggingface_hub reads an int
    }
    args = ["decode", REPO, "--base", str(release["base"]), "--out", str(work / "out"), "-q"]
    return subprocess.Popen(
        [sys.executable, "-m", "xorweights", *args, *(["--stream"] if stream else [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def serve(root: Path, release: dict[str, Path], suffix: str, fault: Fault) -> HubServer:
    from xorweights import publish

    hub = HubServer(root, token=TOKEN).__enter__()
    publish(release["payload"], REPO, endpoint=hub.url, token=TOKEN)
    hub.state.faults[suffix] = fault
    return hub


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=int, default=10, help="HF_HUB_DOWNLOAD_TIMEOUT (s)")
    ap.add_argument("--trickle", type=float, default=9.0, help="seconds between trickled bytes")
    ap.add_argument("--only", default="", help="run only the scenarios whose name holds this")
    ap.add_argument("--save", type=Path)
    opts = ap.parse_args()
    ends = {
        "retry-after-a-day": (WEIGHTS, Fault("retry_after", 86_400)),
        "trickle": (WEIGHTS, Fault("trickle", opts.trickle)),
        "redirect-loop": (WEIGHTS, Fault("redirect_loop")),
        "gzip-weights": (WEIGHTS, Fault("bad_gzip")),
        "gzip-card": ("README.md", Fault("bad_gzip")),
        "dropped": (WEIGHTS, Fault("drop", 100)),
        "bad-status-line": (WEIGHTS, Fault("bad_status")),
        "listing-redirect-loop": (f"/api/models/{REPO}/revision/main", Fault("redirect_loop")),
        "retry-after-59": (WEIGHTS, Fault("retry_after", 59)),
        "hang-listing": (f"/api/models/{REPO}/revision/main", Fault("hang")),
        "hang-card": ("README.md", Fault("hang")),
        "hang-weights": (WEIGHTS, Fault("hang")),
    }
    states = {
        "connecting": (WEIGHTS, Fault("hang"), "faulted"),
        "retry-after-30": (WEIGHTS, Fault("retry_after", 30), "faulted"),
        "trickling": (WEIGHTS, Fault("trickle", opts.trickle), "trickling"),
        "reopen-backoff": (WEIGHTS, Fault("drop", 100), "faulted"),
    }
    lines = [f"HF_HUB_DOWNLOAD_TIMEOUT={opts.timeout:g} s, trickle: a byte every {opts.trickle:g} s", ""]

    def say(text: str) -> None:
        print(text, flush=True)  # noqa: T201
        lines.append(text)

    with tempfile.TemporaryDirectory(prefix="bench-hub-faults-") as tmp:
        release = make_release(Path(tmp) / "release")
        say(f"{'ends by itself':32} {'exit':>4} {'seconds':>8} {'lines':>5}  the line")
        n = 0
        for name, (suffix, fault) in ends.items():
            for stream in (False, True):
                label = f"{name} {'--stream' if stream else 'download'}"
                if opts.only not in label:
                    continue
                n += 1
                work = Path(tmp) / f"run{n}"
                hub = serve(work / "hub", release, suffix, fault)
                began = time.monotonic()
                proc = start(hub, release, work, opts.timeout, stream)
                _, err = proc.communicate()
                took = time.monotonic() - began
                hub.__exit__()
                got = [line for line in err.splitlines() if line.strip()]
                say(f"{label:32} {proc.returncode:>4} {took:8.2f} {len(got):>5}  {(got or [''])[-1][:150]}")
        say("")
        say(f"{'Ctrl-C':40} {'exit':>4} {'s to stop':>9} {'lines':>5}")
        for name, (suffix, fault, event) in states.items():
            for stream in (False, True):
                for times in (1, 2):
                    label = f"{name} {'--stream' if stream else 'download'} x{times}"
                    if opts.only not in label:
                        continue
                    n += 1
                    work = Path(tmp) / f"run{n}"
                    hub = serve(work / "hub", release, suffix, fault)
                    proc = start(hub, release, work, opts.timeout, stream)
                    if not getattr(hub.state, event).wait(600):
                        say(f"{label:40} the server never saw the request")
                        proc.kill()
                        continue
                    sent = time.monotonic()
                    for _ in range(times):
                        proc.send_signal(signal.SIGINT)
                    _, err = proc.communicate()
                    took = time.monotonic() - sent
                    hub.__exit__()
                    got = [line for line in err.splitlines() if line.strip()]
                    say(f"{label:40} {proc.returncode:>4} {took:9.3f} {len(got):>5}")
    if opts.save:
        opts.save.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
