"""The base by Hub repo id (`--base OWNER/NAME[@REVISION]`), damaged cached files healed on the same
run, and arguments that look local never sent to the Hub: the real huggingface_hub client over
real HTTP to `tests/hubserver.py` on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

import xorweights
from tests.conftest import tree
from tests.hubserver import TOKEN, HubServer
from tests.test_hub import _cli, hub_kw
from xorweights.errors import BaseMismatchError, HubError, InputError, MissingFileError

pytestmark = pytest.mark.hub


def fetched(hub: HubServer, repo_id: str) -> list[str]:
    """The paths of `repo_id` fetched with GET since the server started, in order."""
    prefix = f"/{repo_id}/resolve/"
    return [
        p[len(prefix) :].split("/", 1)[1]
        for m, p, _ in hub.state.requests
        if m == "GET" and p.startswith(prefix)
    ]


def base_repo(native_release: dict[str, Path], folder: Path) -> Path:
    """The release's base as a Hub repo holds it: safetensors shards with their index, the same
    weights as `.bin` too (never read when safetensors are there), a card and an unrelated file."""
    from tests.test_native import base_tensors

    sd = base_tensors()
    names = list(sd)
    groups = [names[:3], names[3:]]
    weight_map = {}
    folder.mkdir(parents=True)
    for i, group in enumerate(groups, 1):
        shard = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: sd[n].contiguous() for n in group}, str(folder / shard))
        weight_map.update(dict.fromkeys(group, shard))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    for f in native_release["base"].iterdir():
        shutil.copy(f, folder / f.name)  # the .bin shards and tokenizer.model
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "README.md").write_text("# base\n")
    (folder / "original").mkdir()
    (folder / "original" / "consolidated.00.pth").write_bytes(b"x" * 5000)
    return folder


@pytest.fixture
def served(native_release, hub, tmp_path) -> dict[str, object]:
    """The native payload as `org/ft-xor` and its base as `org/base` on the test Hub."""
    hub.state.add_folder("org/ft-xor", native_release["payload"])
    hub.state.add_folder("org/base", base_repo(native_release, tmp_path / "base-repo"))
    return {"kw": hub_kw(hub, tmp_path), "ft": native_release["ft"]}


def test_native_decode_with_the_base_by_repo_id_fetches_only_what_it_reads(served, hub, tmp_path) -> None:
    out = tmp_path / "out"
    report = xorweights.decode("org/ft-xor", base="org/base", out=out, **served["kw"])
    assert tree(out) == tree(served["ft"])
    assert report.base_source is not None and report.base_source.startswith("org/base@")
    # safetensors (not the .bin copy), their index, the config and the tokenizer.model the payload XORs
    assert sorted(fetched(hub, "org/base")) == sorted(
        [
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "config.json",
            "tokenizer.model",
        ]
    )
    assert report.to_dict()["base_source"] == report.base_source

    # one tensor asked for: its shard only (found by the index), nothing else
    before = len(fetched(hub, "org/base"))
    got = dict(
        xorweights.iter_tensors(
            "org/ft-xor",
            "org/base",
            names=["model.norm.weight"],
            framework="pt",
            cache_dir=tmp_path / "cold-cache",
            endpoint=hub.url,
            token=TOKEN,
        )
    )
    assert list(got) == ["model.norm.weight"]
    assert sorted(fetched(hub, "org/base")[before:]) == [
        "config.json",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]


def test_a_cached_base_is_used_offline(served, native_release, hub, tmp_path) -> None:
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "a", **served["kw"])
    before = len(hub.state.requests)
    offline = {**served["kw"], "offline": True, "endpoint": "http://127.0.0.1:9"}
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "b", **offline)
    assert tree(tmp_path / "b") == tree(served["ft"]) and len(hub.state.requests) == before

    cold = {**offline, "cache_dir": tmp_path / "empty-cache"}
    with pytest.raises(HubError, match="the base org/base@main is not in the Hub cache"):
        xorweights.decode(native_release["payload"], base="org/base", out=tmp_path / "c", **cold)
    assert not (tmp_path / "c").exists()


def test_a_local_folder_named_like_the_repo_wins(served, native_release, hub, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(native_release["base"], tmp_path / "org" / "base")
    xorweights.decode(native_release["payload"], base="org/base", out=tmp_path / "out", **served["kw"])
    assert tree(tmp_path / "out") == tree(served["ft"]) and hub.state.requests == []


def test_a_gated_base_needs_access_and_says_so_in_one_line(native_release, hub, tmp_path) -> None:
    hub.state.add_folder("org/ft-xor", native_release["payload"])
    hub.state.add_folder("org/gated", base_repo(native_release, tmp_path / "base-repo"), gated=True)
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home")}
    args = ["decode", "org/ft-xor", "--base", "org/gated", "-q"]

    refused = _cli([*args, "--out", tmp_path / "a"], env)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "org/gated" in refused.stderr and "is gated and this token has no access to it" in refused.stderr
    assert f"ask for access at {hub.url}/org/gated" in refused.stderr
    assert not (tmp_path / "a").exists()

    anonymous = _cli([*args, "--out", tmp_path / "b"], {**env, "HF_TOKEN": ""})
    assert anonymous.returncode == 2 and "is gated and no token was sent" in anonymous.stderr

    hub.state.granted.add("org/gated")
    ok = _cli([*args, "--out", tmp_path / "c"], env)
    assert ok.returncode == 0, ok.stderr
    assert tree(tmp_path / "c") == tree(native_release["ft"])


def _blob(cache: Path, repo_id: str, path: str) -> Path:
    """The cache's blob behind `path` of the newest snapshot of `repo_id`."""
    snapshots = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    (snap,) = list(snapshots.iterdir())
    return Path(os.path.realpath(snap / path))


