"""Repo ids wherever a payload or checksums are named, choosing the payload folder among several,
and the command line's machine-readable and CI-friendly behaviour.

Hub tests talk to `tests/hubserver.py` on 127.0.0.1 with the real huggingface_hub client.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import xorweights
from tests.conftest import encoded_release, random_bytes, tree, write_files
from tests.hubserver import TOKEN, HubServer
from xorweights import hub as hub_module
from xorweights import publish
from xorweights.errors import HubError, InputError, MissingFileError, UnknownReleaseError, UnsafePathError
from xorweights.formats.payload_folder import PayloadHints, find_payload_in_listing

pytestmark = pytest.mark.hub  # .ci/run runs these on an old huggingface_hub too

SIZES = {"pytorch_model-00001-of-00002.bin": 200_000, "pytorch_model-00002-of-00002.bin": 90_000}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A legacy release: payload, base, its checksum manifest and the fine-tuned files."""
    root = tmp_path_factory.mktemp("repo-ids")
    payload, base, manifest, expected = encoded_release(root, SIZES, release="rel-xor", seed=40)
    return {"payload": payload, "base": base, "manifest": manifest, "expected": expected}


def _card(hub: HubServer, release: dict[str, object], tmp_path: Path) -> str:
    """The model card `publish` writes for the release (with its checksum block)."""
    report = publish(
        release["payload"],
        "scratch/card-source",
        checksums=str(release["manifest"]),
        endpoint=hub.url,
        token=TOKEN,
        progress=False,
    )
    return report.card


def _repo(folder: Path, payload: Path, where: str, *, card: str | None = None, decoy: str = "decoy") -> Path:
    """A repo with the payload in `where` and a folder `decoy` holding an unrelated checkpoint."""
    shutil.copytree(payload, folder / where)
    write_files(folder / decoy, {"consolidated.00.pth": random_bytes(40_000, 77)})
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


def _kw(hub: HubServer, tmp_path: Path) -> dict[str, object]:
    return {"endpoint": hub.url, "cache_dir": tmp_path / "hf-cache", "token": TOKEN}


