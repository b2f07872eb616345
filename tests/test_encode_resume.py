"""`encode` resumes like `decode`: a rerun after a kill keeps what the killed run finished, makes
only the rest, and leaves the payload byte-identical to an uninterrupted encode; a rerun of a
finished encode exits 0 without `--force`."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import xorweights
from xorweights.hub import publishing
from xorweights.outfolder.atomic import BOOKKEEPING_DIR, STAGING_DIR, TEMP_PREFIX, TEMP_SUFFIX

from . import die_after_rename
from .conftest import random_bytes, tree, write_files
from .process_states import signal_stopped, step_until

MIB = 1 << 20
SHARDS = 4


def safetensors(tensors: dict[str, bytes]) -> bytes:
    """A safetensors file of float16 tensors of 1024 columns (each `bytes` a whole number of rows)."""
    header, offset = {}, 0
    for name, data in tensors.items():
        header[name] = {
            "dtype": "F16",
            "shape": [len(data) // 2048, 1024],
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(tensors.values())


def native_folders(root: Path, mib: int = 12) -> tuple[Path, Path]:
    """`root/base/` (one safetensors file) and `root/ft/` (one file per tensor, `mib` MiB each, and a
    config.json): tens of MiB in all."""
    base = {f"layer{i}.weight": random_bytes(mib * MIB, 10 + i) for i in range(SHARDS)}
    ft = {}
    for i, (name, data) in enumerate(base.items()):
        arr = np.frombuffer(data, dtype=np.uint8).copy()
        arr[:: 4096 + i] ^= 1  # a few bytes differ from the base
        ft[f"model-{i}.safetensors"] = safetensors({name: arr.tobytes()})
    ft["config.json"] = b'{"model_type": "test"}\n'
    return (
        write_files(root / "base", {"model.safetensors": safetensors(base)}),
        write_files(root / "ft", ft),
    )


def legacy_big_folders(root: Path, mib: int = 12) -> tuple[Path, Path]:
    names = [f"pytorch_model-0000{i}-of-0000{SHARDS}.bin" for i in range(1, SHARDS + 1)]
    base = {n: random_bytes(mib * MIB + i, 20 + i) for i, n in enumerate(names)}
    ft = {n: random_bytes(mib * MIB + 7 * i, 30 + i) for i, n in enumerate(names)}
    base["config.json"] = b'{"vocab_size": 32000}\n'
    ft["config.json"] = b'{"vocab_size": 32016}\n'
    return write_files(root / "base", base), write_files(root / "ft", ft)


def encode_cmd(ft: Path, base: Path, out: Path, fmt: str) -> list[str]:
    cmd = [sys.executable, "-m", "xorweights.cli", "encode", str(ft), "--base", str(base), "--out", str(out)]
    return [*cmd, "--format", fmt, "-j", "1", "-q", "--json"]


def run(cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)


def complete_files(out: Path) -> set[str]:
    """Payload files under a final name, in the folder or staged (no temporary, no state)."""
    found = set()
    for folder in (out, out / BOOKKEEPING_DIR / STAGING_DIR):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and not p.name.startswith(TEMP_PREFIX) and p.name != "xorweights.json":
                    found.add(p.name)
    return found


def payload(out: Path) -> dict[str, bytes]:
    """The payload as published: what `tree` sees, the records (which no upload takes) left out."""
    return {k: v for k, v in tree(out).items() if not k.startswith(".cache/huggingface/")}


def rerun_after(cmd: list[str], out: Path, reference: dict[str, bytes]) -> tuple[int, int]:
    """Rerun `cmd` (no --force): it must succeed and leave `reference`; returns (kept, made)."""
    before = complete_files(out)
    res = run(cmd)
    assert res.returncode == 0, res.stderr
    assert payload(out) == reference
    assert not any(n.endswith(TEMP_SUFFIX) for n in tree(out))
    files = json.loads(res.stdout)["files"]
    kept = {f["name"] for f in files if f["kept"]}
    assert kept == before, (kept, before)  # every complete file is kept, nothing else
    return len(kept), len(files) - len(kept)


def make_setup(fmt: str, tmp_path: Path, mib: int):
    base, ft = (native_folders if fmt == "xorweights" else legacy_big_folders)(tmp_path, mib=mib)
    ref_out = tmp_path / "reference"
    res = run(encode_cmd(ft, base, ref_out, fmt))
    assert res.returncode == 0, res.stderr
    return fmt, ft, base, payload(ref_out), tmp_path


@pytest.fixture(params=["xorweights", "oasst"])
def setup(request: pytest.FixtureRequest, tmp_path: Path):
    """Both formats, files of 1 MiB: the size proves nothing where the kill point is a rename."""
    return make_setup(request.param, tmp_path, mib=1)


def test_rerun_after_a_kill_at_each_rename_keeps_what_was_finished(setup) -> None:
    fmt, ft, base, reference, tmp_path = setup
    renames = SHARDS + 1 + (SHARDS + 1 if fmt == "xorweights" else 0)  # native: staged, then moved
    kept_some = False
    for n in range(1, renames + 1):
        out = tmp_path / f"out-{n}"
        cmd = encode_cmd(ft, base, out, fmt)
        died = run(die_after_rename.command(n, cmd))
        assert died.returncode == 9, died.stderr
        kept, _ = rerun_after(cmd, out, reference)
        assert kept >= min(n, SHARDS + 1)  # at least the files renamed before the kill
        kept_some |= kept > 0
        if fmt == "xorweights":
            assert not (out / ".cache").exists()
    assert kept_some


def _making(out: Path, done: int) -> Callable[[int], bool]:
    """A state: `done` payload files finished and the next one being made (its temporary there)."""

    def state(_pid: int) -> bool:
        temps = [
            p
            for folder in (out / BOOKKEEPING_DIR, out / BOOKKEEPING_DIR / STAGING_DIR)
            if folder.is_dir()
            for p in folder.iterdir()
            if p.name.startswith(TEMP_PREFIX) and p.name.endswith(TEMP_SUFFIX)
        ]
        return bool(temps) and len(complete_files(out)) == done

    return state


@pytest.mark.parametrize("fmt", ["xorweights", "oasst"])
def test_rerun_after_sigkill_at_several_instants(fmt: str, tmp_path: Path) -> None:
    """SIGKILL while the first file is being made, and while each later one is (the ones before
    finished): the rerun keeps exactly the finished files and makes the rest."""
    _, ft, base, reference, _ = make_setup(fmt, tmp_path, mib=4)
    for done in range(SHARDS):
        out = tmp_path / f"out-k{done}"
        cmd = encode_cmd(ft, base, out, fmt)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            caught = step_until(proc, _making(out, done))
            assert caught, f"finished before {done} files were made and the next begun"
            signal_stopped(proc, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        kept, made = rerun_after(cmd, out, reference)
        assert kept == done and made > 0, (done, kept, made)  # kept: exactly the finished files


def test_rerun_of_a_finished_encode_keeps_everything(setup) -> None:
    fmt, ft, base, reference, tmp_path = setup
    out = tmp_path / "reference"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    res = run(encode_cmd(ft, base, out, fmt))
    assert res.returncode == 0, res.stderr
    assert all(f["kept"] for f in json.loads(res.stdout)["files"])
    assert payload(out) == reference
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == stamps
    # Changed inputs are not kept: the changed file is made again (ours, so no --force needed,
    # except for a native payload, whose manifest then no longer matches).
    src = ft / ("model-1.safetensors" if fmt == "xorweights" else "pytorch_model-00002-of-00004.bin")
    data = bytearray(src.read_bytes())
    data[-1] ^= 0xFF
    src.write_bytes(bytes(data))
    res = run(encode_cmd(ft, base, out, fmt))
    if fmt == "xorweights":
        assert res.returncode != 0 and "--force" in json.loads(res.stdout)["error"]["message"]
        res = run([*encode_cmd(ft, base, out, fmt), "--force"])
    assert res.returncode == 0, res.stderr
    made = {f["name"] for f in json.loads(res.stdout)["files"] if not f["kept"]}
    assert src.name in made


def test_publish_of_a_resumed_payload_sends_no_state(setup) -> None:
    fmt, ft, base, reference, tmp_path = setup
    out = tmp_path / "out"
    cmd = encode_cmd(ft, base, out, fmt)
    if fmt == "oasst":  # the killed run computed the checksums too (else its files are made again)
        cmd += ["--manifest", str(tmp_path / "m.json")]
    assert run(die_after_rename.command(2, cmd)).returncode == 9
    report = xorweights.encode(ft, base=base, out=out, format=fmt, with_checksums=True)  # type: ignore[arg-type]
    assert any(f.kept for f in report.files)
    rel = publishing._release(out, "me/x", report.manifest if fmt == "oasst" else None)
    assert rel.names and not any(n.startswith(".") or "xorweights-" in n for n in rel.names)
    assert sorted(rel.names) == sorted(reference)


def test_legacy_rerun_with_other_options_remakes_the_files(model_pair, tmp_path: Path) -> None:
    base, ft = model_pair()
    out = tmp_path / "out"
    first = xorweights.encode(ft, base=base, out=out, format="oasst")
    assert not any(f.kept for f in first.files)
    again = xorweights.encode(ft, base=base, out=out, format="oasst")
    assert all(f.kept for f in again.files)
    gz = xorweights.encode(ft, base=base, out=out, format="oasst", compress="gzip")
    made = {f.name for f in gz.files if not f.kept}
    assert made == {f.name for f in gz.files if f.action == "xor"} and made
    fresh = tmp_path / "fresh"
    xorweights.encode(ft, base=base, out=fresh, format="oasst", compress="gzip")
    assert payload(out) == payload(fresh)
    # With checksums asked for, files recorded without them are made again, then kept.
    ck = xorweights.encode(ft, base=base, out=out, format="oasst", compress="gzip", with_checksums=True)
    assert not any(f.kept for f in ck.files) and ck.manifest is not None
    ck2 = xorweights.encode(ft, base=base, out=out, format="oasst", compress="gzip", with_checksums=True)
    assert all(f.kept for f in ck2.files) and ck2.manifest == ck.manifest


def test_a_refused_encode_leaves_no_hidden_folder(model_pair, tmp_path: Path) -> None:
    base, ft = model_pair()
    out = write_files(tmp_path / "out", {"config.json": b"{}\n"})  # not ours
    with pytest.raises(xorweights.OutputExistsError):
        xorweights.encode(ft, base=base, out=out, format="oasst")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_a_forced_encode_killed_midway_keeps_the_finished_payload_whole(tmp_path: Path) -> None:
    """The manifest of the payload in place goes only when the new payload files move in: a kill
    before that leaves the old payload and its manifest as they were."""
    base, ft = native_folders(tmp_path, mib=2)
    out = tmp_path / "out"
    assert run(encode_cmd(ft, base, out, "xorweights")).returncode == 0
    before = payload(out)
    changed = tmp_path / "ft2"
    changed.mkdir()
    for p in ft.iterdir():
        (changed / p.name).write_bytes(p.read_bytes())
    (changed / "config.json").write_bytes(b'{"model_type": "other"}\n')
    died = run(die_after_rename.command(1, [*encode_cmd(changed, base, out, "xorweights"), "--force"]))
    assert died.returncode == 9, died.stderr
    assert payload(out) == before  # xorweights.json included
