"""A broken Hub never hangs a run: `decode` of a repo id against a fault-injecting test Hub.

Real `python -m xorweights` processes against tests/hubserver.py over real HTTP, with
`HF_HUB_DOWNLOAD_TIMEOUT=1` and a server trickling a byte every 0.9 s: the same rules as with the
defaults (10 s, a byte every 9 s), ten times faster. Each faulty run must end by itself with exactly
one stderr line and exit 1 or 2, nothing under a final name; SIGINT, sent once the server has met
the request (a state, not a duration), must stop it with exit 130 and one line. Durations are only
recorded (`-s` prints them); benchmarks/bench_hub_faults.py measures them.

Bounds (documented in docs/hub.md, `watch` and `stream`): with T = HF_HUB_DOWNLOAD_TIMEOUT, a
trickled download ends within (MAX_REOPENS + 1) x T + MAX_REOPENS x 1 s (huggingface_hub's pause
before resuming), a trickled stream within (MAX_REOPENS + 1) x T, dropped connections on a stream
within the reopen pauses 0.5 + 1 + 2 + 4 + 8 s, a `Retry-After` beyond `MAX_RETRY_AFTER` at once,
a Hub that never answers within MAX_UNANSWERED x T plus huggingface_hub's pauses between retries
(1 + 2 s; the listing, asked once, within T), a publish within MAX_UNANSWERED x PUBLISH_ANSWER x T.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import xorweights
from tests.conftest import tree
from tests.hubserver import TOKEN, Fault, HubServer
from xorweights import publish
from xorweights.errors import PayloadMismatchError

pytestmark = pytest.mark.hub

REPO = "org/faulty-xor"
WEIGHTS = "payload/model.safetensors"
STREAM = {"download": [], "stream": ["--stream"]}
#: A generous safety net for one run: never what decides a pass (each ends far sooner by itself).
SAFETY = 120


def start(hub: HubServer, release: dict[str, Path], tmp_path: Path, *more: str) -> subprocess.Popen[str]:
    """`python -m xorweights decode REPO` against `hub`, fast timeouts, in its own HF_HOME."""
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DOWNLOAD_TIMEOUT": "1",
        "HF_HUB_ETAG_TIMEOUT": "1",
    }
    args = ["decode", REPO, "--base", str(release["base"]), "--out", str(tmp_path / "out"), "-q", *more]
    return subprocess.Popen(
        [sys.executable, "-m", "xorweights", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=SAFETY)
    return proc.returncode, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def nothing_wrong(tmp_path: Path, release: dict[str, Path], victim: str = WEIGHTS) -> None:
    """No final name holds a wrong byte: only finished outputs, equal to the fine-tuned files."""
    out = tree(tmp_path / "out") if (tmp_path / "out").exists() else {}
    made = {name: data for name, data in out.items() if not name.startswith(".") and "/." not in name}
    assert Path(victim).name not in made
    assert made == {name: data for name, data in tree(release["ft"]).items() if name in made}


@pytest.fixture
def served(native_release: dict[str, Path], hub: HubServer) -> HubServer:
    publish(native_release["payload"], REPO, endpoint=hub.url, token=TOKEN)
    hub.state.requests.clear()
    return hub


LISTING = f"/api/models/{REPO}/revision/main"
SILENT = "no answer from the Hub within 1 s, 3 times"
# name: (request path suffix, fault, words the one line must hold)
FAULTS = {
    "retry-after-a-day": (WEIGHTS, Fault("retry_after", 86_400), "asks to wait 86400 s"),
    "trickle": (WEIGHTS, Fault("trickle", 0.9), "lost 6 times"),
    "redirect-loop": (WEIGHTS, Fault("redirect_loop"), "redirect"),
    "gzip-weights": (WEIGHTS, Fault("bad_gzip"), "does not decode"),
    "dropped": (WEIGHTS, Fault("drop", 100), "model.safetensors"),
    "bad-status-line": (WEIGHTS, Fault("bad_status"), "model.safetensors"),
    "hang-weights": (WEIGHTS, Fault("hang"), f"model.safetensors: {SILENT}"),  # HEAD; --stream: GET
}
# Requests made alike in both modes (listing, card): one mode is enough.
ONCE = {
    "gzip-card": ("README.md", Fault("bad_gzip"), "README.md: the body does not decode"),
    "listing-redirect-loop": (LISTING, Fault("redirect_loop"), f"{REPO}@main on http"),
    "listing-retry-after-a-day": (LISTING, Fault("retry_after", 86_400), "(listing): the Hub asks to wait"),
    "hang-listing": (LISTING, Fault("hang"), "the Hub is unreachable (no answer in time)"),
    "hang-card": ("README.md", Fault("hang"), f"README.md: {SILENT}"),
}


@pytest.mark.parametrize(
    ("name", "mode"),
    [(n, m) for n in FAULTS for m in ("download", "stream")] + [(n, "download") for n in ONCE],
)
def test_a_broken_hub_ends_the_run_by_itself_with_one_line(
    served: HubServer, native_release: dict[str, Path], tmp_path: Path, name: str, mode: str, record_property
) -> None:
    suffix, fault, words = {**FAULTS, **ONCE}[name]
    served.state.faults[suffix] = fault
    began = time.monotonic()
    code, out, err = finish(start(served, native_release, tmp_path, *STREAM[mode]))
    record_property("seconds_to_end", round(time.monotonic() - began, 2))  # recorded, never asserted
    line = one_line(err)
    assert code in (1, 2) and line.startswith("Error: ") and words in line, line
    assert "Error (" not in line  # no type name of ours in the text
    assert served.state.faulted.is_set()
    nothing_wrong(tmp_path, native_release)


def test_json_reports_a_network_failure_as_one_object(
    served: HubServer, native_release: dict[str, Path], tmp_path: Path
) -> None:
    served.state.faults[WEIGHTS] = Fault("redirect_loop")
    code, out, err = finish(start(served, native_release, tmp_path, "--json"))
    doc = json.loads(out)
    assert code == 2 and doc["error"]["type"] == "HubError" and doc["error"]["exit_code"] == 2
    assert err == "" and "redirect" in doc["error"]["message"]  # the JSON object is the only error output


# state: (request path suffix, fault, the server's event that says the client is there)
STATES = {
    "connecting": (WEIGHTS, Fault("hang"), "faulted"),
    "retry-after": (WEIGHTS, Fault("retry_after", 30), "faulted"),
    "trickling": (WEIGHTS, Fault("trickle", 0.9), "trickling"),
    "reopen-backoff": (WEIGHTS, Fault("drop", 100), "faulted"),
}


@pytest.mark.parametrize("twice", [False, True], ids=["once", "twice"])
@pytest.mark.parametrize("mode", ["download", "stream"])
@pytest.mark.parametrize("state", list(STATES))
def test_ctrl_c_stops_a_run_in_every_network_state(
    served: HubServer,
    native_release: dict[str, Path],
    tmp_path: Path,
    state: str,
    mode: str,
    twice: bool,
    record_property,
) -> None:
    suffix, fault, event = STATES[state]
    served.state.faults[suffix] = fault
    proc = start(served, native_release, tmp_path, *STREAM[mode])
    assert getattr(served.state, event).wait(SAFETY)  # the client is in that state
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    if twice:
        proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    record_property("seconds_to_stop", round(time.monotonic() - sent, 2))  # recorded, never asserted
    assert code == 130 and one_line(err) == "interrupted; run the same command again to resume"
    nothing_wrong(tmp_path, native_release)


def test_a_tampered_compressed_stream_is_the_hubs_mismatch_not_a_malformed_frame(
    served: HubServer, native_release: dict[str, Path], tmp_path: Path
) -> None:
    served.state.tamper(REPO, WEIGHTS)  # served bytes change; the listing keeps the original sha256
    code, _, err = finish(start(served, native_release, tmp_path, "--stream"))
    line = one_line(err)
    assert code == 1 and "differs from the sha256 the Hub lists" in line and "model.safetensors" in line, line
    nothing_wrong(tmp_path, native_release)
    with pytest.raises(PayloadMismatchError, match="differs from the sha256 the Hub lists"):
        xorweights.decode(
            REPO,
            base=native_release["base"],
            out=tmp_path / "lib",
            endpoint=served.url,
            token=TOKEN,
            cache_dir=tmp_path / "cache",
            stream=True,
        )


def test_a_few_dropped_connections_are_resumed(
    served: HubServer, native_release: dict[str, Path], tmp_path: Path
) -> None:
    served.state.cut_after[WEIGHTS] = 5000
    code, _, err = finish(start(served, native_release, tmp_path, "--stream"))
    assert code == 0, err
    assert tree(tmp_path / "out") == tree(native_release["ft"])


@pytest.mark.parametrize(
    ("suffix", "fault", "words"),
    [
        ("/preupload/main", Fault("retry_after", 86_400), "asks to wait 86400 s"),
        ("/commit/main", Fault("redirect_loop"), "redirect"),
        ("/commit/main", Fault("bad_status"), "publishing to org/pub-xor"),
        ("/commit/main", Fault("hang"), "publishing to org/pub-xor on http"),
    ],
    ids=["retry-after-a-day", "redirect-loop", "bad-status-line", "hang"],
)
def test_publish_against_a_broken_hub_ends_with_one_line(
    native_release: dict[str, Path], hub: HubServer, tmp_path: Path, suffix: str, fault: Fault, words: str
) -> None:
    hub.state.faults[suffix] = fault
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run(
        [sys.executable, "-m", "xorweights", "publish", str(native_release["payload"]), "org/pub-xor", "-q"],
        capture_output=True,
        text=True,
        env={**env, "HF_HUB_DOWNLOAD_TIMEOUT": "1"},
        timeout=SAFETY,
    )
    line = one_line(proc.stderr)
    assert proc.returncode == 2 and words in line, line
    if fault.kind == "hang":
        assert "no answer in time; try again later" in line, line
    made = hub.state.repos.get("org/pub-xor")
    assert made is None or len(made.commits) == 1  # the repo's first commit only: nothing published
