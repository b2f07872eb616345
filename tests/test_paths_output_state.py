"""Where inputs may lead (links, special files, reserved names), how their names are printed, and
why the output folder's state file is evidence, not authority."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import xorweights
from tests.conftest import random_bytes, tree, write_files
from xorweights import hub
from xorweights._display import needs_escape, shown
from xorweights.cli import _ShownFormatter, main
from xorweights.errors import UnsafePathError
from xorweights.formats import oasst as legacy
from xorweights.formats import payload_folder
from xorweights.formats.native_manifest import MANIFEST_NAME
from xorweights.hub import payload as hub_payload
from xorweights.outfolder.atomic import TEMP_PREFIX, TEMP_SUFFIX
from xorweights.outfolder.folder import STATE_FILE, STATE_FORMAT, STATE_PATH, OutputFolder
from xorweights.outfolder.paths import check_name, check_regular_file
from xorweights.pipeline import resume

EXE = Path(sys.executable).with_name("xorweights")
#: Bytes a terminal acts on: C0 controls but newline, DEL, and the UTF-8 forms of C1 controls.
RAW_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")
UNDECODABLE = [b"caf\xe9.dat", b"\xff\xfe.dat"]


def fsname(raw: bytes) -> str:
    return os.fsdecode(raw)


def run_cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """The installed command in a child process, bytes out; a hang fails the test at `timeout`."""
    env = {**os.environ, "XORWEIGHTS_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run([EXE, *map(str, args)], capture_output=True, timeout=timeout, env=env)


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """`fn()` in a thread; fails if it has not returned after `seconds` (a read blocked on a FIFO)."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (re-raised in the test's thread)
            result["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small native release: base and fine-tune in safetensors, and its payload."""
    root = tmp_path_factory.mktemp("native")
    rng = np.random.default_rng(0)
    base_sd = {"w": rng.standard_normal((8, 16)).astype(np.float32), "b": np.ones(16, np.float32)}
    ft_sd = {n: t + np.float32(0.01) for n, t in base_sd.items()}
    config = json.dumps({"model_type": "llama"}).encode()
    index = json.dumps({"metadata": {}, "weight_map": {n: "model.safetensors" for n in ft_sd}}).encode()
    base = write_files(root / "base", {"config.json": config})
    save_file(base_sd, str(base / "model.safetensors"))
    ft = write_files(root / "ft", {"config.json": config, "model.safetensors.index.json": index})
    save_file(ft_sd, str(ft / "model.safetensors"))
    xorweights.encode(ft, base=base, out=root / "payload")
    return {"base": base, "ft": ft, "payload": root / "payload"}


@pytest.fixture
def legacy_release(tmp_path: Path, model_pair) -> dict[str, Path]:
    """A legacy (file-level) payload with its checksum manifest."""
    base, tuned = model_pair()
    rep = xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload", with_checksums=True)
    assert rep.manifest is not None
    (tmp_path / "m.json").write_text(json.dumps(rep.manifest.to_json()))
    return {"base": base, "ft": tuned, "payload": tmp_path / "payload", "manifest": tmp_path / "m.json"}


def copy_payload(native: dict[str, Path], to: Path) -> Path:
    shutil.copytree(native["payload"], to)
    return to


def link_out(path: Path, outside: Path) -> None:
    """Replace `path` by a symlink to a copy of it in `outside`."""
    outside.mkdir(parents=True, exist_ok=True)
    target = outside / path.name
    shutil.copyfile(path, target)
    path.unlink()
    path.symlink_to(target)


# --- 3. paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        ".xorweights-foo",
        ".XORWEIGHTS-state.json",
        "sub/.xorweights-x.part",
        ".cache/huggingface/xorweights/x",
        ".Cache/HuggingFace/download/model.bin.metadata",
    ],
)
def test_names_reserved_for_our_own_files_are_refused(name: str) -> None:
    with pytest.raises(UnsafePathError, match="reserved"):
        check_name(name, "listing")


