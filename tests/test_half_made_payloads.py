"""Half-made and mistaken payloads never decode to garbage with exit 0: outputs with no published
digest must be what their names say, a model folder is not a payload, and an interrupted native
encode never looks finished."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

import xorweights
from tests.conftest import random_bytes, tree, write_files, zip_checkpoint
from tests.process_states import signal_stopped, step_until
from xorweights.cli import main
from xorweights.errors import ImplausibleOutputError
from xorweights.formats import plausible
from xorweights.outfolder.atomic import BOOKKEEPING_DIR, STAGING_DIR, TEMP_PREFIX, TEMP_SUFFIX
from xorweights.outfolder.folder import STATE_FILE, STATE_JOURNAL, STATE_PATH


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def safetensors_bytes(seed: int, rows: int = 64) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return save({"w": torch.randn(rows, 32, generator=g).half(), "b": torch.randn(32, generator=g)})


# --- the check itself ---------------------------------------------------------------------------


def test_plausibility_of_each_kind(tmp_path: Path) -> None:
    good = {
        "config.json": b'{"a": 1}\n',
        "model.safetensors": safetensors_bytes(1),
        "pytorch_model.bin": zip_checkpoint(1000, 1),
        "tokenizer.model": random_bytes(100, 2),  # not checked
    }
    torch.save({"x": torch.zeros(3)}, tmp_path / "real.bin")
    good["real.bin"] = (tmp_path / "real.bin").read_bytes()
    for name, data in good.items():
        (tmp_path / name).write_bytes(data)
        assert plausible.problem(tmp_path / name, name) is None, name
    bad = {
        "config.json": b'{"a": 1, "a": 2}',
        "x.json": b"\x00\x13garbage",
        "model.safetensors": safetensors_bytes(1)[:-5],  # truncated: data no longer tiles
        "y.safetensors": bytes(16),
        "pytorch_model.bin": zip_checkpoint(1000, 1)[:-30],  # the central directory cut off
        "z.bin": random_bytes(500, 3),
        "empty.bin": b"",
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        assert plausible.problem(tmp_path / name, name) is not None, name


# --- legacy decode without published digests ----------------------------------------------------


def test_model_folder_passed_as_payload_is_refused(model_pair, tmp_path: Path, capsys) -> None:
    base, tuned = model_pair()
    code, err = run_cli(["decode", tuned, "--base", base, "--out", tmp_path / "out", "-q"], capsys)
    assert code == 2  # a wrong payload kind is bad input, not a mismatch
    line = err.splitlines()[0]
    assert "was not XOR-ed" in line and "looks like a model" in line and str(tuned) in line
    assert not (tmp_path / "out").exists() or tree(tmp_path / "out") == {}


def test_truncated_legacy_payload_is_refused(model_pair, tmp_path: Path, capsys) -> None:
    base, tuned = model_pair()
    payload = tmp_path / "payload"
    xorweights.encode(tuned, base=base, out=payload, format="oasst")
    victim = payload / "pytorch_model-00002-of-00002.bin"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    code, err = run_cli(["decode", payload, "--base", base, "--out", tmp_path / "out", "-q"], capsys)
    assert code == 1
    line = err.splitlines()[0]
    assert "decoded pytorch_model-00002-of-00002.bin is not a valid torch checkpoint" in line
    assert "is shorter than its base" in line and "truncated?" in line
    assert "pytorch_model-00002-of-00002.bin" not in tree(tmp_path / "out")


def test_wrong_base_for_json_and_safetensors_is_refused(tmp_path: Path, capsys) -> None:
    base = write_files(
        tmp_path / "base",
        {"config.json": b'{"vocab_size": 32000}\n', "model.safetensors": safetensors_bytes(1)},
    )
    tuned = write_files(
        tmp_path / "tuned",
        {"config.json": b'{"vocab_size": 32016}\n', "model.safetensors": safetensors_bytes(2)},
    )
    payload = tmp_path / "payload"
    xorweights.encode(tuned, base=base, out=payload, format="oasst")
    other = write_files(
        tmp_path / "other",
        {
            "config.json": b'{"architectures": ["LlamaForCausalLM"]}\n',
            "model.safetensors": safetensors_bytes(3, 65),
        },
    )
    for name in ("config.json", "model.safetensors"):
        wrong = write_files(tmp_path / f"wrong-{name}", tree(base))
        (wrong / name).write_bytes((other / name).read_bytes())
        out = tmp_path / f"out-{name}"
        code, err = run_cli(["decode", payload, "--base", wrong, "--out", out, "-q"], capsys)
        assert code == 1, err
        assert f"decoded {name} is not a valid" in err and "not the pair this release was made from" in err
        assert name not in tree(out)
    xorweights.decode(payload, base=base, out=tmp_path / "good")  # the right pair passes the check
    assert tree(tmp_path / "good") == tree(tuned)


def test_checked_outputs_with_published_digests_skip_the_check(model_pair, tmp_path: Path) -> None:
    """A published digest is stronger proof; a file of a checked kind that is not valid passes then."""
    base, tuned = model_pair(**{"odd.json": b"not json, but published"})
    (base / "odd.json").write_bytes(b"0" * 30)
    payload = tmp_path / "payload"
    rep = xorweights.encode(tuned, base=base, out=payload, format="oasst", with_checksums=True)
    with pytest.raises(ImplausibleOutputError, match="decoded odd.json is not a valid JSON file"):
        xorweights.decode(payload, base=base, out=tmp_path / "a")
    report = xorweights.decode(payload, base=base, out=tmp_path / "b", checksums=rep.manifest)
    assert all(f.verified for f in report.files) and tree(tmp_path / "b") == tree(tuned)


# --- native payloads ----------------------------------------------------------------------------


def native_pair(root: Path, mib: int = 1) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    rows = max(1, mib * 1024 * 1024 // (1024 * 2))
    base_sd = {f"layer{i}.weight": torch.randn(rows, 1024, generator=g).half() for i in range(4)}
    ft_sd = {n: (t.float() + 1e-3).half() for n, t in base_sd.items()}
    (root / "base").mkdir(parents=True)
    (root / "ft").mkdir()
    save_file(base_sd, str(root / "base" / "model.safetensors"))
    for i, (n, t) in enumerate(ft_sd.items()):
        save_file({n: t}, str(root / "ft" / f"model-{i}.safetensors"))
    (root / "ft" / "config.json").write_text(json.dumps({"model_type": "test"}))
    return root / "ft", root / "base"


@pytest.mark.parametrize(
    ("compress", "code", "said"),
    [
        (
            "none",
            2,  # not a payload: bad input
            "looks like a model (an additive delta? give --recipe; or a native payload missing its "
            "xorweights.json)",
        ),
        ("zstd", 2, "holds delta frames (a compressed native payload), but"),
    ],
)
def test_native_payload_missing_its_manifest_is_refused(
    tmp_path: Path, capsys, compress: str, code: int, said: str
) -> None:
    ft, base = native_pair(tmp_path)
    payload = tmp_path / "payload"
    xorweights.encode(ft, base=base, out=payload, compress=compress)
    (payload / "xorweights.json").unlink()
    got, err = run_cli(["decode", payload, "--base", base, "--out", tmp_path / "out", "-q"], capsys)
    assert got == code
    assert said in err.splitlines()[0] and len(err.splitlines()) == 1


def test_native_encode_stages_files_and_writes_the_manifest_last(tmp_path: Path) -> None:
    ft, base = native_pair(tmp_path)
    payload = tmp_path / "payload"
    xorweights.encode(ft, base=base, out=payload)
    assert not (payload / ".cache").exists()  # no staging folder, no records left
    names = sorted(p.name for p in payload.iterdir())
    assert names == [
        "config.json",
        "model-0.safetensors",
        "model-1.safetensors",
        "model-2.safetensors",
        "model-3.safetensors",
        "xorweights.json",
    ]
    # An earlier manifest is gone before new files take final names: a re-encode of other weights
    # killed midway cannot leave the old manifest beside the new files.
    (payload / "model-0.safetensors").write_bytes(b"stale")
    xorweights.encode(ft, base=base, out=payload, force=True)
    xorweights.decode(payload, base=base, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(ft)


def _encode_moment(payload: Path, moment: str) -> Callable[[int], bool]:
    """Moments of a native encode: just started; files being made in the staging folder; files
    moving into place (some there, no manifest yet); the manifest written."""
    if moment == "started":
        return lambda pid: True
    staging = payload / BOOKKEEPING_DIR / STAGING_DIR
    if moment == "staging":
        return lambda pid: (
            staging.is_dir()
            and any(
                p.name.startswith(TEMP_PREFIX) and p.name.endswith(TEMP_SUFFIX) for p in staging.iterdir()
            )
        )
    if moment == "moving":
        return lambda pid: (
            payload.is_dir()
            and not (payload / "xorweights.json").exists()
            and any(p.suffix == ".safetensors" for p in payload.iterdir())
        )
    return lambda pid: (payload / "xorweights.json").exists()


@pytest.mark.parametrize("moment", ["started", "staging", "moving", "manifest written"])
def test_killed_native_encode_never_looks_finished(tmp_path: Path, moment: str) -> None:
    ft, base = native_pair(tmp_path, mib=4)
    payload = tmp_path / "payload"
    cmd = [
        sys.executable,
        "-m",
        "xorweights.cli",
        "encode",
        str(ft),
        "--base",
        str(base),
        "--out",
        str(payload),
    ]
    proc = subprocess.Popen([*cmd, "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if step_until(proc, _encode_moment(payload, moment)):
            signal_stopped(proc, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    # The manifest is written last: the run may end before its state is seen; earlier ones may not.
    assert proc.returncode == -signal.SIGKILL or (moment == "manifest written" and proc.returncode == 0)
    out = tmp_path / "out"
    if (payload / "xorweights.json").exists():  # finished before the kill: a complete payload
        xorweights.decode(payload, base=base, out=out)
        assert tree(out) == tree(ft)
        return
    if payload.exists() and any(p.suffix == ".safetensors" for p in payload.iterdir()):
        with pytest.raises(xorweights.XorWeightsError):
            xorweights.decode(payload, base=base, out=out)
        assert not out.exists() or not any(p.suffix == ".safetensors" for p in out.iterdir())
    # A rerun finishes the job.
    done = subprocess.run([*cmd, "-q", "--force"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    xorweights.decode(payload, base=base, out=tmp_path / "out2")
    assert tree(tmp_path / "out2") == tree(ft)


def test_zip_without_records_is_implausible(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w"):
        pass
    (tmp_path / "e.bin").write_bytes(buf.getvalue())
    assert plausible.problem(tmp_path / "e.bin", "e.bin") is not None


def test_model_folder_with_linked_files_is_refused_too(tmp_path: Path, capsys) -> None:
    """A Hub cache keeps files as links into `blobs/`: the check follows links that stay inside."""
    payload = tmp_path / "payload"
    (payload / "blobs").mkdir(parents=True)
    (payload / "blobs" / "0a1b").write_bytes(safetensors_bytes(1))
    (payload / "model.safetensors").symlink_to(payload / "blobs" / "0a1b")
    base = write_files(tmp_path / "base", {"model.safetensors": safetensors_bytes(2)})
    code, err = run_cli(["decode", payload, "--base", base, "--out", tmp_path / "out", "-q"], capsys)
    assert code == 2 and "looks like a model" in err.splitlines()[0]


def test_published_size_is_checked_even_when_the_digest_matches(model_pair, tmp_path: Path, capsys) -> None:
    base, tuned = model_pair()
    payload = tmp_path / "payload"
    rep = xorweights.encode(tuned, base=base, out=payload, format="oasst", with_checksums=True)
    doc = rep.manifest.to_json()
    doc["stages"]["decoded"]["config.json"]["size"] = 1
    (tmp_path / "m.json").write_text(json.dumps(doc))
    code, err = run_cli(
        [
            "decode",
            payload,
            "--base",
            base,
            "--out",
            tmp_path / "out",
            "--checksums",
            tmp_path / "m.json",
            "-q",
        ],
        capsys,
    )
    assert code == 1 and "decoded config.json: 22 bytes, but" in err and "expects 1" in err
    assert "config.json" not in tree(tmp_path / "out")


def test_a_failed_native_encode_leaves_no_staged_file_and_the_rerun_finishes(tmp_path: Path) -> None:
    ft, base = native_pair(tmp_path)
    out = tmp_path / "payload"
    (out / "model-2.safetensors").mkdir(parents=True)  # a folder where a payload file must go
    with pytest.raises(xorweights.XorWeightsError):
        xorweights.encode(ft, base=base, out=out, force=True)
    assert not (out / "xorweights.json").exists()
    # No staged payload file stays; the records of the files already moved into place do.
    assert {p.name for p in (out / BOOKKEEPING_DIR).iterdir()} <= {STATE_FILE, STATE_JOURNAL}
    assert any((out / BOOKKEEPING_DIR).iterdir())
    (out / "model-2.safetensors").rmdir()
    again = xorweights.encode(ft, base=base, out=out)  # no force: the moved files are known
    assert any(f.kept for f in again.files) and (out / "xorweights.json").is_file()
    assert not (out / ".cache").exists()
    fresh = tmp_path / "fresh"
    xorweights.encode(ft, base=base, out=fresh)
    assert tree(out) == tree(fresh)


def test_outputs_without_digest_from_a_wrong_pair_are_removed(model_pair, tmp_path: Path, capsys) -> None:
    base, tuned = model_pair()
    payload = tmp_path / "payload"
    xorweights.encode(tuned, base=base, out=payload, format="oasst")
    (base / "config.json").write_bytes(b'["a", "list", "not", "a", "config"]\n')  # the wrong base
    out = tmp_path / "out"
    code, err = run_cli(["decode", payload, "--base", base, "--out", out, "-q", "-j", "1"], capsys)
    assert code == 1 and "decoded config.json is not a valid JSON file" in err
    assert tree(out) == {}  # the outputs made before the check failed are gone, with their records
    assert json.loads((out / STATE_PATH).read_text())["files"] == {}
