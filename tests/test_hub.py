"""Decode from a Hub repo id and publish releases, with the real huggingface_hub client over real HTTP.

Every test talks to `tests/hubserver.py` on 127.0.0.1: repo info, listings, resolve with ETag and
ranges, and the upload endpoints. Nothing of huggingface_hub or of xorweights is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import xorweights
from tests.conftest import legacy_folders, random_bytes, tree, write_files
from tests.hubserver import TOKEN, HubServer
from xorweights import publish
from xorweights.errors import HubError, PayloadMismatchError, UnsafePathError
from xorweights.hub import model_card
from xorweights.outfolder.folder import STATE_PATH


def nested_repo(folder: Path, payload: Path, name: str, *, decoy: bool = False) -> Path:
    """A repo laid out like oasst-sft-6: the payload two levels down, a card and a script on top.

    `decoy` adds a model file in another folder, nearer the top (a native payload still wins).
    """
    shutil.copytree(payload, folder / name / name)
    (folder / "README.md").write_text("# a release\n\nNo checksums here.\n")
    (folder / "xor_codec.py").write_text("print('legacy script')\n")
    if decoy:
        (folder / "other").mkdir()
        (folder / "other" / "unrelated.bin").write_bytes(random_bytes(50_000, 99))
    return folder


def hub_kw(hub: HubServer, tmp_path: Path, **kw: object) -> dict[str, object]:
    return {"endpoint": hub.url, "cache_dir": tmp_path / "hf-cache", "token": TOKEN, **kw}


def downloads(hub: HubServer) -> list[str]:
    """Repo paths fetched with GET (not HEAD) since the server started."""
    return [
        p.split("/resolve/", 1)[1].split("/", 1)[1]
        for m, p, _ in hub.state.requests
        if m == "GET" and "/resolve/" in p
    ]


# --- decode from a repo id ------------------------------------------------------------------


def test_decode_repo_id_downloads_only_the_payload_and_is_byte_exact(native_release, hub, tmp_path) -> None:
    repo = nested_repo(tmp_path / "repo", native_release["payload"], "ft-xor", decoy=True)
    hub.state.add_folder("org/ft-xor", repo)
    out = tmp_path / "out"
    report = xorweights.decode("org/ft-xor", base=native_release["base"], out=out, **hub_kw(hub, tmp_path))
    assert tree(out) == tree(native_release["ft"])
    assert report.format == "xorweights" and report.source and report.source.startswith("org/ft-xor@")
    assert all(f.verified for f in report.files)
    fetched = sorted(downloads(hub))
    assert fetched == sorted(["README.md", *(f"ft-xor/ft-xor/{n}" for n in tree(native_release["payload"]))])
    assert "xor_codec.py" not in fetched and "other/unrelated.bin" not in fetched


def test_second_call_returns_at_once_and_verify_rehashes(native_release, hub, tmp_path) -> None:
    hub.state.add_folder("org/ft-xor", nested_repo(tmp_path / "repo", native_release["payload"], "ft-xor"))
    out, kw = tmp_path / "out", hub_kw(hub, tmp_path)
    xorweights.decode("org/ft-xor", base=native_release["base"], out=out, **kw)
    gets = len(downloads(hub))

    again = xorweights.decode("org/ft-xor", base=native_release["base"], out=out, **kw)
    assert all(f.kept for f in again.files) and len(downloads(hub)) == gets  # nothing fetched again

    # Same size and time, other bytes: the inode change time gives it away; hashed and remade.
    target = out / "model.safetensors"

    def corrupt() -> bytes:
        st = target.stat()
        data = bytearray(target.read_bytes())
        data[-1] ^= 1
        target.write_bytes(bytes(data))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        return bytes(data)

    corrupt()
    quick = xorweights.decode("org/ft-xor", base=native_release["base"], out=out, **kw)
    assert {f.name for f in quick.files if not f.kept} == {"model.safetensors"}
    assert tree(out) == tree(native_release["ft"])
    # A change no stamp shows (the record forged to match): kept unread, remade when asked to verify.
    data = corrupt()
    state = json.loads((out / STATE_PATH).read_text())
    state["files"]["model.safetensors"]["ctime_ns"] = target.stat().st_ctime_ns
    (out / STATE_PATH).write_text(json.dumps(state))
    quick = xorweights.decode("org/ft-xor", base=native_release["base"], out=out, **kw)
    assert all(f.kept for f in quick.files) and target.read_bytes() == data
    checked = xorweights.decode("org/ft-xor", base=native_release["base"], out=out, verify=True, **kw)
    remade = {f.name for f in checked.files if not f.kept}
    assert remade == {"model.safetensors"}
    assert tree(out) == tree(native_release["ft"])


def test_download_cut_midway_resumes_with_a_range_request(legacy_release, hub, tmp_path) -> None:
    publish(legacy_release["payload"], "org/legacy-xor", checksums=legacy_release["manifest"], **_pub(hub))
    shard = "payload/pytorch_model-00001-of-00002.bin"
    hub.state.cut_after[shard] = 15_000_000  # the connection drops after 15 MB of 24 MB
    out = tmp_path / "out"
    report = xorweights.decode(
        "org/legacy-xor", base=legacy_release["base"], out=out, **hub_kw(hub, tmp_path)
    )
    assert tree(out) == tree(legacy_release["ft"])
    ranges = [h.get("Range") for h in hub.requests_for("GET", shard)]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 15_000_000  # resumed where the kept bytes end, not from the start
    assert report.release == "legacy-xor" and all(f.verified for f in report.files)  # checksums from the card


def test_payload_not_matching_the_hubs_sha256_is_refused_before_decoding(
    legacy_release, hub, tmp_path
) -> None:
    publish(legacy_release["payload"], "org/legacy-xor", checksums=legacy_release["manifest"], **_pub(hub))
    hub.state.tamper("org/legacy-xor", "payload/pytorch_model-00002-of-00002.bin")
    out = tmp_path / "out"
    with pytest.raises(PayloadMismatchError) as e:
        xorweights.decode("org/legacy-xor", base=legacy_release["base"], out=out, **hub_kw(hub, tmp_path))
    good = hashlib.sha256((legacy_release["payload"] / "pytorch_model-00002-of-00002.bin").read_bytes())
    assert "pytorch_model-00002-of-00002.bin" in str(e.value) and e.value.expected == good.hexdigest()
    assert "org/legacy-xor@" in str(e.value) and "/blobs/" in str(e.value)  # names the blob
    # downloaded, found to differ, downloaded once more (as --force-download would), then refused
    assert len(hub.requests_for("GET", "payload/pytorch_model-00002-of-00002.bin")) == 2
    assert tree(out) == {}  # no output at all, not even the files that were fine


def test_release_checksums_are_chosen_by_repo_id(hub, tmp_path) -> None:
    """A repo named like a bundled release is checked against that release's manifest, unasked."""
    published = xorweights.load_checksums("oasst-sft-6-llama-30b")
    names = sorted(published.stage("decoded"))  # a payload file for every published output
    payload = write_files(tmp_path / "p", {n: random_bytes(1000 + i, i) for i, n in enumerate(names)})
    repo = nested_repo(tmp_path / "repo", payload, "oasst-sft-6-llama-30b-xor")
    hub.state.add_folder("OpenAssistant/oasst-sft-6-llama-30b-xor", repo)
    base = write_files(tmp_path / "base", {n: random_bytes(1000, 3) for n in published.stage("hf_base")})
    with pytest.raises(xorweights.ChecksumMismatchError) as e:
        xorweights.decode(
            "OpenAssistant/oasst-sft-6-llama-30b-xor",
            base=base,
            out=tmp_path / "out",
            **hub_kw(hub, tmp_path),
        )
    # added_tokens.json is settled against the published md5 first (legacy rule 3)
    assert (
        e.value.stage == "decoded" and e.value.expected == published.stage("decoded")["added_tokens.json"].md5
    )
    assert "oasst-sft-6-llama-30b decoded" in str(e.value) and not (tmp_path / "out").exists()


