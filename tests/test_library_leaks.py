"""Library use leaves nothing behind after failures: 200 failed decodes of each kind (a damaged gzip
stream, a damaged compressed frame) in one process keep its thread count and its memory where they
were, and a valid decode still works afterwards under an address-space limit."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xorweights
from tests.conftest import legacy_folders
from tests.test_compressed_payloads import pair
from xorweights.errors import IOFailure
from xorweights.formats import delta_frames
from xorweights.formats.gzip_stream import GzipReader

ROOT = Path(__file__).resolve().parent.parent
FAILURES = 200


def damaged_gzip(root: Path) -> dict[str, str]:
    """A legacy gzip payload: one good copy, one whose first shard has 64 bytes flipped mid-stream."""
    base, tuned = legacy_folders(root)
    for name in ("good", "bad"):
        xorweights.encode(tuned, format="oasst", base=base, out=root / name, compress="gzip")
    victim = root / "bad" / "pytorch_model-00001-of-00002.bin"
    data = bytearray(victim.read_bytes())
    at = len(data) // 3
    data[at : at + 64] = bytes(b ^ 0x5A for b in data[at : at + 64])
    victim.write_bytes(bytes(data))
    return {"good": str(root / "good"), "bad": str(root / "bad"), "base": str(base)}


def damaged_frames(root: Path) -> dict[str, str]:
    """A compressed native payload: one good copy, one whose fourth frame has a damaged plane (its
    manifest updated to match, so that the frame itself is what fails)."""
    root.mkdir()
    base, ft, _ = pair(root)
    for name in ("good", "bad"):
        xorweights.encode(ft, base=base, out=root / name)
    target = root / "bad" / "model.safetensors"
    data, pos = bytearray(target.read_bytes()), 0
    for _ in range(3):
        pos += delta_frames.parse_head(bytes(data[pos : pos + 40]), "t").size
    assert delta_frames.parse_head(bytes(data[pos : pos + 40]), "t").size > 80
    data[pos + 40 : pos + 80] = bytes(b ^ 0x5A for b in data[pos + 40 : pos + 80])
    target.write_bytes(bytes(data))
    doc = json.loads((root / "bad" / "xorweights.json").read_text())
    entry = next(f for f in doc["files"] if f["name"] == "model.safetensors")
    entry["payload_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (root / "bad" / "xorweights.json").write_text(json.dumps(doc))
    return {"good": str(root / "good"), "bad": str(root / "bad"), "base": str(base)}


# --- run in a process of its own (see `test_failed_decodes_leave_no_threads_and_no_memory`) -----


def _status() -> dict[str, int]:
    """VmRSS and VmSize (KiB) of this process, and its threads (the kernel's count)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {
        "rss": int(fields["VmRSS"].split()[0]),
        "vm": int(fields["VmSize"].split()[0]),
        "tasks": len(os.listdir("/proc/self/task")),
    }


def _settled_tasks(want: int) -> int:
    """The kernel's thread count once threads joined by the library have also left the kernel."""
    import time

    deadline = time.monotonic() + 60  # a safety net: the count is what is checked
    while (n := len(os.listdir("/proc/self/task"))) > want and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def drive(spec: str, out: str, failures: int, headroom: int) -> None:
    """Decode each kind's damaged payload `failures` times, then its good one, under an address-space
    limit of `headroom` bytes above the process's size at the start; write the figures to `out`."""
    import resource
    import threading

    kinds = json.loads(spec)
    start = {**_status(), "threads": threading.active_count()}
    limit = start["vm"] * 1024 + headroom
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    report: dict[str, object] = {"start": start, "limit": limit}
    for name, paths in kinds.items():
        errors: dict[str, int] = {}
        first_rss = None
        for _ in range(failures):
            try:
                xorweights.decode(paths["bad"], base=paths["base"], out=f"{out}.{name}.bad", force=True)
            except Exception as e:  # noqa: BLE001 (counted by type: all must be the payload's fault)
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            if first_rss is None:
                first_rss = _status()["rss"]
        good = xorweights.decode(paths["good"], base=paths["base"], out=f"{out}.{name}.good", force=True)
        report[name] = {
            "errors": errors,
            "first_rss": first_rss,
            "good_files": len(good.files),
            "threads": threading.active_count(),
            "tasks": _settled_tasks(start["tasks"]),
            **{k: v for k, v in _status().items() if k != "tasks"},
        }
    Path(out).write_text(json.dumps(report))


