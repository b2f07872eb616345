"""SIGINT and SIGTERM stop every long command promptly and cleanly (issue 13, item 1).

Each test starts the real CLI in a subprocess on a model big enough that the stage lasts a while,
waits until the stage is reached (a file of that stage open in the process, seen in /proc), sends
the signal, and checks: exit 130 (SIGINT) or 143 (SIGTERM) within a generous limit, one stderr line
saying "interrupted", no traceback, no temporary left; then the same command run again completes
with byte-exact outputs. Not covered: the Hub download stage, and a signal during the imports
before `main` runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import tree

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/fd")

LIMIT = 5.0  # seconds from the signal to the exit: generous, the measured latency is well under 1 s
SIGNALS = {"int": (signal.SIGINT, 130), "term": (signal.SIGTERM, 143)}


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "xorweights.cli", *map(str, args)]


def _open_files(pid: int) -> list[str]:
    found = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return found


def opened(folder: Path, also: Callable[[str], bool] = lambda _: True) -> Callable[[int], bool]:
    """True once the process holds open a file in `folder` that `also` accepts."""
    where = str(folder.resolve()) + os.sep
    return lambda pid: any(f.startswith(where) and also(f) for f in _open_files(pid))


def temps(*folders: Path) -> list[Path]:
    return [p for f in folders if f.exists() for p in f.rglob(".xorweights-*.part")]


def interrupt(
    args: list[str], ready: Callable[[int], bool], sig: str, env: dict[str, str] | None = None
) -> str:
    """Run `args`, signal it once `ready(pid)`, check the exit; returns stderr."""
    signum, code = SIGNALS[sig]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}
    )
    try:
        deadline = time.monotonic() + 60
        while not ready(proc.pid):
            assert proc.poll() is None, f"finished before the stage was reached: {proc.stderr.read()!r}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "stage never reached"
            time.sleep(0.005)
        proc.send_signal(signum)
        try:
            proc.wait(timeout=LIMIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {LIMIT} s after the signal")
        err = proc.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err
    return err


def ok(args: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(args, capture_output=True, timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr.decode()


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LLaMA-shaped pair (about 512 MiB each), its payload, and a reference decode and conversion."""
    from xorweights.demo import make_model_pair

    root = tmp_path_factory.mktemp("signals")
    base, tuned, _ = make_model_pair(root, size_mb=512)
    env = {**os.environ, "XORWEIGHTS_DISABLE_PROGRESS_BARS": "1"}
    src = root / "llama" / "src"  # no tokenizer.model: the demo's is not a real one
    src.mkdir(parents=True)
    for p in base.iterdir():
        if p.name != "tokenizer.model":
            os.link(p, src / p.name)
    for args in (
        _cli("encode", tuned, "--base", base, "--out", root / "payload", "-q"),
        _cli("base", "convert", "--from", src, "--out", root / "converted", "-q"),
    ):
        subprocess.run(args, check=True, capture_output=True, env=env, timeout=300)
    return {"root": root, "base": base, "tuned": tuned, "payload": root / "payload", "src": src}


@pytest.mark.parametrize("sig", ["int", "term"])
def test_decode_interrupted_in_the_xor_pass(release: dict[str, Path], tmp_path: Path, sig: str) -> None:
    out = tmp_path / "out"
    args = _cli("decode", release["payload"], "--base", release["base"], "--out", out, "-q", "-j", "1")
    interrupt(args, lambda pid: bool(temps(out)), sig)
    assert not temps(out)
    ok(args)
    assert tree(out) == tree(release["tuned"])


def test_decode_interrupted_while_proving_the_base(release: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _cli("decode", release["payload"], "--base", release["base"], "--out", out, "-q", "-j", "1")
    interrupt(args, opened(release["base"], lambda f: f.endswith(".safetensors")), "int")
    assert not temps(out) and not any(p.name.endswith(".safetensors") for p in out.glob("*"))
    ok(args)
    assert tree(out) == tree(release["tuned"])


@pytest.mark.parametrize("stage", ["hashing", "xor"])
def test_encode_interrupted(release: dict[str, Path], tmp_path: Path, stage: str) -> None:
    out = tmp_path / "payload"
    args = _cli("encode", release["tuned"], "--base", release["base"], "--out", out, "-q", "-j", "1")
    ready = opened(release["base"], lambda f: f.endswith(".safetensors")) if stage == "hashing" else None
    interrupt(args, ready or (lambda pid: bool(temps(out))), "term" if stage == "xor" else "int")
    assert not temps(out)
    ok(args)
    assert tree(out) == tree(release["payload"])


def test_verify_interrupted_while_hashing(release: dict[str, Path], tmp_path: Path) -> None:
    args = _cli(
        "verify", release["tuned"], "--checksums", release["payload"] / "xorweights.json", "-q", "-j", "1"
    )
    interrupt(args, opened(release["tuned"], lambda f: f.endswith(".safetensors")), "int")
    ok(args)


@pytest.mark.parametrize("sig", ["int", "term"])
def test_base_convert_interrupted(release: dict[str, Path], tmp_path: Path, sig: str) -> None:
    out = tmp_path / "converted"
    args = _cli("base", "convert", "--from", release["src"], "--out", out, "-q")
    interrupt(args, lambda pid: bool(temps(out)), sig)
    assert not temps(out)
    ok(args)
    assert tree(out) == tree(release["root"] / "converted")


def test_publish_interrupted_while_hashing(release: dict[str, Path], hub, tmp_path: Path) -> None:
    from tests.hubserver import TOKEN

    payload = tmp_path / "payload"
    shutil.copytree(release["payload"], payload)
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home")}
    args = _cli("publish", payload, "me/ft-xor", "-q", "-j", "1")
    interrupt(args, opened(payload, lambda f: f.endswith(".safetensors")), "int", env)
    ok(args, env)
    out = tmp_path / "out"
    ok(_cli("decode", "me/ft-xor", "--base", release["base"], "--out", out, "-q"), env)
    assert tree(out) == tree(release["tuned"])