def test_unknown_repo_and_revision_are_named(hub, tmp_path) -> None:
    with pytest.raises(HubError, match="no local folder 'org/missing', and no Hub repo org/missing"):
        xorweights.decode("org/missing", base=tmp_path, out=tmp_path / "o", **hub_kw(hub, tmp_path))
    hub.state.add_folder("org/r", write_files(tmp_path / "r", {"a.bin": b"x" * 10}))
    with pytest.raises(HubError, match="has no revision 'v9'"):
        xorweights.decode("org/r@v9", base=tmp_path, out=tmp_path / "o", **hub_kw(hub, tmp_path))


def test_offline_uses_a_complete_cache_or_says_what_is_missing(native_release, hub, tmp_path) -> None:
    hub.state.add_folder("org/ft-xor", nested_repo(tmp_path / "repo", native_release["payload"], "ft-xor"))
    kw = hub_kw(hub, tmp_path)
    xorweights.decode("org/ft-xor", base=native_release["base"], out=tmp_path / "a", **kw)
    n = len(hub.state.requests)
    report = xorweights.decode(
        "org/ft-xor", base=native_release["base"], out=tmp_path / "b", offline=True, **kw
    )
    assert len(hub.state.requests) == n  # not one request
    assert tree(tmp_path / "b") == tree(native_release["ft"]) and all(f.verified for f in report.files)
    cold = r"no local folder 'org/ft-xor', and org/ft-xor@main is not fully in the Hub cache: offline mode"
    with pytest.raises(HubError, match=cold):
        xorweights.decode(
            "org/ft-xor",
            base=native_release["base"],
            out=tmp_path / "c",
            offline=True,
            **{**kw, "cache_dir": tmp_path / "empty-cache"},
        )