def _env(hub: HubServer, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home")}


def _loud() -> dict[str, str]:
    """The environment with progress on (the test suite silences it by default)."""
    return {k: v for k, v in os.environ.items() if k != "XORWEIGHTS_DISABLE_PROGRESS_BARS"}


def _cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xorweights", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


# --- choosing the payload folder ---------------------------------------------------------------


def test_payload_beside_a_decoy_is_chosen_by_the_cards_checksums(release, hub, tmp_path) -> None:
    card = _card(hub, release, tmp_path)
    hub.state.add_folder("me/weights", _repo(tmp_path / "repo", release["payload"], "files", card=card))
    out = tmp_path / "out"
    report = xorweights.decode("me/weights", base=release["base"], out=out, **_kw(hub, tmp_path))
    assert tree(out) == release["expected"] and all(f.verified for f in report.files)
    assert Path(report.payload_dir).name == "files"
    got = [p for m, p, _ in hub.state.requests if m == "GET" and "/resolve/" in p]
    assert got and not [p for p in got if "decoy" in p]  # the decoy was never downloaded


def test_payload_beside_a_decoy_is_chosen_by_the_repos_name(release, hub, tmp_path) -> None:
    hub.state.add_folder("me/rel-xor", _repo(tmp_path / "repo", release["payload"], "x/rel-xor"))
    out = tmp_path / "out"
    report = xorweights.decode("me/rel-xor", base=release["base"], out=out, **_kw(hub, tmp_path))
    assert tree(out) == release["expected"] and Path(report.payload_dir).name == "rel-xor"


def test_ambiguous_folders_are_listed_with_the_way_to_choose(release, hub, tmp_path) -> None:
    hub.state.add_folder("me/two", _repo(tmp_path / "repo", release["payload"], "a"))
    kw = _kw(hub, tmp_path)
    with pytest.raises(InputError) as e:
        xorweights.decode("me/two", base=release["base"], out=tmp_path / "o", **kw)
    message = str(e.value)
    assert "'a', 'decoy'" in message and "me/two:SUBFOLDER (or `subfolder=SUBFOLDER`)" in message
    assert not (tmp_path / "o").exists()

    xorweights.decode("me/two:a", base=release["base"], out=tmp_path / "o1", **kw)
    xorweights.decode("me/two", base=release["base"], out=tmp_path / "o2", subfolder="a", **kw)
    assert tree(tmp_path / "o1") == tree(tmp_path / "o2") == release["expected"]
    with pytest.raises(InputError, match="has no files in 'nowhere'; folders with model files: 'a', 'decoy'"):
        xorweights.decode("me/two:nowhere", base=release["base"], out=tmp_path / "o3", **kw)
    with pytest.raises(InputError, match="names subfolder 'a', but --subfolder says 'decoy'"):
        xorweights.decode("me/two:a", base=release["base"], out=tmp_path / "o3", subfolder="decoy", **kw)

    env = _env(hub, tmp_path)
    cli = _cli(
        "decode", "me/two", "--subfolder", "a", "--base", release["base"], "--out", tmp_path / "o4", env=env
    )
    assert cli.returncode == 0, cli.stderr
    assert tree(tmp_path / "o4") == release["expected"]


def test_local_folder_with_several_model_folders(release, tmp_path) -> None:
    local = _repo(tmp_path / "download", release["payload"], "a")
    with pytest.raises(InputError, match=r"holds several folders with model files \('a', 'decoy'\)"):
        xorweights.decode(local, base=release["base"], out=tmp_path / "o")
    xorweights.decode(local, base=release["base"], out=tmp_path / "o1", subfolder="a")
    # the checksums name the payload's files: that folder is the payload
    xorweights.decode(local, base=release["base"], out=tmp_path / "o2", checksums=str(release["manifest"]))
    cli = _cli("decode", local, "--subfolder", "a", "--base", release["base"], "--out", tmp_path / "o3", "-q")
    assert cli.returncode == 0, cli.stderr
    assert tree(tmp_path / "o1") == tree(tmp_path / "o2") == tree(tmp_path / "o3") == release["expected"]
    named = _repo(tmp_path / "rel-xor", release["payload"], "rel-xor")  # named like its folder
    xorweights.decode(named, base=release["base"], out=tmp_path / "o4")
    assert tree(tmp_path / "o4") == release["expected"]


# --- checksums and tensors by repo id ----------------------------------------------------------


def test_verify_by_repo_id_reads_the_model_card(release, hub, tmp_path) -> None:
    card = _card(hub, release, tmp_path)
    hub.state.add_folder("me/carded", _repo(tmp_path / "repo", release["payload"], "files", card=card))
    decoded = write_files(tmp_path / "decoded", release["expected"])
    env = _env(hub, tmp_path)
    ok = _cli("verify", decoded, "--checksums", "me/carded", env=env)
    assert ok.returncode == 0, ok.stderr
    assert f"OK: {len(SIZES)}/{len(SIZES)} files" in ok.stdout
    pinned = _cli("verify", decoded, "--checksums", "me/carded@main", "--json", env=env)
    assert pinned.returncode == 0 and json.loads(pinned.stdout)["ok"] is True

    name = next(iter(SIZES))
    (decoded / name).write_bytes(b"\0" + (decoded / name).read_bytes()[1:])
    bad = _cli("verify", decoded, "--checksums", "me/carded", "--revision", "main", env=env)
    assert bad.returncode == 1 and f"MISMATCH {name}" in bad.stdout

    hub.state.add_folder("me/no-card", write_files(tmp_path / "nc", {"config.json": b"{}"}))
    none = _cli("verify", decoded, "--checksums", "me/no-card", env=env)
    assert none.returncode == 2 and "has no model card (README.md)" in none.stderr
    hub.state.add_folder("me/plain-card", write_files(tmp_path / "pc", {"README.md": b"# hi\n"}))
    plain = _cli("verify", decoded, "--checksums", "me/plain-card", env=env)
    assert plain.returncode == 2 and "has no xorweights checksum block" in plain.stderr
    offline = {**env, "HF_HUB_OFFLINE": "1"}  # the card is cached by the runs above
    again = _cli("verify", decoded, "--checksums", "me/carded", "-q", env=offline)
    assert again.returncode == 1 and f"MISMATCH {name}" in again.stdout
    for cold_env in (
        {**offline, "HF_HOME": str(tmp_path / "cold")},
        {**env, "HF_HOME": str(tmp_path / "cold"), "HF_ENDPOINT": "http://127.0.0.1:9"},  # nothing there
    ):
        started = time.monotonic()
        cold = _cli("verify", decoded, "--checksums", "me/carded", env=cold_env)
        assert cold.returncode == 2 and time.monotonic() - started < 30  # no retries, no backoff
        lines = cold.stderr.splitlines()
        assert lines[-1].startswith("Error: no local file 'me/carded', and the model card of me/carded@main")
        assert "asking for it again" not in cold.stderr and "Retrying" not in cold.stderr
    dl = tmp_path / "dl"  # the payload's download folder: the checksums' card does not go there
    report = xorweights.decode(
        release["payload"],
        base=release["base"],
        out=tmp_path / "o9",
        checksums="me/carded",
        local_dir=dl,
        **_kw(hub, tmp_path),
    )
    assert all(f.verified for f in report.files) and not dl.exists()
    typo = _cli("verify", decoded, "--checksums", "sums/typo.md5", env=env)
    assert typo.returncode == 2
    assert "no local file 'sums/typo.md5', and no Hub repo sums/typo.md5" in typo.stderr


def test_load_checksums_prefers_the_bundled_manifest(hub, tmp_path) -> None:
    """A bundled release's repo id never asks the Hub; any other repo id reads the card."""
    n = len(hub.state.requests)
    m = xorweights.load_checksums(
        "OpenAssistant/oasst-sft-6-llama-30b-xor", access=hub_module.HubAccess(endpoint=hub.url)
    )
    assert m.release == "oasst-sft-6-llama-30b" and len(hub.state.requests) == n
    with pytest.raises(HubError, match="no local file 'someone/oasst-sft-6-llama-30b-xor'"):
        xorweights.load_checksums(
            "someone/oasst-sft-6-llama-30b-xor", access=hub_module.HubAccess(endpoint=hub.url, token=TOKEN)
        )  # another owner's repo of the same name is not the bundled release
    with pytest.raises(UnknownReleaseError, match="no checksum file or known release named 'oasst-sft-99'"):
        xorweights.load_checksums("oasst-sft-99")


def test_iter_tensors_and_load_state_dict_take_a_repo_id(hub, tmp_path) -> None:
    rng = np.random.default_rng(5)
    base = {f"w{i}": rng.standard_normal((64, 32)).astype(np.float32) for i in range(3)}
    tuned = {n: t + np.float32(0.01) for n, t in base.items()}
    save_file(base, str(write_files(tmp_path / "base", {}) / "model.safetensors"))
    save_file(tuned, str(write_files(tmp_path / "ft", {}) / "model.safetensors"))
    xorweights.encode(tmp_path / "ft", base=tmp_path / "base", out=tmp_path / "payload")
    repo = _repo(tmp_path / "repo", tmp_path / "payload", "payload")
    hub.state.add_folder("me/tensors", repo)
    kw = {"cache_dir": tmp_path / "hf-cache", "token": TOKEN, "endpoint": hub.url}
    got = dict(xorweights.iter_tensors("me/tensors", tmp_path / "base", **kw))
    one = xorweights.load_state_dict(
        "me/tensors@main", tmp_path / "base", framework="numpy", names=["w1"], **kw
    )
    assert sorted(got) == sorted(tuned) and all(np.array_equal(got[n], tuned[n]) for n in tuned)
    assert list(one) == ["w1"] and np.array_equal(one["w1"], tuned["w1"])
    with pytest.raises(InputError, match="`revision` applies to a Hub repo id, not to the local folder"):
        next(xorweights.iter_tensors(tmp_path / "payload", tmp_path / "base", revision="main"))


# --- command line: --json errors, options after the command, python -m ----------------------------


def _json_error(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    doc = json.loads(proc.stdout)
    assert list(doc) == ["error"] and set(doc["error"]) == {"type", "message", "path", "exit_code"}
    assert doc["error"]["exit_code"] == proc.returncode and proc.stderr == ""  # the object is all
    return doc["error"]


def test_json_errors_are_one_object_on_stdout(release, tmp_path) -> None:
    missing = _cli(
        "decode", release["payload"], "--base", tmp_path / "nobase", "--out", tmp_path / "o", "--json"
    )
    err = _json_error(missing)
    assert (
        err["type"] == "MissingFileError"
        and err["exit_code"] == 2
        and err["path"] == str(tmp_path / "nobase")
    )

    wrong = write_files(tmp_path / "wrong", {n: random_bytes(s - 64, 9) for n, s in SIZES.items()})
    args = ["--out", tmp_path / "o", "--checksums", release["manifest"], "--json"]
    mismatch = _cli("decode", release["payload"], "--base", wrong, *args)
    err = _json_error(mismatch)
    assert err["type"] == "BaseMismatchError" and err["exit_code"] == 1
    assert str(err["path"]).startswith(str(wrong)) and "hf_base" in str(err["message"])
    assert not (tmp_path / "o").exists()  # refused before writing: not even the folder is left

    unknown = _cli("verify", tmp_path, "--checksums", "oasst-sft-99", "--json")
    err = _json_error(unknown)
    assert err == {
        "type": "UnknownReleaseError",
        "message": err["message"],
        "path": "oasst-sft-99",
        "exit_code": 2,
    } and "known releases: " in str(err["message"])

    empty = _cli("verify", tmp_path, "--checksums", "a/b", "--token", "", "--json")
    assert empty.returncode == 2 and "'--token': is empty" in json.loads(empty.stdout)["error"]["message"]
    usage = _cli("decode", release["payload"], "--json")
    doc = json.loads(usage.stdout)["error"]
    assert usage.returncode == doc["exit_code"] == 2 and "--base" in doc["message"]


def test_python_m_and_options_after_the_command(release, tmp_path) -> None:
    version = _cli("--version")
    assert version.returncode == 0 and version.stdout == f"xorweights, version {xorweights.__version__}\n"
    args = ["decode", release["payload"], "--base", release["base"], "--out", tmp_path / "o"]
    # progress on, a plain line at every update: what -q must silence
    every_update = (
        "import sys, xorweights._progress as p; p.PLAIN_INTERVAL = 0.0; "
        "sys.argv = ['xorweights', *sys.argv[1:]]; from xorweights.cli import main; main()"
    )

    def run(*argv: object) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-c", every_update, *map(str, argv)]
        return subprocess.run(cmd, capture_output=True, text=True, env=_loud(), timeout=300)

    loud = run(*args[:-1], tmp_path / "o0")
    assert loud.returncode == 0 and "decode: " in loud.stderr and "DEBUG" not in loud.stderr
    after = run(*args, "-vv", "-q")
    before = run("-vv", "-q", *args[:-1], tmp_path / "o2")
    for proc in (after, before):
        assert proc.returncode == 0, proc.stderr
        assert "DEBUG xorweights." in proc.stderr and "decode: " not in proc.stderr  # -vv logs, -q silent
    assert tree(tmp_path / "o") == tree(tmp_path / "o2") == release["expected"]
    rerun = _cli(*args)
    assert rerun.returncode == 0
    assert f"nothing to decode: {tmp_path / 'o'} already holds every output" in rerun.stdout


def test_hub_text_is_never_cut_mid_word() -> None:
    long = RuntimeError("word " * 100 + "tail")
    text = hub_module.short_error(long)
    assert text.endswith(" ...") and text.removesuffix(" ...").split(" ")[-1] == "word"
    assert len(text) <= 305 and hub_module.short_error(RuntimeError("a\n  b")) == "a b"


def test_gzip_encode_reports_the_rate_of_model_bytes(model_pair, tmp_path) -> None:
    base, tuned = model_pair()
    args = ["encode", tuned, "--base", base, "--format", "oasst", "--compress", "gzip"]
    text = _cli(*args, "--out", tmp_path / "p1")
    doc = json.loads(_cli(*args, "--out", tmp_path / "p2", "--json").stdout)
    assert text.returncode == 0, text.stderr
    model = sum(p.stat().st_size for p in tuned.iterdir())
    assert doc["bytes_processed"] == model and doc["bytes_written"] < model
    line = text.stdout.splitlines()[0]
    summary = (
        r"encoded \d+ files, ([\d.]+) (KiB|MiB) \(stored as [\d.]+ (B|KiB|MiB)\) in [\d.]+ s "
        r"\(([\d.]+) (B|KiB|MiB|GiB)/s\) into .*"
    )
    match = re.fullmatch(summary, line)
    assert match is not None, line
    assert float(match.group(4)) > 0  # was "(0 MB/s)": the rate of the compressed bytes, rounded


def test_no_carriage_returns_off_a_terminal_through_publish_and_download(release, hub, tmp_path) -> None:
    """stderr into a file: huggingface_hub's own upload and download bars stay off too."""
    env = _env(hub, tmp_path)
    env.pop("XORWEIGHTS_DISABLE_PROGRESS_BARS", None)  # progress on, as a CI job has it
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        pub = subprocess.run(
            [
                sys.executable,
                "-m",
                "xorweights",
                "publish",
                release["payload"],
                "me/quiet-ci",
                "--checksums",
                release["manifest"],
            ],
            stderr=err,
            stdout=subprocess.PIPE,
            env=env,
            timeout=300,
        )
        dec = subprocess.run(
            [
                sys.executable,
                "-m",
                "xorweights",
                "decode",
                "me/quiet-ci",
                "--base",
                release["base"],
                "--out",
                tmp_path / "o",
            ],
            stderr=err,
            stdout=subprocess.PIPE,
            env=env,
            timeout=300,
        )
    assert pub.returncode == dec.returncode == 0, log.read_text()
    assert tree(tmp_path / "o") == release["expected"]
    assert b"\r" not in log.read_bytes() and "%|" not in log.read_text()


def test_the_top_folder_is_the_repo_itself() -> None:
    """Model files at the top beside another model folder (Meta's `original/`): the top folder is
    named like the repo; `OWNER/NAME:` chooses it too."""
    listing = ["config.json", "model.safetensors", "original/consolidated.00.pth"]
    assert find_payload_in_listing(listing, "o/n", PayloadHints(repo_name="n")) == ""
    assert find_payload_in_listing(listing, "o/n", PayloadHints(subfolder="original")) == "original"
    assert hub_module.parse_payload_spec("o/n:").subfolder == ""
    assert hub_module.parse_payload_spec("o/n").subfolder is None
    assert find_payload_in_listing(listing, "o/n", PayloadHints(subfolder="")) == ""
    with pytest.raises(InputError, match=r"several folders with model files \(the top folder, 'n'\)"):
        find_payload_in_listing([*listing[:2], "n/w.bin"], "o/n", PayloadHints(repo_name="n"))
    with pytest.raises(UnsafePathError):
        hub_module.parse_payload_spec("o/n:../x")


# --- what a hostile or half-made repo must not get past ------------------------------------------


def _native_decoy(folder: Path) -> Path:
    """A native payload needing no base: its one tensor stored raw (as `--allow-raw '*'` allows)."""
    tuned = write_files(folder / "ft", {})
    save_file({"evil": np.ones(8, np.float32)}, str(tuned / "model.safetensors"))
    other = write_files(folder / "otherbase", {})
    save_file({"unrelated": np.zeros(8, np.float32)}, str(other / "model.safetensors"))
    xorweights.encode(tuned, base=other, out=folder / "decoy", allow_raw=["*"])
    return folder / "decoy"


def test_the_checksums_outrank_a_decoy_native_payload(release, tmp_path) -> None:
    repo = _repo(tmp_path / "repo", release["payload"], "rel-xor")
    shutil.copytree(_native_decoy(tmp_path / "d"), repo / "extras")
    out = tmp_path / "o"
    report = xorweights.decode(repo, base=release["base"], out=out, checksums=str(release["manifest"]))
    assert Path(report.payload_dir).name == "rel-xor" and tree(out) == release["expected"]
    with pytest.raises(InputError, match="is listed in the checksums of rel-xor; wrong release"):
        xorweights.decode(
            repo / "extras", base=release["base"], out=tmp_path / "o2", checksums=str(release["manifest"])
        )
    assert not (tmp_path / "o2").exists()


def test_a_payload_lacking_a_listed_output_is_refused(release, tmp_path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(release["payload"], partial)
    gone = sorted(SIZES)[-1]
    (partial / gone).unlink()
    with pytest.raises(
        MissingFileError, match=f"list 1 outputs that {partial} has no payload file for \\({gone}\\)"
    ):
        xorweights.decode(
            partial, base=release["base"], out=tmp_path / "o", checksums=str(release["manifest"])
        )
    assert not (tmp_path / "o").exists()


def test_a_download_folder_overlapping_base_or_out_is_refused(release, hub, tmp_path) -> None:
    hub.state.add_folder("me/plain", _repo(tmp_path / "repo", release["payload"], "rel-xor"))
    base = tmp_path / "base"
    shutil.copytree(release["base"], base)
    before = tree(base)
    kw = _kw(hub, tmp_path)
    for local_dir, out in (
        (base, tmp_path / "o"),
        (tmp_path / "o" / "dl", tmp_path / "o"),
        (tmp_path, tmp_path / "o"),
    ):
        n = len(hub.state.requests)
        with pytest.raises(InputError, match="overlaps the (base|out) folder"):
            xorweights.decode("me/plain", base=base, out=out, local_dir=local_dir, **kw)
        assert len(hub.state.requests) == n and tree(base) == before  # refused before any request


def test_cards_are_read_only_when_needed_and_never_when_too_large(release, hub, tmp_path) -> None:
    huge = "# card\n\n" + "x" * (17 * 1024 * 1024)
    hub.state.add_folder("me/huge", _repo(tmp_path / "repo", release["payload"], "huge", card=huge))
    kw = _kw(hub, tmp_path)
    report = xorweights.decode("me/huge", base=release["base"], out=tmp_path / "o", **kw)  # no checksums
    assert tree(tmp_path / "o") == release["expected"] and report.release is None
    xorweights.decode(
        "me/huge", base=release["base"], out=tmp_path / "o2", checksums=str(release["manifest"]), **kw
    )
    with pytest.raises(HubError, match="the model card of me/huge@main is too large to read"):
        xorweights.load_checksums("me/huge", access=hub_module.HubAccess(**kw))
    got = [p for m, p, _ in hub.state.requests if m == "GET" and "/resolve/" in p]
    assert got and not [p for p in got if p.endswith("README.md")]  # never downloaded


def test_offline_files_without_a_download_record_are_not_trusted(release, hub, tmp_path) -> None:
    repo = _repo(tmp_path / "repo", release["payload"], "rel-xor")
    (repo / "LICENSE").write_text("terms\n")  # a document at the top is no payload file
    shutil.rmtree(repo / "decoy")
    for n in SIZES:  # the payload at the top of the repo, beside the LICENSE
        shutil.move(repo / "rel-xor" / n, repo / n)
    shutil.rmtree(repo / "rel-xor")
    hub.state.add_folder("me/top", repo)
    dl, kw = tmp_path / "dl", _kw(hub, tmp_path)
    xorweights.decode("me/top", base=release["base"], out=tmp_path / "o", local_dir=dl, **kw)
    assert tree(tmp_path / "o") == release["expected"] and not (dl / "LICENSE").exists()
    name = next(iter(SIZES))
    (dl / ".cache" / "huggingface" / "download" / f"{name}.metadata").unlink()
    with pytest.raises(HubError, match=f"{name} has no download record of huggingface_hub"):
        xorweights.decode(
            "me/top", base=release["base"], out=tmp_path / "o2", local_dir=dl, offline=True, **kw
        )


def test_a_cache_holding_only_the_card_is_not_a_payload(release, hub, tmp_path) -> None:
    card = _card(hub, release, tmp_path)
    hub.state.add_folder("me/carded", _repo(tmp_path / "repo", release["payload"], "files", card=card))
    kw = _kw(hub, tmp_path)
    xorweights.load_checksums("me/carded", access=hub_module.HubAccess(**kw))  # caches the card only
    with pytest.raises(HubError, match="me/carded@main is not fully in the Hub cache: offline mode"):
        xorweights.decode("me/carded", base=release["base"], out=tmp_path / "o", offline=True, **kw)


def test_a_chosen_subfolder_is_all_that_is_looked_at(release, tmp_path) -> None:
    local = _repo(tmp_path / "download", release["payload"], "payload")
    (local / "base").symlink_to(tmp_path)  # a link out, elsewhere in the folder: not looked at
    xorweights.decode(local, base=release["base"], out=tmp_path / "o", subfolder="payload")
    assert tree(tmp_path / "o") == release["expected"]