@pytest.mark.parametrize(
    "repo_id, path", [("org/base", "model-00001-of-00002.safetensors"), ("org/ft-xor", None)]
)
def test_a_truncated_cached_blob_is_downloaded_again_on_the_rerun(
    served, hub, tmp_path, repo_id, path
) -> None:
    """The user's dead end: a blob cut short in the cache. The rerun moves it aside, downloads it
    once more and decodes; nothing to delete by hand."""
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "a", **served["kw"])
    cache = Path(served["kw"]["cache_dir"])
    if path is None:  # the payload's weights file
        path = next(p for p in fetched(hub, "org/ft-xor") if p.endswith(".safetensors"))
    blob = _blob(cache, repo_id, path)
    whole = blob.read_bytes()
    blob.write_bytes(whole[: len(whole) // 2])
    gets = fetched(hub, repo_id).count(path)

    report = xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "b", **served["kw"])
    assert tree(tmp_path / "b") == tree(served["ft"]) and report.files
    assert blob.read_bytes() == whole and fetched(hub, repo_id).count(path) == gets + 1
    assert not list(blob.parent.glob("*.damaged"))  # the copy moved aside is gone once healed


def test_a_blob_damaged_twice_stops_the_run_naming_it(served, hub, tmp_path) -> None:
    """Same size, other bytes: found by its sha256, downloaded again, and the Hub serves the same
    wrong bytes: only this second failure stops the run, naming the blob."""
    path = "model-00001-of-00002.safetensors"
    hub.state.tamper("org/base", path)
    with pytest.raises(BaseMismatchError) as e:
        xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "out", **served["kw"])
    assert "/blobs/" in str(e.value) and path in str(e.value) and "org/base@" in str(e.value)
    assert fetched(hub, "org/base").count(path) == 2 and not (tmp_path / "out").exists()


def test_force_download_fetches_every_file_again(served, hub, tmp_path) -> None:
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home")}
    args = ["decode", "org/ft-xor", "--base", "org/base", "-q"]
    assert _cli([*args, "--out", tmp_path / "a"], env).returncode == 0
    first = (len(fetched(hub, "org/ft-xor")), len(fetched(hub, "org/base")))
    assert _cli([*args, "--out", tmp_path / "b"], env).returncode == 0
    assert (len(fetched(hub, "org/ft-xor")), len(fetched(hub, "org/base"))) == first  # all cached
    again = _cli([*args, "--out", tmp_path / "c", "--force-download"], env)
    assert again.returncode == 0, again.stderr
    assert (len(fetched(hub, "org/ft-xor")), len(fetched(hub, "org/base"))) == (2 * first[0], 2 * first[1])
    assert tree(tmp_path / "c") == tree(served["ft"])


def test_legacy_and_delta_decodes_take_the_base_by_repo_id(legacy_release, delta_pair, hub, tmp_path) -> None:
    hub.state.add_folder("org/legacy-base", legacy_release["base"])
    out = tmp_path / "legacy"
    xorweights.decode(
        legacy_release["payload"],
        base="org/legacy-base",
        out=out,
        checksums=legacy_release["manifest"],
        **hub_kw(hub, tmp_path),
    )
    assert tree(out) == tree(legacy_release["ft"])
    # the files named as the payload's; the base has no added_tokens.json, which the payload stores raw
    assert sorted(fetched(hub, "org/legacy-base")) == sorted(p.name for p in legacy_release["base"].iterdir())

    delta, base = delta_pair
    hub.state.add_folder("org/delta-base", base)
    here = xorweights.decode(delta, base=base, out=tmp_path / "d-local", recipe="fastchat")
    there = xorweights.decode(
        delta, base="org/delta-base", out=tmp_path / "d-hub", recipe="fastchat", **hub_kw(hub, tmp_path)
    )
    weights = {n for n in tree(tmp_path / "d-local") if n.endswith((".safetensors", ".json"))} - {
        "xorweights-tensors.json"
    }
    assert weights and {n: tree(tmp_path / "d-hub")[n] for n in weights} == {
        n: tree(tmp_path / "d-local")[n] for n in weights
    }
    assert [f.digests for f in there.files] == [f.digests for f in here.files]


