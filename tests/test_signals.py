"""SIGINT and SIGTERM stop every long command promptly and cleanly.

Each test starts the real CLI in a subprocess on a small model, waits until the stage is reached
(a file of that stage open in the process, seen in /proc, or a temporary output written), sends
the signal, and checks: exit 130 (SIGINT) or 143 (SIGTERM) within a generous limit, one stderr line
saying "interrupted", no traceback, no temporary left; then the same command run again completes
with byte-exact outputs. Covered too: the Hub download (test server, throttled), the start (just
spawned, the CLI's handler installed, libraries loading, the command running) and the end (after
the result is printed, while the process exits). Not covered: the first ~25 ms of interpreter
start-up, before any of the package's code runs.

The process is caught in each state by `tests/process_states.py`: it runs in short steps, stopped
between them while its state is read, so that the signal lands in that state however busy the
machine is; durations decide nothing.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import tree
from tests.process_states import handles, mapped, opened, signal_stopped, step_until
from xorweights.cli._signals import INTERRUPTED

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/fd")

LIMIT = 60.0  # seconds from the signal to the exit: a safety net (the measured latency is well under 1 s)
SIGNALS = {"int": (signal.SIGINT, 130), "term": (signal.SIGTERM, 143)}


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "xorweights.cli", *map(str, args)]


def temps(*folders: Path) -> list[Path]:
    return [p for f in folders if f.exists() for p in f.rglob(".xorweights-*.part")]


def interrupt(
    args: list[str], ready: Callable[[int], bool], sig: str, env: dict[str, str] | None = None
) -> str:
    """Run `args`, signal it in the state `ready(pid)`, check the exit; returns stderr."""
    signum, code = SIGNALS[sig]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}
    )
    try:
        reached = step_until(proc, ready)
        assert reached, f"finished before the stage was reached: {proc.stderr.read()!r}"  # type: ignore[union-attr]
        signal_stopped(proc, signum)
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
    """A LLaMA-shaped pair (about 128 MiB each, three shards), its payload, and a reference
    conversion. The size proves nothing: each stage is caught by its state, however short."""
    from xorweights.demo import make_model_pair

    root = tmp_path_factory.mktemp("signals")
    base, tuned, _ = make_model_pair(root, size_mb=128)
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


def test_decode_interrupted_while_reading_the_base(release: dict[str, Path], tmp_path: Path) -> None:
    """The base is proved in the pass that reads it: interrupted there, no temporary is left and
    whatever took its final name is complete."""
    out = tmp_path / "out"
    args = _cli("decode", release["payload"], "--base", release["base"], "--out", out, "-q", "-j", "1")
    interrupt(args, opened(release["base"], lambda f: f.endswith(".safetensors")), "int")
    made = tree(out)
    assert not temps(out) and all(made[n] == tree(release["tuned"])[n] for n in made)
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
    # A shard being written (not one of the small files, which may be the last thing it writes).
    interrupt(args, lambda pid: any(".bin" in p.name for p in temps(out)), sig)
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


def _starting(base: Path) -> dict[str, Callable[[int], bool]]:
    """Moments of the start: just spawned; the CLI's first handler installed (its `_signals` module
    runs first); numpy loaded; isal loaded (with the payload formats); the command running (a base
    file open). Before the second, Python's own handling applies."""
    ours = handles(signal.SIGTERM)
    return {
        "spawned": lambda pid: True,
        "handler installed": ours,
        "numpy loaded": lambda pid: ours(pid) and mapped("_multiarray_umath")(pid),
        "isal loaded": lambda pid: ours(pid) and mapped("isal_zlib")(pid),
        "command running": opened(base, lambda f: f.endswith(".safetensors")),
    }