def test_download_dir_instead_of_the_cache(native_release, hub, tmp_path) -> None:
    hub.state.add_folder("org/ft-xor", nested_repo(tmp_path / "repo", native_release["payload"], "ft-xor"))
    kw = hub_kw(hub, tmp_path, download_dir=tmp_path / "dl")
    xorweights.decode("org/ft-xor", base=native_release["base"], out=tmp_path / "a", **kw)
    assert tree(tmp_path / "dl" / "ft-xor" / "ft-xor") == tree(native_release["payload"])
    assert not list((tmp_path / "hf-cache").rglob("blobs/*"))  # huggingface_hub only notes the ref there
    offline = xorweights.decode(
        "org/ft-xor", base=native_release["base"], out=tmp_path / "b", offline=True, **kw
    )
    assert tree(tmp_path / "b") == tree(native_release["ft"]) and offline.source


# --- publish ---------------------------------------------------------------------------------


def _pub(hub: HubServer, **kw: object) -> dict[str, object]:
    return {"endpoint": hub.url, "token": TOKEN, **kw}


def test_publish_then_decode_from_the_repo_id(native_release, hub, tmp_path) -> None:
    report = publish(native_release["payload"], "me/ft-xor", **_pub(hub))
    assert report.format == "xorweights" and "README.md" in report.files
    out = tmp_path / "out"
    decoded = xorweights.decode("me/ft-xor", base=native_release["base"], out=out, **hub_kw(hub, tmp_path))
    assert tree(out) == tree(native_release["ft"]) and all(f.verified for f in decoded.files)
    assert decoded.release == "ft-xor"  # from the card: no checksums/ entry exists for this repo

    card = (Path(decoded.payload_dir).parent / "README.md").read_text()
    assert "xorweights decode me/ft-xor --base" in card
    assert f"xorweights {xorweights.__version__}" in card and "format: `xorweights`" in card
    for name, data in tree(native_release["ft"]).items():
        assert f"{hashlib.sha256(data).hexdigest()}  {name}" in card  # decoded checksums
    manifest = json.loads((native_release["payload"] / "xorweights.json").read_text())
    assert len(manifest["base_tensors"]) == 7
    for name, t in manifest["base_tensors"].items():
        assert f"{t['blake3']}  {name}" in card  # base checksums (format version 3: blake3)
    tokenizer = hashlib.sha256((native_release["base"] / "tokenizer.model").read_bytes()).hexdigest()
    assert f"{tokenizer}  tokenizer.model" in card  # the base file XOR-ed whole
    parsed = model_card.parse(card, "README.md")
    assert parsed is not None and {n: d.sha256 for n, d in parsed.stage("decoded").items()} == {
        n: hashlib.sha256(d).hexdigest() for n, d in tree(native_release["ft"]).items()
    }