# --- arguments that look local ----------------------------------------------------------------


@pytest.mark.parametrize(
    "arg", ["./org/ft-xor", "../org/ft-xor", "/org/ft-xor", "~/org/ft-xor", "small/paylaod"]
)
def test_a_path_that_looks_local_is_never_sent_to_the_hub(
    native_release, hub, tmp_path, monkeypatch, arg
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small").mkdir()  # `small/paylaod`: a typo below a folder that exists
    hub.state.add_folder("org/ft-xor", native_release["payload"])
    hub.state.add_folder("small/paylaod", native_release["payload"])
    with pytest.raises(MissingFileError):
        xorweights.decode(arg, base=native_release["base"], out=tmp_path / "out", **hub_kw(hub, tmp_path))
    with pytest.raises(MissingFileError):
        xorweights.decode(native_release["payload"], base=arg, out=tmp_path / "out", **hub_kw(hub, tmp_path))
    assert hub.state.requests == [] and not (tmp_path / "out").exists()


def test_a_plain_http_error_of_the_hub_is_one_line(native_release, tmp_path) -> None:
    """An endpoint that answers 404 with no Hub error code (a wrong HF_ENDPOINT, a proxy)."""
    with HubServer(tmp_path / "srv") as other:
        env = {"HF_ENDPOINT": other.url + "/not-the-api", "HF_HOME": str(tmp_path / "hf-home")}
        res = _cli(["decode", "org/ft-xor", "--base", native_release["base"], "--out", tmp_path / "o"], env)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "\\n" not in res.stderr and "Traceback" not in res.stderr
    assert "HTTP 404" in res.stderr or "no Hub repo org/ft-xor" in res.stderr


def test_the_base_goes_to_the_hub_cache_whatever_local_dir_the_payload_uses(served, hub, tmp_path) -> None:
    local = tmp_path / "payload-here"
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "o", local_dir=local, **served["kw"])
    assert (local / "xorweights.json").is_file() and not list(local.glob("*.index.json"))
    assert (Path(served["kw"]["cache_dir"]) / "models--org--base").is_dir()


# --- a damaged or malformed index, copies left aside, --json on a healed run ---------------------


def test_a_truncated_cached_index_is_downloaded_again_before_it_is_read(served, hub, tmp_path) -> None:
    """The index is read to choose the shards: a copy cut short is healed first, not reported as
    invalid JSON on every run."""
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "a", **served["kw"])
    index = "model.safetensors.index.json"
    blob = _blob(Path(served["kw"]["cache_dir"]), "org/base", index)
    whole = blob.read_bytes()
    blob.write_bytes(whole[: len(whole) // 2])
    gets = fetched(hub, "org/base").count(index)
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "b", **served["kw"])
    assert tree(tmp_path / "b") == tree(served["ft"])
    assert blob.read_bytes() == whole and fetched(hub, "org/base").count(index) == gets + 1


def test_a_copy_left_aside_by_a_killed_run_is_removed(served, hub, tmp_path) -> None:
    """A run killed while it downloads a damaged file again leaves `<blob>.damaged`; the next run
    that finds the file whole removes it (it may be as large as a shard)."""
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "a", **served["kw"])
    cache = Path(served["kw"]["cache_dir"])
    blob = _blob(cache, "org/base", "model-00001-of-00002.safetensors")
    aside = blob.with_name(blob.name + ".damaged")
    aside.write_bytes(b"cut")
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "b", **served["kw"])
    assert not aside.exists() and tree(tmp_path / "b") == tree(served["ft"])


@pytest.mark.parametrize(
    "index", [b"[]", b'{"weight_map": {"model.norm.weight": ["x"]}}', b'{"weight_map": 1}']
)
def test_a_malformed_index_is_no_index(native_release, hub, tmp_path, index) -> None:
    """An index that is no object, or maps tensors to no file name: every weight file is read."""
    folder = base_repo(native_release, tmp_path / "base-repo")
    (folder / "model.safetensors.index.json").write_bytes(index)
    hub.state.add_folder("org/ft-xor", native_release["payload"])
    hub.state.add_folder("org/base", folder)
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "out", **hub_kw(hub, tmp_path))
    assert tree(tmp_path / "out") == tree(native_release["ft"])
    assert {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} <= set(
        fetched(hub, "org/base")
    )