@pytest.mark.parametrize("which", [MANIFEST_NAME, "model.safetensors.index.json", "model.safetensors"])
def test_native_payload_files_linked_out_of_the_payload_are_refused(native, tmp_path: Path, which) -> None:
    payload = copy_payload(native, tmp_path / "payload")
    link_out(payload / which, tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="outside") as info:
        xorweights.decode(payload, base=native["base"], out=tmp_path / "out")
    assert info.value.path == str(payload / which)
    assert not (tmp_path / "out").exists()


def test_legacy_index_linked_out_of_the_payload_is_refused(legacy_release, tmp_path: Path) -> None:
    index = legacy_release["payload"] / "pytorch_model.bin.index.json"
    link_out(index, tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="outside") as info:
        xorweights.decode(legacy_release["payload"], base=legacy_release["base"], out=tmp_path / "out")
    assert info.value.path == str(index)


def test_payload_subfolder_linked_out_of_the_root_is_refused(native, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "ft-xor").symlink_to(native["payload"], target_is_directory=True)
    with pytest.raises(UnsafePathError, match="outside") as info:
        payload_folder.find_payload_dir(repo)
    assert info.value.path == str(repo / "ft-xor")
    with pytest.raises(UnsafePathError):
        xorweights.decode(repo, base=native["base"], out=tmp_path / "out")