def test_publish_private_to_a_branch_needs_the_token(native_release, hub, tmp_path) -> None:
    publish(native_release["payload"], "me/secret-xor", private=True, revision="v2", **_pub(hub))
    kw = hub_kw(hub, tmp_path)
    out = tmp_path / "out"
    xorweights.decode("me/secret-xor@v2", base=native_release["base"], out=out, **kw)
    assert tree(out) == tree(native_release["ft"])
    with pytest.raises(HubError, match="HF_TOKEN"):
        xorweights.decode(
            "me/secret-xor@v2",
            base=native_release["base"],
            out=tmp_path / "o2",
            **{**kw, "token": False, "cache_dir": tmp_path / "c2"},
        )
    with pytest.raises(HubError, match="HF_TOKEN"):
        publish(native_release["payload"], "me/other-xor", endpoint=hub.url, token="hf_wrong")


def test_publish_refuses_a_payload_that_changed_since_encoding(native_release, hub, tmp_path) -> None:
    payload = tmp_path / "payload"
    shutil.copytree(native_release["payload"], payload)
    target = payload / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(xorweights.ChecksumMismatchError, match="nothing was uploaded"):
        publish(payload, "me/ft-xor", **_pub(hub))
    assert "me/ft-xor" not in hub.state.repos


def test_publish_legacy_payload_needs_its_manifest(legacy_release, hub) -> None:
    with pytest.raises(xorweights.InputError, match="pass `checksums`"):
        publish(legacy_release["payload"], "me/legacy-xor", **_pub(hub))


def repo_files(hub: HubServer, repo_id: str, branch: str = "main") -> dict[str, bytes]:
    """Every file of a branch's head on the test server, by repo path."""
    repo = hub.state.repos[repo_id]
    return {
        p: (hub.state.blobs / e.sha256).read_bytes() for p, e in repo.commits[repo.branches[branch]].items()
    }


def card_of(hub: HubServer, repo_id: str, tmp_path: Path, branch: str = "main") -> ModelCard:
    """The repo's README.md, loaded by huggingface_hub's `ModelCard`."""
    path = tmp_path / f"{repo_id.replace('/', '--')}-{branch}-README.md"
    path.write_bytes(repo_files(hub, repo_id, branch)["README.md"])
    return ModelCard.load(path)


def files_of(payload: Path) -> dict[str, bytes]:
    """The payload files of a folder (its hidden records left out)."""
    return {n: d for n, d in tree(payload).items() if not n.startswith(".")}


def commits(hub: HubServer) -> int:
    return len(hub.requests_for("POST", "/commit/main"))


def test_encode_base_name_reaches_the_card_front_matter(native_release, hub, tmp_path) -> None:
    payload = tmp_path / "payload"
    xorweights.encode(
        native_release["ft"], base=native_release["base"], out=payload, base_name="meta/llama-7b"
    )
    assert json.loads((payload / "xorweights.json").read_text())["base_model"] == "meta/llama-7b"

    report = publish(payload, "me/card-xor", **_pub(hub))
    assert report.payload_bytes == sum(len(d) for d in files_of(payload).values())  # all files, not the last
    assert report.base_model == "meta/llama-7b" and report.license == "other" and not report.unchanged
    card = card_of(hub, "me/card-xor", tmp_path)
    assert card.data.base_model == "meta/llama-7b" and card.data.license == "other"
    assert card.data.library_name == "xorweights" and card.data.tags == ["xorweights", "xor-payload"]
    assert "the base model `meta/llama-7b`" in card.text and "its terms apply" in card.text
    parsed = model_card.parse(str(card), "README.md")
    assert parsed is not None and parsed.base_model == "meta/llama-7b"
    assert set(parsed.stage("decoded")) == set(tree(native_release["ft"]))

    # Overridden on publish; a plain name (not a repo id) is named in the prose only.
    publish(payload, "me/card-xor", base_name="LLaMA 7B (Meta, original)", license="llama2", **_pub(hub))
    card = card_of(hub, "me/card-xor", tmp_path)
    assert card.data.base_model is None and card.data.license == "llama2"
    assert "the base model `LLaMA 7B (Meta, original)`" in card.text
    assert "this release's `llama2`" in card.text
    for bad in ({"base_name": "a\nb"}, {"base_name": "x<!-- y"}, {"license": "Apache 2.0"}):
        with pytest.raises(xorweights.InputError):
            publish(payload, "me/card-xor", **bad, **_pub(hub))  # type: ignore[arg-type]


