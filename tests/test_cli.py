"""The command-line contract: commands, exit codes, JSON reports, progress and error lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import xorweights
from tests.conftest import tree
from xorweights.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def release(tmp_path: Path, model_pair, capsys) -> tuple[Path, Path, Path, Path]:
    base, tuned = model_pair()
    code = main(
        [
            "encode",
            str(tuned),
            "--format",
            "oasst",
            "--base",
            str(base),
            "--out",
            str(tmp_path / "payload"),
            "--manifest",
            str(tmp_path / "release.json"),
            "--release",
            "t",
        ]
    )
    assert code == 0
    assert "checksums written to" in capsys.readouterr().out
    return base, tuned, tmp_path / "payload", tmp_path / "release.json"


def decode_args(release, out: Path, *extra: object) -> list[object]:
    """`decode PAYLOAD --base BASE --out OUT --checksums MANIFEST` for the release fixture, plus `extra`."""
    base, _, payload, manifest = release
    return ["decode", payload, "--base", base, "--out", out, "--checksums", manifest, *extra]


def test_decode_then_verify(tmp_path: Path, capsys, release) -> None:
    base, tuned, payload, manifest = release
    code, out, err = run(capsys, *decode_args(release, tmp_path / "out"))
    assert code == 0, err
    assert "verified against t: 6 outputs, 5 base files" in out
    assert tree(tmp_path / "out") == tree(tuned)
    code, out, _ = run(capsys, "verify", tmp_path / "out", "--checksums", manifest)
    assert code == 0 and "OK: 6/6 files of t [decoded] match" in out
    code, out, _ = run(capsys, "verify", base, "--checksums", manifest, "--stage", "hf_base")
    assert code == 0 and "OK: 5/5" in out


def test_decode_json_report(tmp_path: Path, capsys, release) -> None:
    base, tuned, payload, manifest = release
    code, out, _ = run(capsys, *decode_args(release, tmp_path / "out", "--json", "--quiet", "--jobs", "2"))
    doc = json.loads(out)
    assert code == 0 and doc["operation"] == "decode" and doc["release"] == "t"
    assert doc["bytes_written"] == sum(len(b) for b in tree(tuned).values())
    assert all(f["verified"] for f in doc["files"])


def test_missing_base_file_exits_2_naming_it(tmp_path: Path, capsys, release) -> None:
    base, _, payload, _ = release
    (base / "tokenizer.model").unlink()
    code, out, err = run(capsys, "decode", payload, "--base", base, "--out", tmp_path / "out", "--quiet")
    assert code == 2
    assert err.startswith("Error: base file missing in ") and "tokenizer.model" in err
    assert len([line for line in err.splitlines() if line.startswith("Error")]) == 1
    assert not (tmp_path / "out").exists()


def test_checksum_mismatch_exits_1_naming_the_file(tmp_path: Path, capsys, release) -> None:
    base, _, payload, manifest = release
    victim = payload / "config.json"
    victim.write_bytes(bytes([victim.read_bytes()[0] ^ 1]) + victim.read_bytes()[1:])
    code, _, err = run(capsys, *decode_args(release, tmp_path / "out", "--quiet", "--jobs", "1"))
    assert code == 1
    assert "Error: decoded config.json: md5" in err
    assert "config.json" not in tree(tmp_path / "out")


def test_verify_mismatch_exits_1(tmp_path: Path, capsys, release) -> None:
    base, tuned, _, manifest = release
    (tuned / "config.json").write_bytes(b"{}")
    code, out, _ = run(capsys, "verify", tuned, "--checksums", manifest, "--quiet")
    assert code == 1 and "MISMATCH config.json" in out and "FAILED" in out
    code, out, _ = run(capsys, "verify", tuned, "--checksums", manifest, "--json", "--quiet")
    assert code == 1 and json.loads(out)["mismatches"][0]["name"] == "config.json"


def test_checksum_command_prints_md5sum_lines(tmp_path: Path, capsys, release) -> None:
    _, tuned, _, _ = release
    code, out, _ = run(capsys, "checksum", tuned, "--quiet")
    assert code == 0
    check = subprocess.run(["md5sum", "-c", "-"], input=out, cwd=tuned, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 6


def test_bad_usage_exits_2(capsys) -> None:
    code, _, err = run(capsys, "decode", "somewhere")
    assert code == 2 and "Missing option '--base'" in err
    code, _, err = run(capsys, "verify", ".", "--checksums", "x", "--stage", "nope")
    assert code == 2


def test_unknown_release_exits_2(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "verify", tmp_path, "--checksums", "no-such-release")
    assert code == 2 and "Error: no checksum file or known release named 'no-such-release'" in err


def test_releases_lists_stages_and_needs(capsys) -> None:
    code, out, _ = run(capsys, "releases")
    assert code == 0
    assert "oasst-sft-6-llama-30b  (OpenAssistant/oasst-sft-6-llama-30b-xor)" in out
    assert "d04ec99bec8a0b432fc03ed60cea9a1a20ebaf3c" in out
    code, out, _ = run(capsys, "releases", "--json")
    docs = {d["release"]: d for d in json.loads(out)}
    assert docs["oasst-sft-6-llama-30b"]["stages"]["hf_base"] == {"files": 14, "algorithms": ["md5"]}
    assert "decoded" not in docs["oasst-sft-7-llama-30b"]["stages"]
    assert set(docs["oasst-sft-7-llama-30b"]["not_included"]) == {"hf_base", "decoded"}


def _entry(out: str, release: str) -> list[str]:
    """The lines `releases` prints for one release, its header first."""
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"{release}  ("))
    end = lines.index("", at)
    return lines[at:end]


def test_releases_say_in_plain_words_what_is_published_and_checked(capsys) -> None:
    code, out, _ = run(capsys, "releases")
    assert code == 0
    checked = "published; {} files, md5, checked by xorweights"
    left_out = "published, but not included in xorweights, so not checked"
    sft6 = _entry(out, "oasst-sft-6-llama-30b")
    for stage, files in (("meta_original", 5), ("hf_base", 14), ("decoded", 14)):
        assert f"    {stage:<14} {checked.format(files)}" in sft6
    sft7 = _entry(out, "oasst-sft-7-llama-30b")
    assert f"    {'meta_original':<14} {checked.format(5)}" in sft7
    for stage in ("hf_base", "decoded"):
        line = next(x for x in sft7 if x.startswith(f"    {stage} "))
        assert left_out in line and "not published" not in line  # the card has it; we do not
    rlhf2 = _entry(out, "oasst-rlhf-2-llama-30b-7k-steps")
    assert f"    {'decoded':<14} {checked.format(15)}" in rlhf2
    pyg = _entry(out, "pygmalion-7b")
    assert f"    {'hf_base':<14} not published by the release" in pyg
    for entry in (sft6, sft7, rlhf2, pyg):  # caveats speak to the user, not to whoever built the lists
        text = "\n".join(entry)
        assert "See report" not in text and "stored cop" not in text and "OMITTED" not in text
        assert "xor_payload_lfs_sha256" not in text and "DISAGREEMENT" not in text
    vicuna = _entry(out, "vicuna-13b-delta-v1.1")
    assert vicuna[2].startswith("  recipe fastchat; base: ")
    assert vicuna[3] == "  published sum of all weights: none (nothing published to check the result against)"
    alpaca = _entry(out, "alpaca-7b-wdiff")
    assert alpaca[3] == "  published sum of all weights: 50637.1836 (checked by xorweights)"


def test_a_stage_left_out_is_not_said_to_be_unpublished(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "verify", tmp_path, "--checksums", "oasst-sft-7-llama-30b")
    assert code == 2
    assert "oasst-sft-7-llama-30b publishes decoded checksums, but xorweights does not include them" in err
    code, _, err = run(capsys, "verify", tmp_path, "--checksums", "pygmalion-7b", "--stage", "hf_base")
    assert code == 2 and "pygmalion-7b publishes no hf_base checksums" in err


def test_no_arguments_prints_help(capsys) -> None:
    code, out, _ = run(capsys)
    assert code == 0 and "decode" in out and "verify" in out


def test_demo_runs_end_to_end(tmp_path: Path, capsys) -> None:
    code, out, err = run(capsys, "demo", "--size-mb", "32", "--workdir", tmp_path / "demo")
    assert code == 0, err
    assert "demo OK" in out
    for step in ("2. encode", "3. re-save", "4. decode", "5. verify", "6. load", "7. encode", "9. verify"):
        assert step in out
    assert "payload/ + base-copy/ -> decoded/" in out and "equal to the fine-tuned tensor" in out
    tuned = tree(tmp_path / "demo" / "finetuned")
    assert out.count(f"{len(tuned)}/{len(tuned)} files match") == 2
    assert tree(tmp_path / "demo" / "decoded") == tuned == tree(tmp_path / "demo" / "oasst-decoded")


def test_progress_goes_to_stderr_unless_quiet(tmp_path: Path, release, monkeypatch) -> None:
    """Into a pipe: no bar and no carriage return, and no line for work under the 30 s interval;
    with the interval at 0, plain lines in binary units; none with --quiet or the switch."""
    base, _, payload, _ = release
    monkeypatch.delenv("XORWEIGHTS_DISABLE_PROGRESS_BARS")
    env = {k: v for k, v in os.environ.items() if k != "XORWEIGHTS_DISABLE_PROGRESS_BARS"}
    every_update = (
        "import sys, xorweights._progress as p; p.PLAIN_INTERVAL = 0.0; "
        "sys.argv = ['xorweights', *sys.argv[1:]]; from xorweights.cli import main; main()"
    )
    cmd = ["decode", str(payload), "--base", str(base)]

    def run_(out: str, *extra: str, head: tuple[str, ...] = ("-m", "xorweights.cli"), **more: str):
        args = [sys.executable, *head, *cmd, "--out", str(tmp_path / out), *extra]
        return subprocess.run(args, capture_output=True, text=True, env={**env, **more})

    short = run_("a")
    loud = run_("b", head=("-c", every_update))
    quiet = run_("c", "--quiet", head=("-c", every_update))
    silenced = run_("d", head=("-c", every_update), XORWEIGHTS_DISABLE_PROGRESS_BARS="1")
    assert short.returncode == loud.returncode == quiet.returncode == silenced.returncode == 0
    line = re.compile(r"^decode: [\d.]+ (B|KiB|MiB) / [\d.]+ (KiB|MiB) \(\d+%\), [\d.]+ (B|KiB|MiB|GiB)/s")
    progress = [s for s in loud.stderr.splitlines() if s.startswith("decode:")]
    assert progress and all(line.match(s) for s in progress), loud.stderr
    for r in (short, loud, quiet, silenced):
        assert "\r" not in r.stderr and "%|" not in r.stderr and "decode:" not in r.stdout
    for r in (short, quiet, silenced):
        assert "decode:" not in r.stderr


def test_console_script_exit_codes(tmp_path: Path, release) -> None:
    """The installed `xorweights` command itself, as a user runs it."""
    base, _, payload, manifest = release
    exe = Path(sys.executable).with_name("xorweights")
    assert exe.exists(), "the package is installed with its console script"
    ok = subprocess.run(
        [exe, "decode", payload, "--base", base, "--out", tmp_path / "o", "--checksums", manifest, "-q"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(
        [exe, "decode", tmp_path / "nope", "--base", base, "--out", tmp_path / "o2"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("Error: payload folder not found")
    assert len(missing.stderr.splitlines()) == 1  # one line
    debug = subprocess.run(
        [exe, "decode", tmp_path / "nope", "--base", base, "--out", tmp_path / "o2"],
        capture_output=True,
        text=True,
        env={**os.environ, "XORWEIGHTS_DEBUG": "1"},
    )
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "MissingFileError" in debug.stderr


def test_library_never_prints(tmp_path: Path, capsys, release) -> None:
    base, _, payload, manifest = release
    report = xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=manifest, progress=False)
    assert isinstance(report, xorweights.DecodeReport)
    assert capsys.readouterr() == ("", "")


def test_encode_manifest_never_lands_on_an_input_or_output(tmp_path: Path, capsys, release) -> None:
    base, tuned, payload, manifest = release
    config = (base / "config.json").read_bytes()
    enc = ["encode", tuned, "--base", base, "--out", tmp_path / "p2", "--format", "oasst", "--quiet"]
    for target, role in (
        (base / "config.json", "base"),
        (tuned / "x.json", "fine-tuned"),
        (tmp_path / "p2" / "m.json", "out"),
    ):
        code, _, err = run(capsys, *enc, "--manifest", target)
        assert code == 2 and f"lies inside the {role} folder" in err and err.count("\n") == 1, err
    assert (base / "config.json").read_bytes() == config and not (tmp_path / "p2").exists()
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run(capsys, *enc, "--manifest", tmp_path / "notes.txt")
    assert code == 2 and "is not a checksum manifest; refusing to overwrite" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    code, out, err = run(capsys, *enc, "--manifest", manifest)  # an earlier run's manifest: replaced
    assert code == 0, err
    assert json.loads(manifest.read_text())["format"] == "xorweights-checksums/1"
