"""Issue 13: the commit protocol (intent, rename, record), a digest for every output, the journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import xorweights
from tests import die_after_rename
from tests.conftest import tree
from xorweights.outfolder.folder import JOURNAL_PATH, STATE_DIGEST, STATE_PATH, OutputFolder


def _cli(*args: object, die_after: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XORWEIGHTS_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, "-m", "xorweights.cli", *map(str, args)]
    if die_after is not None:  # killed right after its `die_after`th rename (tests/die_after_rename.py)
        cmd = die_after_rename.command(die_after, cmd)
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def outputs(folder: Path) -> set[str]:
    return {n for n in tree(folder) if n != JOURNAL_PATH}


@pytest.fixture
def legacy_payload(model_pair, tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    base, tuned = model_pair()
    payload = tmp_path / "payload"
    xorweights.encode(tuned, base=base, out=payload, format="oasst")
    return payload, base, tree(tuned)


@pytest.mark.parametrize("die_after", [1, 2])
def test_a_kill_between_rename_and_record_leaves_an_output_the_rerun_recognises(
    legacy_payload, tmp_path: Path, die_after: int
) -> None:
    payload, base, expected = legacy_payload
    out = tmp_path / "out"
    killed = _cli("decode", payload, "--base", base, "--out", out, "-q", "-j", "1", die_after=die_after)
    assert killed.returncode == 9, killed.stderr  # the process died right after a rename
    renamed = outputs(out)
    assert len(renamed) == die_after and (out / JOURNAL_PATH).exists()
    # No published checksums: only the journal's intent says the file is ours.
    again = _cli("decode", payload, "--base", base, "--out", out, "--json", "-q", "-j", "1")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    kept = {f["name"] for f in report["files"] if f["kept"]}
    assert kept == renamed
    assert tree(out) == expected
    assert not (out / JOURNAL_PATH).exists()
    state = json.loads((out / STATE_PATH).read_text())["files"]
    assert set(state) == set(expected) and all(len(e["digests"][STATE_DIGEST]) == 8 for e in state.values())


def test_a_native_decode_killed_after_a_rename_resumes(tmp_path: Path) -> None:
    from tests.test_half_made_payloads import native_pair

    ft, base = native_pair(tmp_path)
    payload = tmp_path / "payload"
    xorweights.encode(ft, base=base, out=payload)
    out = tmp_path / "out"
    killed = _cli("decode", payload, "--base", base, "--out", out, "-q", "-j", "1", die_after=1)
    assert killed.returncode == 9, killed.stderr
    again = _cli("decode", payload, "--base", base, "--out", out, "-q", "-j", "1")
    assert again.returncode == 0, again.stderr
    assert tree(out) == tree(ft)


def test_an_intent_whose_file_differs_is_not_taken_as_ours(legacy_payload, tmp_path: Path) -> None:
    payload, base, expected = legacy_payload
    out = tmp_path / "out"
    killed = _cli("decode", payload, "--base", base, "--out", out, "-q", "-j", "1", die_after=1)
    assert killed.returncode == 9
    (name,) = outputs(out)
    data = (out / name).read_bytes()
    (out / name).write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, other bytes
    again = _cli("decode", payload, "--base", base, "--out", out, "-q")
    assert again.returncode == 2 and "not made by xorweights" in again.stderr


def test_every_output_has_a_digest_and_verify_remakes_a_corrupted_one(legacy_payload, tmp_path: Path) -> None:
    payload, base, expected = legacy_payload
    out = tmp_path / "out"
    report = xorweights.decode(payload, base=base, out=out)  # no published checksums
    assert all(len(f.digests[STATE_DIGEST]) == 8 for f in report.files)
    name = max(expected, key=lambda n: len(expected[n]))
    path = out / name
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as recorded
    again = xorweights.decode(payload, base=base, out=out, verify=True)
    remade = {f.name for f in again.files if not f.kept}
    assert remade == {name}
    assert tree(out) == expected


def test_the_state_is_a_journal_appended_to_and_folded_at_the_end(tmp_path: Path) -> None:
    with OutputFolder(tmp_path) as folder:
        for i in range(3):
            (tmp_path / f"f{i}").write_bytes(b"x" * i)
            folder.intend(f"f{i}", i, {"sha256": "0" * 64}, {"payload": (1, 2)}, durable=False)
            folder.record(f"f{i}", {"sha256": "0" * 64}, {"payload": (1, 2)})
        lines = (tmp_path / JOURNAL_PATH).read_text().splitlines()
        assert [json.loads(line)["op"] for line in lines] == ["intent", "done"] * 3
        assert not (tmp_path / STATE_PATH).exists()  # nothing rewritten per output
    assert not (tmp_path / JOURNAL_PATH).exists()
    assert set(json.loads((tmp_path / STATE_PATH).read_text())["files"]) == {"f0", "f1", "f2"}
    # A line cut short by a kill is ignored; the lines before it count.
    (tmp_path / JOURNAL_PATH).write_text('{"op":"drop","name":"f1"}\n{"op":"done","na')
    with OutputFolder(tmp_path) as folder:
        assert set(folder.done) == {"f0", "f2"}
    assert not (tmp_path / JOURNAL_PATH).exists()