def test_legacy_base_name_goes_through_the_checksum_manifest(hub, tmp_path) -> None:
    base, ft = legacy_folders(tmp_path)
    with pytest.raises(xorweights.InputError, match=r"pass `with_checksums=True` too"):
        xorweights.encode(ft, base=base, out=tmp_path / "p0", format="oasst", base_name="meta/llama-7b")
    report = xorweights.encode(
        ft,
        base=base,
        out=tmp_path / "payload",
        format="oasst",
        with_checksums=True,
        base_name="meta/llama-7b",
    )
    assert report.manifest is not None and report.manifest.to_json()["base_model"] == "meta/llama-7b"
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(report.manifest.to_json()))
    assert xorweights.load_checksums(manifest).base_model == "meta/llama-7b"

    first = publish(tmp_path / "payload", "me/legacy-card-xor", checksums=manifest, **_pub(hub))
    card = card_of(hub, "me/legacy-card-xor", tmp_path)
    assert card.data.base_model == "meta/llama-7b"
    assert card.data.tags == ["xorweights", "xor-payload", "oasst"]
    assert first.payload_bytes == sum(len(d) for d in files_of(tmp_path / "payload").values())

    # Only the card changes: one commit, and no payload bytes sent again.
    puts = len([r for r in hub.state.requests if r[0] == "PUT"])
    second = publish(
        tmp_path / "payload",
        "me/legacy-card-xor",
        checksums=manifest,
        base_name="huggyllama/llama-7b",
        **_pub(hub),
    )
    assert not second.unchanged and second.commit != first.commit and second.removed == ()
    assert len([r for r in hub.state.requests if r[0] == "PUT"]) == puts
    assert card_of(hub, "me/legacy-card-xor", tmp_path).data.base_model == "huggyllama/llama-7b"


def test_publishing_again_is_a_no_op_or_replaces_the_whole_payload(native_release, hub, tmp_path) -> None:
    first = publish(native_release["payload"], "me/again-xor", **_pub(hub))
    n = commits(hub)
    same = publish(native_release["payload"], "me/again-xor", **_pub(hub))
    assert same.unchanged and same.commit == first.commit and commits(hub) == n  # no empty commit
    assert same.files == first.files and same.payload_bytes == first.payload_bytes

    # A changed fine-tune: no tokenizer.model, another config. Its payload replaces the first.
    ft2 = tmp_path / "ft2"
    shutil.copytree(native_release["ft"], ft2)
    (ft2 / "tokenizer.model").unlink()
    (ft2 / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 104, "v": 2}))
    payload2 = tmp_path / "payload2"
    xorweights.encode(ft2, base=native_release["base"], out=payload2)
    changed = publish(payload2, "me/again-xor", **_pub(hub))
    assert changed.removed == ("payload/tokenizer.model",) and not changed.unchanged
    files = repo_files(hub, "me/again-xor")
    assert {p: d for p, d in files.items() if p.startswith("payload/")} == {
        f"payload/{n}": d for n, d in files_of(payload2).items()
    }
    out = tmp_path / "out"
    decoded = xorweights.decode("me/again-xor", base=native_release["base"], out=out, **hub_kw(hub, tmp_path))
    assert tree(out) == tree(ft2) and all(f.verified for f in decoded.files)

    # And back to the first payload: exactly its files again.
    back = publish(native_release["payload"], "me/again-xor", **_pub(hub))
    files = repo_files(hub, "me/again-xor")
    assert back.removed == () and not back.unchanged
    assert {p: d for p, d in files.items() if p.startswith("payload/")} == {
        f"payload/{n}": d for n, d in files_of(native_release["payload"]).items()
    }