@pytest.mark.parametrize("launcher", ["module", "script"])
@pytest.mark.parametrize("sig", ["int", "term"])
def test_interrupted_while_starting(
    release: dict[str, Path], tmp_path: Path, sig: str, launcher: str
) -> None:
    """A signal at each moment of the start (`_starting`): from the moment the CLI's first handler is
    installed, exit 130/143 with the one line. Just after the spawn, Python may still be starting
    (killed by the signal, or a `KeyboardInterrupt` traceback): allowed only when the process had
    no SIGTERM handler yet when the signal was sent (it is stopped while we look)."""
    signum, code = SIGNALS[sig]
    script = Path(sys.executable).parent / "xorweights"
    if launcher == "script" and not script.exists():
        pytest.skip("no console script next to the interpreter")
    head = [str(script)] if launcher == "script" else _cli()
    for moment, state in _starting(release["base"]).items():
        out = tmp_path / f"out-{moment}"
        args = [*head, "decode", str(release["payload"]), "--base", str(release["base"]), "--out", str(out)]
        proc = subprocess.Popen([*args, "-q", "-j", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            reached = step_until(proc, state)
            assert reached, (moment, proc.communicate()[1])
            ours = handles(signal.SIGTERM)(proc.pid)
            signal_stopped(proc, signum)
            _, err_bytes = proc.communicate(timeout=LIMIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {LIMIT} s after the signal sent when {moment}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        err = err_bytes.decode()
        if not ours:  # Python was still starting: not ours to handle
            assert moment == "spawned" and proc.returncode in (-signum, 1), (moment, err)
            continue
        assert proc.returncode == code, (moment, err)
        assert err.splitlines() == [INTERRUPTED], (moment, err)
        assert not temps(out)


def test_decode_interrupted_while_downloading(release: dict[str, Path], hub, tmp_path: Path) -> None:
    """The Hub download stops at once (huggingface_hub's own pool would finish the running files
    first), its partial file removed (huggingface_hub never resumes one); the next run completes."""
    from tests.hubserver import TOKEN

    hub.state.add_folder("me/ft-xor", release["payload"])
    hub.state.rate = 64 << 20  # bytes per second: the download lasts long enough to be caught midway
    home = tmp_path / "hf-home"
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(home)}
    out = tmp_path / "out"
    args = _cli("decode", "me/ft-xor", "--base", release["base"], "--out", out, "-q")

    def downloading(_pid: int) -> bool:
        return any(p.stat().st_size > 0 for p in home.rglob("*.incomplete"))

    interrupt(args, downloading, "int", env)
    assert not list(home.rglob("*.incomplete")) and not out.exists()
    hub.state.rate = None
    ok(args, env)
    assert tree(out) == tree(release["tuned"])
    assert not list(home.rglob("*.incomplete"))


def _read_until(proc: subprocess.Popen[bytes], lines: tuple[int, int]) -> tuple[bytes, bytes]:
    """Read the process's stdout and stderr until they hold `lines` (complete lines on each) or end;
    returns what was read (a 60 s safety net)."""
    got = {proc.stdout: b"", proc.stderr: b""}
    sel = selectors.DefaultSelector()
    for f in got:
        sel.register(f, selectors.EVENT_READ)  # type: ignore[arg-type]
    deadline = time.monotonic() + 60
    try:
        while sel.get_map() and (got[proc.stdout].count(b"\n"), got[proc.stderr].count(b"\n")) < lines:
            assert time.monotonic() < deadline, "the process neither printed nor ended"
            for key, _ in sel.select(timeout=1):
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    got[key.fileobj] += chunk  # type: ignore[index]
                else:
                    sel.unregister(key.fileobj)
    finally:
        sel.close()
    return got[proc.stdout], got[proc.stderr]


def _lines(output: bytes, out_dir: Path) -> list[str]:
    """The output's lines, the measured times and rates and the output folder left out."""
    text = re.sub(r"in [0-9.]+ s \([^)]*\)", "in T", output.decode()).replace(str(out_dir), "OUT")
    return text.splitlines()


def test_interrupted_while_finishing(model_pair, tmp_path: Path) -> None:
    """A signal once the command has printed its result, up to the end of the process (Python's own
    shutdown included: worker threads, `atexit` callbacks, modules torn down): either the process is
    already gone (exit 0, its normal output) or it exits 130/143 with the one line after what it had
    printed. Never "Exception ignored", a traceback, an exit 0 after the line, or death by the signal.
    Sent when the first result line, the last result line and the last warning line are out."""
    import xorweights

    base, ft = model_pair()
    payload = tmp_path / "payload"
    xorweights.encode(ft, base=base, out=payload, format="oasst")

    def cmd(name: str) -> list[str]:
        return _cli("decode", payload, "--base", base, "--out", tmp_path / name, "-j", "2")

    normal = subprocess.run(cmd("reference"), capture_output=True, timeout=60)
    assert normal.returncode == 0, normal.stderr
    want_out, want_err = (
        _lines(normal.stdout, tmp_path / "reference"),
        _lines(normal.stderr, tmp_path / "reference"),
    )
    assert want_out and want_err  # the result, then a warning (no --checksums given)
    moments = [(1, 0), (len(want_out), 0), (len(want_out), len(want_err))]
    seen = set()
    for i in range(12):
        sig = "int" if i % 2 == 0 else "term"
        signum, code = SIGNALS[sig]
        proc = subprocess.Popen(cmd(f"out-{i}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            head_out, head_err = _read_until(proc, moments[i % len(moments)])
            proc.send_signal(signum)
            rest_out, rest_err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out, err = (
            _lines(head_out + rest_out, tmp_path / f"out-{i}"),
            _lines(head_err + rest_err, tmp_path / f"out-{i}"),
        )
        what = (i, sig, proc.returncode, out, err)
        assert "Traceback" not in "\n".join(err) and "Exception ignored" not in "\n".join(err), what
        if proc.returncode == 0:  # gone before the signal
            assert (out, err) == (want_out, want_err), what
        else:
            assert proc.returncode == code, what
            assert err[-1] == INTERRUPTED and err[:-1] == want_err[: len(err) - 1], what
            assert out == want_out[: len(out)], what
        seen.add(proc.returncode)
    print(f"exit codes seen: {sorted(seen)}")  # noqa: T201