def test_links_that_stay_inside_are_followed(native, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    real = copy_payload(native, repo / ".real")  # hidden: found only through the link
    (repo / "ft-xor").symlink_to(".real", target_is_directory=True)
    (real / "config.json").rename(real / "config.orig")
    (real / "config.json").symlink_to("config.orig")
    assert payload_folder.find_payload_dir(repo) == repo / "ft-xor"
    report = xorweights.decode(repo, base=native["base"], out=tmp_path / "out")
    assert all(f.verified for f in report.files) and tree(tmp_path / "out") == tree(native["ft"])


def test_model_card_linked_out_of_the_download_is_refused(tmp_path: Path) -> None:
    root = write_files(tmp_path / "download", {"w.bin": b"x"})
    secret = write_files(tmp_path / "elsewhere", {"README.md": b"---\n---\n"}) / "README.md"
    (root / "README.md").symlink_to(secret)
    payload = hub.HubPayload("me/x", "main", None, root, root, {"w.bin": hub.HubFile(1)}, root / "README.md")
    with pytest.raises(UnsafePathError, match="outside") as info:
        hub.release_checksums(payload)
    assert info.value.path == str(root / "README.md")
    with pytest.raises(UnsafePathError, match="outside"):
        files = {"w.bin": hub.HubFile(1), "README.md": hub.HubFile(8)}
        hub_payload.checked_files("me/x", "main", None, root, "", files)


def test_cli_names_the_linked_manifest_in_one_line(native, tmp_path: Path, capsys) -> None:
    payload = copy_payload(native, tmp_path / "payload")
    link_out(payload / MANIFEST_NAME, tmp_path / "elsewhere")
    code = main(["decode", str(payload), "--base", str(native["base"]), "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err[0].startswith(f"Error: {payload / MANIFEST_NAME} ") and "outside" in err[0]
    assert len(err) == 1  # one line


@pytest.mark.parametrize("which", [MANIFEST_NAME, "model.safetensors", "extra.bin"])
def test_fifo_in_a_payload_is_refused_without_hanging(native, tmp_path: Path, which: str) -> None:
    payload = copy_payload(native, tmp_path / "payload")
    (payload / which).unlink(missing_ok=True)
    os.mkfifo(payload / which)
    proc = run_cli("decode", payload, "--base", native["base"], "--out", tmp_path / "o", "-q")
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.startswith(f"Error: {payload / which} is a FIFO, not a regular file"), err
    with pytest.raises(UnsafePathError, match="FIFO"):
        within(30, lambda: xorweights.decode(payload, base=native["base"], out=tmp_path / "o"))


def test_fifo_in_a_legacy_payload_is_refused_without_hanging(legacy_release, tmp_path: Path) -> None:
    payload = legacy_release["payload"]
    (payload / "config.json").unlink()
    os.mkfifo(payload / "config.json")
    proc = run_cli("decode", payload, "--base", legacy_release["base"], "--out", tmp_path / "o", "-q")
    assert proc.returncode == 2 and b"is a FIFO" in proc.stderr and bytes(payload) in proc.stderr


def test_special_files_reached_by_links_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "payload"
    folder.mkdir()
    for name, target in [("zero.bin", "/dev/zero"), ("env.json", "/proc/self/environ")]:
        (folder / name).symlink_to(target)
        with pytest.raises(UnsafePathError, match="outside") as info:
            check_regular_file(folder / name, folder)
        assert info.value.path == str(folder / name)
    os.mkfifo(folder / "pipe")
    with pytest.raises(UnsafePathError, match="a FIFO"):
        within(10, lambda: check_regular_file(folder / "pipe", folder))
    (folder / "inner").symlink_to("pipe")  # inside, but still not a regular file
    with pytest.raises(UnsafePathError, match="a FIFO"):
        check_regular_file(folder / "inner", folder)
    assert check_regular_file(folder / "absent", folder) is False


@pytest.mark.parametrize("field", ["name", "omitted"])
def test_reserved_names_in_a_native_manifest_are_refused(native, tmp_path: Path, field: str) -> None:
    payload = copy_payload(native, tmp_path / "payload")
    doc = json.loads((payload / MANIFEST_NAME).read_text())
    if field == "name":
        doc["files"][0]["name"] = ".xorweights-foo"
    else:
        doc["omitted"] = [STATE_FILE]
    (payload / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(UnsafePathError, match="reserved"):
        xorweights.decode(payload, base=native["base"], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_reserved_names_in_a_legacy_listing_are_refused(legacy_release, tmp_path: Path) -> None:
    payload = legacy_release["payload"]
    with pytest.raises(UnsafePathError, match="reserved"):
        payload_folder.find_payload_in_listing(["ft/.xorweights-foo", "ft/pytorch_model.bin"], "org/repo")
    with pytest.raises(UnsafePathError, match="reserved"):
        payload_folder.find_payload_in_listing([".XORWEIGHTS-x", "config.json"], "org/repo")
    # What a run of ours leaves behind is skipped; any other name of ours is refused.
    write_files(payload, {STATE_FILE: b"{}", f"{TEMP_PREFIX}w.bin.1234{TEMP_SUFFIX}": b"half"})
    assert STATE_FILE not in legacy.payload_names(payload) and len(legacy.payload_names(payload)) == 6
    write_files(payload, {".xorweights-foo": b"x"})
    with pytest.raises(UnsafePathError, match="reserved"):
        xorweights.decode(payload, base=legacy_release["base"], out=tmp_path / "out")


# --- 4. output hygiene -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.bin", "model.bin"),
        ("back\\slash", "back\\slash"),
        ("a\x1b[31mred", "a\\x1b[31mred"),
        ("new\nline\r", "new\\nline\\r"),
        ("tab\there\\", "tab\\there\\\\"),
        ("x\x7fy\x85z", "x\\x7fy\\u0085z"),
        ("bidi\u202etxt.exe", "bidi\\u202etxt.exe"),
        (fsname(b"caf\xe9.dat"), "caf\\xe9.dat"),
        ("café.dat", "café.dat"),
    ],
)
def test_shown_escapes_controls_and_undecodable_bytes(name: str, expected: str) -> None:
    assert shown(name) == expected
    assert not needs_escape(shown(name))


def test_log_messages_are_escaped() -> None:
    fmt = _ShownFormatter("%(levelname)s %(name)s: %(message)s")
    rec = logging.LogRecord(
        "xorweights.formats.oasst", logging.WARNING, __file__, 1, "ignoring %s", ("a\x1b[2J",), None
    )
    assert fmt.format(rec) == "WARNING xorweights.formats.oasst: ignoring a\\x1b[2J"
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (fsname(b"\xff\n"),), None)
    assert fmt.format(rec) == "INFO x: \\xff\\n"


def _undecodable_pair(tmp_path: Path) -> tuple[Path, Path]:
    names = [*UNDECODABLE, b"plain.dat"]
    payload = tmp_path / "payload"
    base = tmp_path / "base"
    payload.mkdir()
    base.mkdir()
    for i, raw in enumerate(names):
        (payload / fsname(raw)).write_bytes(random_bytes(100 + i, i))
        (base / fsname(raw)).write_bytes(random_bytes(90 + i, 10 + i))
    return payload, base


def _clean(text: str) -> None:
    data = text.encode("utf-8")  # fails on a surrogate escape printed raw
    assert not RAW_CONTROL.search(data), data


def test_cli_decode_of_undecodable_names(tmp_path: Path, capsys) -> None:
    payload, base = _undecodable_pair(tmp_path)
    out = tmp_path / "out"
    assert main(["decode", str(payload), "--base", str(base), "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    _clean(printed + err)
    assert "caf\\xe9.dat" in printed and "\\xff\\xfe.dat" in printed
    assert {os.fsencode(n) for n in os.listdir(out)} == {*UNDECODABLE, b"plain.dat", b".cache"}
    # A second run keeps all three: the state file records the names it cannot store as text.
    assert main(["decode", str(payload), "--base", str(base), "--out", str(out), "-q", "--json"]) == 0
    printed, err = capsys.readouterr()
    _clean(printed + err)
    doc = json.loads(printed)
    assert {f["name"] for f in doc["files"] if f["kept"]} == {"caf\\xe9.dat", "\\xff\\xfe.dat", "plain.dat"}
    state = json.loads((out / STATE_PATH).read_text())
    assert set(state["files"]) == {"plain.dat"} and len(state["files_hex"]) == 2


def test_cli_decode_of_control_character_names_fails_cleanly(tmp_path: Path) -> None:
    payload, base = _undecodable_pair(tmp_path)
    os.mkdir(payload / "sub\x1b]0;title\x07")  # ignored (payloads are flat), and logged
    proc = run_cli("-v", "decode", payload, "--base", base, "--out", tmp_path / "o1", "-q")
    assert proc.returncode == 0 and b"ignoring subfolder sub\\x1b]0;title\\x07" in proc.stderr
    assert not RAW_CONTROL.search(proc.stdout + proc.stderr)
    for name in ["a\x1b[31mred.dat", "new\nline.dat"]:
        (payload / name).write_bytes(b"x")
        (base / name).write_bytes(b"y")
        proc = run_cli("-v", "decode", payload, "--base", base, "--out", tmp_path / "o2", "-q", "--json")
        error = json.loads(proc.stdout)["error"]  # with --json, the error is the one JSON object
        assert proc.returncode == error["exit_code"] == 2 and "control characters" in error["message"]
        assert not RAW_CONTROL.search(proc.stdout)
        # With --json, stderr holds no error line (only log lines -v asked for, if any).
        lines = proc.stderr.decode().splitlines()
        assert all(line.startswith(("INFO ", "DEBUG ")) for line in lines), lines
        assert not RAW_CONTROL.search(proc.stderr)
        (payload / name).unlink()
        (base / name).unlink()


def test_verify_prints_names_escaped(tmp_path: Path, capsys) -> None:
    folder = write_files(tmp_path / "f", {"ok.bin": b"1", "x\x1b[2Jy": b"2"})
    (folder / fsname(b"caf\xe9")).write_bytes(b"3")
    sums = tmp_path / "sums.md5"
    sums.write_text("c4ca4238a0b923820dcc509a6f75849b  ok.bin\n")
    assert main(["verify", str(folder), "--checksums", str(sums)]) == 0
    printed, err = capsys.readouterr()
    _clean(printed + err)
    assert "extra    x\\x1b[2Jy (not listed)" in printed and "extra    caf\\xe9 (not listed)" in printed
    assert main(["verify", str(folder), "--checksums", str(sums), "-q", "--json"]) == 0
    printed, _ = capsys.readouterr()
    _clean(printed)
    assert set(json.loads(printed)["extra"]) == {"x\x1b[2Jy", "caf\\xe9"}


@pytest.mark.skipif(shutil.which("md5sum") is None, reason="needs coreutils md5sum")
def test_checksum_output_is_accepted_by_md5sum(tmp_path: Path, capsys) -> None:
    folder = write_files(
        tmp_path / "f", {"plain": b"1", "a\x1b[31mb": b"2", "c\\d": b"3", "n\nl": b"4", "c\rr": b"5"}
    )
    for i, raw in enumerate(UNDECODABLE):
        (folder / fsname(raw)).write_bytes(bytes([i]))
    out = tmp_path / "sums.md5"
    assert main(["checksum", str(folder), "--output", str(out), "-q"]) == 0
    _clean("".join(capsys.readouterr()))
    check = subprocess.run(["md5sum", "-c", str(out)], cwd=folder, capture_output=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert check.stdout.count(b": OK\n") == 7
    assert b"caf\\xe9" not in out.read_bytes() and b"  caf\xe9.dat\n" in out.read_bytes()
    piped = run_cli("checksum", folder, "-q")  # into a pipe, the bytes md5sum itself would write
    assert piped.returncode == 0 and piped.stdout == out.read_bytes()
    ref = subprocess.run("md5sum -- *", shell=True, cwd=folder, capture_output=True, timeout=60)
    assert sorted(ref.stdout.splitlines()) == sorted(out.read_bytes().splitlines())


# --- 7. the state file -------------------------------------------------------------------------


def corrupt_keeping_stamps(path: Path) -> None:
    """Flip a byte, then set size and modification time back (as `os.utime` can)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def remade(report: xorweights.DecodeReport) -> set[str]:
    return {f.name for f in report.files if not f.kept}


def test_corrupted_output_with_restored_stamps_is_redone(legacy_release, tmp_path: Path) -> None:
    """No published checksums: nothing recorded to compare with, so the changed file is made again."""
    payload, base, out = legacy_release["payload"], legacy_release["base"], tmp_path / "out"
    xorweights.decode(payload, base=base, out=out)
    corrupt_keeping_stamps(out / "tokenizer.model")
    assert remade(xorweights.decode(payload, base=base, out=out)) == {"tokenizer.model"}
    assert tree(out) == tree(legacy_release["ft"])
    assert remade(xorweights.decode(payload, base=base, out=out)) == set()


def test_corrupted_output_is_rehashed_against_its_record(legacy_release, tmp_path: Path, caplog) -> None:
    payload, base, out = legacy_release["payload"], legacy_release["base"], tmp_path / "out"
    xorweights.decode(payload, base=base, out=out, checksums=legacy_release["manifest"])
    corrupt_keeping_stamps(out / "tokenizer.model")
    os.chmod(out / "config.json", 0o600)  # a new change time, same bytes: hashed and kept
    with caplog.at_level(logging.WARNING):
        report = xorweights.decode(payload, base=base, out=out)  # no published checksums this time
    assert remade(report) == {"tokenizer.model"}
    assert "tokenizer.model: no longer matches its recorded digests" in caplog.text
    assert tree(out) == tree(legacy_release["ft"])


def test_recorded_size_disagreeing_with_the_published_one_is_not_trusted(
    legacy_release, tmp_path: Path
) -> None:
    payload, base, out = legacy_release["payload"], legacy_release["base"], tmp_path / "out"
    xorweights.decode(payload, base=base, out=out, checksums=legacy_release["manifest"])
    target = out / "tokenizer.model"
    with open(target, "ab") as f:
        f.write(b"!")
    state = json.loads((out / STATE_PATH).read_text())
    st = target.stat()
    state["files"]["tokenizer.model"].update(
        size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns
    )
    (out / STATE_PATH).write_text(json.dumps(state))  # a record that matches the file, not the release
    report = xorweights.decode(payload, base=base, out=out, checksums=legacy_release["manifest"])
    assert remade(report) == {"tokenizer.model"}
    assert tree(out) == tree(legacy_release["ft"])


def test_published_size_is_checked_before_trusting_a_record(tmp_path: Path) -> None:
    write_files(tmp_path, {"w.bin": b"abc"})
    with OutputFolder(tmp_path) as folder:
        folder.record("w.bin", {}, {"payload": (3, 1)})
        assert folder.kept("w.bin", {"payload": (3, 1)}, {}) is not None
        assert folder.kept("w.bin", {"payload": (3, 1)}, {}, size=3) is not None
        assert folder.kept("w.bin", {"payload": (3, 1)}, {}, size=4) is None
        assert folder.kept("w.bin", {"payload": (3, 2)}, {}) is None  # another input


def test_old_records_without_change_time_are_rehashed(legacy_release, tmp_path: Path, monkeypatch) -> None:
    payload, base, out = legacy_release["payload"], legacy_release["base"], tmp_path / "out"
    kw = {"base": base, "out": out, "checksums": legacy_release["manifest"]}
    xorweights.decode(payload, **kw)
    state = json.loads((out / STATE_PATH).read_text())
    for entry in state["files"].values():
        del entry["ctime_ns"]
    (out / STATE_PATH).write_text(json.dumps(state))
    hashed: list[str] = []
    real = resume.hash_path
    monkeypatch.setattr(
        resume, "hash_path", lambda p, *a, **k: hashed.append(Path(p).name) or real(p, *a, **k)
    )
    report = xorweights.decode(payload, **kw)
    assert all(f.kept for f in report.files) and sorted(hashed) == sorted(f.name for f in report.files)
    hashed.clear()
    assert all(f.kept for f in xorweights.decode(payload, **kw).files) and hashed == []  # recorded anew


def _ctime_state(**entry: object) -> bytes:
    good = {"size": 1, "mtime_ns": 1, "ctime_ns": 1, "digests": {}, "inputs": {}}
    return json.dumps(
        {"format": STATE_FORMAT, "files": {"ok.bin": good, "bad.bin": {**good, **entry}}}
    ).encode()


HOSTILE_STATES = {
    "size as text": _ctime_state(size="1"),
    "size as bool": _ctime_state(size=True),
    "size as float": _ctime_state(size=1.0),
    "negative size": _ctime_state(size=-1),
    "huge size": _ctime_state(size=10**30),
    "ctime as list": _ctime_state(ctime_ns=[1]),
    "digests as list": _ctime_state(digests=["md5"]),
    "unknown algorithm": _ctime_state(digests={"crc": "00"}),
    "short md5": _ctime_state(digests={"md5": "abc"}),
    "digest not hex": _ctime_state(digests={"md5": " " + "0" * 31}),
    "inputs not pairs": _ctime_state(inputs={"payload": [1]}),
    "inputs as text": _ctime_state(inputs={"payload": ["1", "2"]}),
}
HOSTILE_FILES = {
    "integer of 50 digits": b'{"format": "%s", "files": {"a": {"size": %s, "mtime_ns": 1}}}'
    % (STATE_FORMAT.encode(), b"9" * 50),
    "deep nesting": b'{"format": "x", "files": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "duplicate keys": b'{"format": "%s", "files": {}, "files": {}}' % STATE_FORMAT.encode(),
    "not UTF-8": b'{"format": "\xff", "files": {}}',
    "lone surrogate": b'{"format": "%s", "files": {"\\udcff": {}}}' % STATE_FORMAT.encode(),
    "NaN": b'{"format": "%s", "files": {"a": {"size": NaN}}}' % STATE_FORMAT.encode(),
    "not an object": b"[1, 2]",
    "files not an object": b'{"format": "%s", "files": []}' % STATE_FORMAT.encode(),
    "files_hex not an object": b'{"format": "%s", "files": {}, "files_hex": 1}' % STATE_FORMAT.encode(),
    "NUL garbage": b"\x00" * 64,
}


@pytest.mark.parametrize("case", sorted(HOSTILE_STATES))
def test_hostile_state_entries_are_ignored(tmp_path: Path, case: str, caplog) -> None:
    write_files(tmp_path, {STATE_PATH: HOSTILE_STATES[case]})
    with caplog.at_level(logging.WARNING), OutputFolder(tmp_path) as folder:
        assert set(folder.done) == {"ok.bin"}
    assert "ignoring entry 'bad.bin'" in caplog.text


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_state_files_are_ignored(tmp_path: Path, case: str, caplog) -> None:
    write_files(tmp_path, {STATE_PATH: HOSTILE_FILES[case]})
    with caplog.at_level(logging.WARNING), OutputFolder(tmp_path) as folder:
        assert folder.done == {}
    assert "ignoring" in caplog.text


@pytest.mark.parametrize("kind", ["fifo", "symlink", "folder"])
def test_state_file_that_is_not_a_regular_file_is_ignored(tmp_path: Path, kind: str) -> None:
    state = tmp_path / STATE_PATH
    state.parent.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(state)
    elif kind == "symlink":
        target = write_files(tmp_path / "elsewhere", {"s": _ctime_state()}) / "s"
        state.symlink_to(target)
    else:
        state.mkdir()

    def load() -> dict[str, object]:
        with OutputFolder(tmp_path) as folder:
            return dict(folder.done)

    assert within(10, load) == {}


def test_state_entries_with_hostile_hex_names_are_ignored(tmp_path: Path) -> None:
    entry = {"size": 1, "mtime_ns": 1, "ctime_ns": 1}
    by_hex = {"zz": entry, b"../x".hex(): entry, b".xorweights-a".hex(): entry, b"caf\xe9".hex(): entry}
    write_files(
        tmp_path,
        {STATE_PATH: json.dumps({"format": STATE_FORMAT, "files": {}, "files_hex": by_hex}).encode()},
    )
    with OutputFolder(tmp_path) as folder:
        assert set(folder.done) == {fsname(b"caf\xe9")}


_scalar = st.none() | st.booleans() | st.integers(-(10**25), 10**25) | st.floats() | st.text(max_size=6)
_value = st.recursive(
    _scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3)
)
_entry = st.fixed_dictionaries(
    {},
    optional={
        "size": _scalar,
        "mtime_ns": _scalar,
        "ctime_ns": _scalar,
        "digests": st.dictionaries(
            st.sampled_from(["md5", "sha256", "x"]), st.text("0123456789abcdef ", max_size=64)
        ),
        "inputs": st.dictionaries(st.text(max_size=4), st.lists(_scalar, max_size=3)) | _value,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_state_file_bytes_fuzz(tmp_path: Path, data: bytes) -> None:
    (tmp_path / STATE_PATH).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / STATE_PATH).write_bytes(data)
    with OutputFolder(tmp_path) as folder:
        assert all(isinstance(d.size, int) for d in folder.done.values())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(st.text(max_size=8), _entry | _value, max_size=4),
    st.dictionaries(st.text(max_size=8), _entry),
)
def test_state_file_entries_fuzz(tmp_path: Path, files: dict[str, Any], by_hex: dict[str, Any]) -> None:
    """Whatever the entries hold, the folder opens, and only well-typed, safe entries count."""
    doc = {"format": STATE_FORMAT, "files": files, "files_hex": by_hex}
    (tmp_path / STATE_PATH).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / STATE_PATH).write_text(json.dumps(doc))
    with OutputFolder(tmp_path) as folder:
        for name, done in folder.done.items():
            check_name(name, "state")
            for v in (done.size, done.mtime_ns, done.ctime_ns):
                assert v is None or (type(v) is int and abs(v) < 2**63)
            assert all(type(a) is int and type(b) is int for a, b in done.inputs.values())
            assert all(k in ("md5", "sha256") for k in done.digests)