def test_publish_to_an_existing_repo_and_to_someone_elses(native_release, hub, tmp_path) -> None:
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.url, token=TOKEN).create_repo("me/made-xor")  # made beforehand, on the Hub
    hub.state.add_folder(
        "me/made-xor", write_files(tmp_path / "mine", {"LICENSE": b"mine\n", "README.md": b"# x\n"})
    )
    report = publish(native_release["payload"], "me/made-xor", **_pub(hub))
    files = repo_files(hub, "me/made-xor")
    assert files["LICENSE"] == b"mine\n" and files["README.md"].decode() == report.card  # the card replaced
    assert len(hub.requests_for("POST", "/api/repos/create")) == 1  # only the one made beforehand

    with pytest.raises(xorweights.InputError, match="me/made-xor exists and is public"):
        publish(native_release["payload"], "me/made-xor", private=True, **_pub(hub))

    hub.state.foreign.add("someone")
    hub.state.add_folder("someone/their-xor", write_files(tmp_path / "theirs", {"README.md": b"# theirs\n"}))
    with pytest.raises(HubError) as e:
        publish(native_release["payload"], "someone/their-xor", **_pub(hub))
    assert "someone/their-xor exists, but this token may not write to it (someone else's?)" in str(e.value)
    assert "\n" not in str(e.value) and "HF_TOKEN" in str(e.value)
    with pytest.raises(HubError) as e:
        publish(native_release["payload"], "someone/new-xor", **_pub(hub))
    message = str(e.value)
    assert "cannot create someone/new-xor" in message and "may not create repos under 'someone'" in message
    assert "\n" not in message and "someone/new-xor" not in hub.state.repos
    assert repo_files(hub, "someone/their-xor") == {"README.md": b"# theirs\n"}


# --- model cards -----------------------------------------------------------------------------


def test_cards_without_front_matter_still_parse(native_release) -> None:
    """Cards written before the front matter (or edited by hand without it) keep their checksums."""
    checksums = xorweights.load_checksums(native_release["payload"] / "xorweights.json")
    card = model_card.render(
        "me/x-xor", checksums, payload_format="xorweights", version="0", payload_bytes=1, base_model="a/b"
    )
    assert card.startswith("---\nbase_model: a/b\n")
    body = card.split("\n---\n", 1)[1]
    for text in (card, body):
        parsed = model_card.parse(text, "README.md")
        assert parsed is not None and parsed.stage("decoded") == checksums.stage("decoded")


def test_card_checksum_block_is_strict(tmp_path) -> None:
    assert model_card.parse("# just a card\n", "README.md") is None
    hostile = {
        "format": "xorweights-checksums/1",
        "release": "x",
        "stages": {"decoded": {"../../evil": {"size": 1}}},
    }
    with pytest.raises((UnsafePathError, xorweights.FormatError)):
        model_card.parse(f"{model_card.MARKER}\n```json\n{json.dumps(hostile)}\n```\n", "README.md")
    with pytest.raises(xorweights.FormatError, match="not valid JSON"):
        model_card.parse(f"{model_card.MARKER}\n```json\n{{oops\n```\n", "README.md")
    good = {"format": "xorweights-checksums/1", "release": "x", "stages": {"decoded": {"a": {"size": 1}}}}
    block = f"{model_card.MARKER}\n```json\n{json.dumps(good)}\n```\n"
    with pytest.raises(xorweights.FormatError, match="2 checksum blocks"):
        model_card.parse(block + block, "README.md")


# --- the command line, with the ecosystem's environment variables -----------------------------