def test_offline_a_cache_lacking_a_shard_the_index_names_says_so(served, hub, tmp_path) -> None:
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "a", **served["kw"])
    cache = Path(served["kw"]["cache_dir"])
    shard = "model-00002-of-00002.safetensors"
    blob = _blob(cache, "org/base", shard)
    blob.unlink()  # and its link: as a run that fetched only the other shard leaves the snapshot
    repo = blob.parent.parent
    (repo / "snapshots" / (repo / "refs" / "main").read_text() / shard).unlink()
    offline = {**served["kw"], "offline": True, "endpoint": "http://127.0.0.1:9"}
    with pytest.raises(HubError, match="the base org/base@main is not in the Hub cache"):
        xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "b", **offline)
    assert not (tmp_path / "b").exists()


def test_json_prints_nothing_on_stderr_when_a_damaged_blob_is_healed(served, hub, tmp_path) -> None:
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home")}
    args = ["decode", "org/ft-xor", "--base", "org/base"]
    assert _cli([*args, "--out", tmp_path / "a", "-q"], env).returncode == 0
    blob = _blob(tmp_path / "hf-home" / "hub", "org/base", "model-00001-of-00002.safetensors")
    blob.write_bytes(b"")
    as_json = _cli([*args, "--out", tmp_path / "b", "--json"], env)
    assert as_json.returncode == 0 and as_json.stderr == "", as_json.stderr
    assert json.loads(as_json.stdout)["base_source"].startswith("org/base@")
    blob.write_bytes(b"")
    plain = _cli([*args, "--out", tmp_path / "c"], env)  # the warning, after the report
    assert plain.returncode == 0 and plain.stderr.startswith("WARNING ")
    assert "downloading it again" in plain.stderr


def test_force_download_of_a_base_offline_is_refused(served, native_release, tmp_path) -> None:
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "a", **served["kw"])
    offline = {**served["kw"], "offline": True, "force_download": True}
    with pytest.raises(InputError, match="org/base: `force_download` downloads again, which offline mode"):
        xorweights.decode(native_release["payload"], base="org/base", out=tmp_path / "b", **offline)
    assert not (tmp_path / "b").exists()


def test_a_cached_payload_damaged_in_its_first_frame_is_downloaded_again(served, hub, tmp_path) -> None:
    """The first frames of a compressed payload file are read to plan the decode, before the files
    are hashed: a byte flipped there is healed like any other damage, not reported as final."""
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "a", **served["kw"])
    path = next(p for p in fetched(hub, "org/ft-xor") if p.endswith(".safetensors"))
    blob = _blob(Path(served["kw"]["cache_dir"]), "org/ft-xor", path)
    whole = blob.read_bytes()
    blob.write_bytes(whole[:100] + bytes([whole[100] ^ 1]) + whole[101:])
    gets = fetched(hub, "org/ft-xor").count(path)
    xorweights.decode("org/ft-xor", base="org/base", out=tmp_path / "b", **served["kw"])
    assert tree(tmp_path / "b") == tree(served["ft"])
    assert blob.read_bytes() == whole and fetched(hub, "org/ft-xor").count(path) == gets + 1


def test_a_base_not_cached_says_why_the_hub_was_not_asked(native_release, tmp_path) -> None:
    """Online with the Hub out of reach, the error says so, not only `run once online`."""
    down = {"endpoint": "http://127.0.0.1:9", "cache_dir": tmp_path / "cold", "token": TOKEN}
    payload = native_release["payload"]
    with pytest.raises(HubError, match=r"http://127\.0\.0\.1:9 is unreachable \(.*\); run once online"):
        xorweights.decode(payload, base="org/base", out=tmp_path / "a", **down)
    with pytest.raises(HubError, match=r"offline mode \(HF_HUB_OFFLINE\); run once online"):
        xorweights.decode(payload, base="org/base", out=tmp_path / "b", offline=True, **down)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_base_with_a_subfolder_is_refused_in_one_line(served, native_release, hub, tmp_path) -> None:
    with pytest.raises(xorweights.InputError, match="without a subfolder"):
        xorweights.decode(native_release["payload"], base="org/base:sub", out=tmp_path / "o", **served["kw"])
    assert hub.state.requests == [] and not (tmp_path / "o").exists()
