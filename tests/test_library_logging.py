"""A library call prints nothing: the package's logger has a NullHandler, so that with logging left
unconfigured its warnings (the Hub's fallback to the cached copy among them) do not reach stderr
through `logging.lastResort`; huggingface_hub's bars and messages stay silent with `progress=False`.

Each test runs a fresh Python that configures no logging and calls the library (decode from a
repo id, verify, iter_tensors), on a path that logs a warning; the same calls in a Python that
listens to the package's logger show that the warning was logged.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import xorweights
from tests.hubserver import TOKEN
from tests.test_hub import nested_repo

pytestmark = pytest.mark.hub

#: In the child: decode from the Hub (then from the cache, the Hub unreachable), verify, iter_tensors.
CALLS = """
import json, sys, xorweights
a = json.loads(sys.argv[1])
kw = {"cache_dir": a["cache"], "token": a["token"]}
xorweights.decode(a["repo"], base=a["base"], out=a["out"] + "/a", endpoint=a["url"], **kw)
down = {**kw, "endpoint": "http://127.0.0.1:9"}  # refused connections: the cached copy, with a warning
report = xorweights.decode(a["repo"], base=a["base"], out=a["out"] + "/b", **down)
verified = xorweights.verify(a["out"] + "/b", a["payload"] + "/xorweights.json")
names = [n for n, _ in xorweights.iter_tensors(a["repo"], a["base"], framework="pt", **down)]
assert report.files and verified.ok and names
"""

#: Before the calls: a handler on the package's logger that keeps what it logs (printed at the end).
LISTEN = """
import logging
class Keep(logging.Handler):
    seen = []
    def emit(self, record):
        self.seen.append((record.levelname, record.name))
logging.getLogger("xorweights").addHandler(Keep())
"""
REPORT = "\nprint(json.dumps(Keep.seen))\n"


@pytest.fixture
def served(native_release, hub, tmp_path: Path) -> dict[str, str]:
    hub.state.add_folder("org/ft-xor", nested_repo(tmp_path / "repo", native_release["payload"], "ft-xor"))
    return {
        "repo": "org/ft-xor",
        "url": hub.url,
        "token": TOKEN,
        "base": str(native_release["base"]),
        "payload": str(native_release["payload"]),
    }


def child(code: str, args: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done


def test_library_calls_print_nothing_when_logging_is_unconfigured(served, tmp_path: Path) -> None:
    args = {**served, "cache": str(tmp_path / "cache"), "out": str(tmp_path / "quiet")}
    done = child(CALLS, args)
    assert done.stdout == "" and done.stderr == ""
    # The same calls, listened to: the fallback did log a warning, which the first run kept silent.
    args = {**args, "cache": str(tmp_path / "cache2"), "out": str(tmp_path / "heard")}
    seen = json.loads(child(LISTEN + CALLS + REPORT, args).stdout)
    assert ["WARNING", "xorweights.hub.payload"] in seen, seen


def test_the_package_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("xorweights").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
    assert xorweights.__name__ == "xorweights"


def test_the_cli_prints_the_fallback_warning_after_a_success_and_not_with_q(served, tmp_path: Path) -> None:
    """The CLI configures logging: its warnings are printed when the command succeeds, after its report."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": TOKEN, "XORWEIGHTS_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, "-m", "xorweights.cli", "decode", served["repo"], "--base", served["base"]]
    first = subprocess.run(
        [*cmd, "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        env={**env, "HF_ENDPOINT": served["url"]},
    )
    assert first.returncode == 0, first.stderr
    down = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    loud = subprocess.run([*cmd, "--out", str(tmp_path / "b")], capture_output=True, text=True, env=down)
    assert loud.returncode == 0 and loud.stderr.startswith("WARNING xorweights.hub.payload: "), loud.stderr
    quiet = subprocess.run(
        [*cmd, "--out", str(tmp_path / "c"), "-q"], capture_output=True, text=True, env=down
    )
    assert quiet.returncode == 0 and quiet.stdout == quiet.stderr == ""
    shutil.rmtree(tmp_path / "b")
    failed = subprocess.run(
        [*cmd, "--out", str(tmp_path / "b"), "--checksums", "no-such-release"],
        capture_output=True,
        text=True,
        env=down,
    )
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and failed.stderr.startswith("Error: ")