def _cli(args: list[object], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xorweights.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def test_cli_publish_and_decode_with_hf_environment(native_release, hub, tmp_path) -> None:
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home")}
    pub = _cli(["publish", native_release["payload"], "me/cli-xor", "--private"], env)
    assert pub.returncode == 0, pub.stderr
    assert "decode with: xorweights decode me/cli-xor --base" in pub.stdout

    base = native_release["base"]
    dec = _cli(["decode", "me/cli-xor", "--base", base, "--out", tmp_path / "a"], env)
    assert dec.returncode == 0, dec.stderr
    assert "me/cli-xor@" in dec.stdout and "checked against the sha256 the Hub reports" in dec.stdout
    assert tree(tmp_path / "a") == tree(native_release["ft"])
    assert (tmp_path / "hf-home" / "hub" / "models--me--cli-xor").is_dir()  # the ecosystem's cache

    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    again = _cli(["decode", "me/cli-xor", "--base", base, "--out", tmp_path / "b", "-q"], offline)
    assert again.returncode == 0 and again.stdout == again.stderr == "", again.stderr  # -q: nothing
    assert tree(tmp_path / "b") == tree(native_release["ft"])

    cold = _cli(
        ["decode", "me/cli-xor", "--base", base, "--out", tmp_path / "c"],
        {**offline, "HF_HOME": str(tmp_path / "cold")},
    )
    assert cold.returncode == 2 and "Traceback" not in cold.stderr
    assert (
        "Error: no local folder 'me/cli-xor', and me/cli-xor@main is not fully in the Hub cache: offline "
        "mode (HF_HUB_OFFLINE)" in cold.stderr
    )
    assert not (tmp_path / "c").exists()

    no_token = _cli(
        ["decode", "me/cli-xor", "--base", base, "--out", tmp_path / "d"], {**env, "HF_TOKEN": ""}
    )
    assert no_token.returncode == 2 and "HF_TOKEN" in no_token.stderr


def test_cli_publish_reports_the_total_size_and_a_repeat(native_release, hub, tmp_path) -> None:
    from xorweights.cli import _human

    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home")}
    args = ["publish", native_release["payload"], "me/cli2-xor", "--base-name", "meta/llama-7b"]
    total = _human(sum(len(d) for d in files_of(native_release["payload"]).values()))
    first = _cli([*args, "--license", "apache-2.0"], env)
    assert first.returncode == 0, first.stderr
    assert f"published 5 files ({total} of xorweights payload) to {hub.url}/me/cli2-xor" in first.stdout
    again = _cli([*args, "--license", "apache-2.0"], env)
    assert again.returncode == 0, again.stderr
    assert f"already holds these 5 files ({total} of xorweights payload): nothing to upload" in again.stdout
    card = card_of(hub, "me/cli2-xor", tmp_path)
    assert card.data.license == "apache-2.0" and card.data.base_model == "meta/llama-7b"
    bad = _cli([*args, "--license", "Apache 2"], env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "license 'Apache 2'" in bad.stderr


def test_unreachable_hub_falls_back_to_a_complete_cache(native_release, hub, tmp_path) -> None:
    hub.state.add_folder("org/ft-xor", nested_repo(tmp_path / "repo", native_release["payload"], "ft-xor"))
    kw = hub_kw(hub, tmp_path)
    xorweights.decode("org/ft-xor", base=native_release["base"], out=tmp_path / "a", **kw)
    down = {**kw, "endpoint": "http://127.0.0.1:9"}  # refused connections
    report = xorweights.decode("org/ft-xor", base=native_release["base"], out=tmp_path / "b", **down)
    assert tree(tmp_path / "b") == tree(native_release["ft"]) and report.source


def test_the_server_rate_limits_the_link_not_each_download(hub, tmp_path) -> None:
    """`HubState.rate` is one link: two files downloaded at once share it (the streaming benchmark's
    floor is the payload's size over the rate, however many files it has)."""
    import threading
    import time
    import urllib.request

    size, rate = 1 << 20, 4 << 20
    folder = tmp_path / "two"
    write_files(folder, {"a.safetensors": random_bytes(size, 1), "b.safetensors": random_bytes(size, 2)})
    hub.state.add_folder("org/two", folder)
    hub.state.rate = rate
    got: dict[str, int] = {}

    def get(name: str) -> None:
        with urllib.request.urlopen(f"{hub.url}/org/two/resolve/main/{name}", timeout=30) as r:
            got[name] = len(r.read())

    start = time.monotonic()
    threads = [threading.Thread(target=get, args=(n,)) for n in ("a.safetensors", "b.safetensors")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    both = time.monotonic() - start
    assert got == {"a.safetensors": size, "b.safetensors": size}
    assert both >= 0.8 * 2 * size / rate, both  # each throttled alone would take half as long