# --- the tests ----------------------------------------------------------------------------------


def test_failed_decodes_leave_no_threads_and_no_memory(tmp_path: Path) -> None:
    """The figures come from a fresh process: 200 failures of each kind, then a valid decode of
    each, all under an address-space limit of 3 GiB above its size at the start (the leak this
    guards against grew it by about 25 MiB per failure). Memory is compared with what it was after
    the first failure of the same kind (which loads what that kind needs)."""
    kinds = {"gzip": damaged_gzip(tmp_path / "gzip"), "frames": damaged_frames(tmp_path / "frames")}
    out = tmp_path / "report.json"
    code = (
        "import sys; from tests.test_library_leaks import drive; "
        "drive(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))"
    )
    env = {**os.environ, "XORWEIGHTS_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kinds), str(out), str(FAILURES), str(3 << 30)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    start = report["start"]
    for name in kinds:
        got = report[name]
        assert got["errors"] == {"FormatError": FAILURES}, (name, got)
        assert got["good_files"] > 0, name
        assert got["threads"] == start["threads"], (name, got, start)
        assert got["tasks"] == start["tasks"], (name, got, start)
        assert got["rss"] <= 1.5 * got["first_rss"], (name, got)


def _big_buffers(error: BaseException) -> list[str]:
    """Buffers of 1 MiB or more that the frames of `error`'s traceback (and its chain's) hold."""
    found, seen, todo = [], set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            for var, value in tb.tb_frame.f_locals.items():
                size = value.nbytes if isinstance(value, (np.ndarray, memoryview)) else None
                if isinstance(value, (bytes, bytearray)):
                    size = len(value)
                if size is not None and size >= 1 << 20:
                    found.append(f"{tb.tb_frame.f_code.co_name}: {var} ({size} bytes)")
            tb = tb.tb_next
        todo += [e.__cause__, e.__context__]
    return found


@pytest.mark.parametrize("kind", ["gzip", "frames"])
def test_a_kept_error_holds_no_buffers(tmp_path: Path, kind: str) -> None:
    """A caller may keep the errors (a list of failures): their tracebacks keep no chunk buffers."""
    paths = damaged_gzip(tmp_path / kind) if kind == "gzip" else damaged_frames(tmp_path / kind)
    with pytest.raises(xorweights.FormatError) as info:
        xorweights.decode(paths["bad"], base=paths["base"], out=tmp_path / "out", jobs=1)
    tb, frames = info.value.__traceback__, 0
    while tb is not None:
        frames, tb = frames + 1, tb.tb_next
    assert frames > 5  # the traceback is still there, its lines too
    assert _big_buffers(info.value) == []


class _Dropping(io.RawIOBase):
    """A raw stream that fails as `HubStream` does once its connection is lost for good."""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        raise IOFailure("reading", "me/x@abc:p.bin", OSError("connection lost 6 times"))


@pytest.mark.parametrize("backend", ["zlib", "isal"])
def test_a_gzip_reader_raises_the_same_typed_error_again(backend: str) -> None:
    """An error of the package whose `__init__` takes other arguments than its message (here
    `IOFailure`) is raised again as itself by every later read, not as a `TypeError` of a copy."""
    reader = GzipReader(_Dropping(), backend)
    for _ in range(3):
        with pytest.raises(IOFailure) as caught:
            reader.readinto(bytearray(16))
        assert "me/x@abc:p.bin" in str(caught.value) and "connection lost 6 times" in str(caught.value)
    reader.close()
