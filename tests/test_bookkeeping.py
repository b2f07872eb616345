"""Where xorweights keeps its records: `.cache/huggingface/xorweights/` in the folder it writes, which
`HfApi.upload_folder` (and `hf upload`) leave out, so a decoded or encoded folder uploads as the model
alone; records an older version kept at the folder's top move there when the folder is opened."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import xorweights
from tests.conftest import legacy_folders, tree
from tests.hubserver import TOKEN
from xorweights.errors import OutputExistsError, UnsafePathError
from xorweights.outfolder.atomic import BOOKKEEPING_DIR, STAGING_DIR
from xorweights.outfolder.folder import STATE_FILE, STATE_JOURNAL, STATE_PATH

pytestmark = pytest.mark.hub  # what an upload leaves out is huggingface_hub's rule: checked on 0.x too


def uploaded(hub, folder: Path, repo_id: str) -> set[str]:
    """The repo's files after `HfApi.upload_folder(folder)` with its default ignore patterns."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(repo_id)
    try:
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except ValueError as e:
        # huggingface_hub 0.x commits, then cannot parse a commit URL on a host other than
        # HF_ENDPOINT's (this test server); the listing below shows what the commit holds.
        if not str(e).startswith("Unable to retrieve user and repo ID"):
            raise
    return set(api.list_repo_files(repo_id)) - {".gitattributes"}  # the Hub's first commit


def ours(folder: Path) -> set[str]:
    """The names in the folder's bookkeeping, relative to it."""
    return {p.relative_to(folder / BOOKKEEPING_DIR).as_posix() for p in (folder / BOOKKEEPING_DIR).rglob("*")}


def test_a_native_decode_uploads_as_the_model_alone(native_release, hub, tmp_path: Path) -> None:
    out = tmp_path / "out"
    xorweights.decode(native_release["payload"], base=native_release["base"], out=out)
    model = set(tree(native_release["ft"]))
    assert {p.name for p in out.iterdir()} == {*model, ".cache"}
    assert ours(out) == {STATE_FILE}  # the records are there, out of the upload's sight
    assert uploaded(hub, out, "me/decoded") == model


def test_a_legacy_decode_and_its_payload_upload_as_their_files_alone(hub, tmp_path: Path) -> None:
    base, ft = legacy_folders(tmp_path)
    payload = tmp_path / "payload"
    xorweights.encode(ft, base=base, out=payload, format="oasst")
    # The payload folder keeps its records (a rerun keeps its files) and nothing else of ours.
    assert {p.name for p in payload.iterdir()} == {*tree(ft), ".cache"}
    assert ours(payload) == {STATE_FILE}
    assert uploaded(hub, payload, "me/payload") == set(tree(ft))
    out = tmp_path / "out"
    xorweights.decode(payload, base=base, out=out)
    assert uploaded(hub, out, "me/legacy") == set(tree(ft))
    assert ours(out) == {STATE_FILE}


def test_a_delta_recovery_uploads_without_its_seal(delta_pair, hub, tmp_path: Path) -> None:
    delta, base = delta_pair
    out = tmp_path / "out"
    xorweights.decode(delta, base=base, out=out, recipe="fastchat")
    assert ours(out) == {STATE_FILE, ".xorweights-tensors.seal"}
    files = {n for n in tree(out) if not n.startswith(".")}
    assert "xorweights-tensors.json" in files and any(n.endswith(".safetensors") for n in files)
    assert uploaded(hub, out, "me/recovered") == files
    again = xorweights.decode(delta, base=base, out=out, recipe="fastchat")
    assert all(f.kept for f in again.files)


def test_a_native_payload_folder_holds_only_the_payload(native_release, tmp_path: Path) -> None:
    out = tmp_path / "payload"
    xorweights.encode(native_release["ft"], base=native_release["base"], out=out)
    assert tree(out) == tree(native_release["payload"])
    assert not (out / ".cache").exists()


def test_records_of_an_older_version_at_the_top_are_moved_in(tmp_path: Path) -> None:
    base, ft = legacy_folders(tmp_path)
    payload = tmp_path / "payload"
    xorweights.encode(ft, base=base, out=payload, format="oasst")
    out = tmp_path / "out"
    xorweights.decode(payload, base=base, out=out)
    # As an older version left it: the records at the top, beside the outputs.
    os.replace(out / STATE_PATH, out / STATE_FILE)
    shutil.rmtree(out / ".cache")
    again = xorweights.decode(payload, base=base, out=out)  # no force: the files are known as ours
    assert all(f.kept for f in again.files)
    assert not (out / STATE_FILE).exists() and ours(out) == {STATE_FILE}
    # Without them, the same files are someone else's: the decode refuses to replace them.
    (out / STATE_PATH).unlink()
    with pytest.raises(OutputExistsError):
        xorweights.decode(payload, base=base, out=out)


def test_a_payload_folder_of_an_older_version_resumes(native_release, tmp_path: Path) -> None:
    ft, base = native_release["ft"], native_release["base"]
    out = tmp_path / "payload"
    (out / "tokenizer.model").mkdir(parents=True)  # a folder where a payload file goes
    names = set(tree(native_release["payload"]))
    assert "tokenizer.model" in names
    with pytest.raises(xorweights.XorWeightsError, match="Is a directory"):
        xorweights.encode(ft, base=base, out=out, force=True, jobs=1)  # largest first: one in place
    assert (out / "model.safetensors").is_file()  # moved into place before the failure
    # As an older version left it: the payload folder's records in its staging folder, at the top.
    old = out / STAGING_DIR / ".payload-state"
    old.mkdir(parents=True)
    moved = [n for n in (STATE_FILE, STATE_JOURNAL) if (out / BOOKKEEPING_DIR / n).exists()]
    assert moved
    for n in moved:
        os.replace(out / BOOKKEEPING_DIR / n, old / n)
    shutil.rmtree(out / ".cache")
    (out / "tokenizer.model").rmdir()
    control = tmp_path / "control"  # the same folder without its records: the files are not ours
    shutil.copytree(out, control, ignore=shutil.ignore_patterns(STAGING_DIR), symlinks=True)
    with pytest.raises(OutputExistsError):
        xorweights.encode(ft, base=base, out=control)
    xorweights.encode(ft, base=base, out=out)  # no force: the files in place are known
    assert tree(out) == tree(native_release["payload"]) and not (out / ".cache").exists()


def test_a_link_in_the_way_of_the_records_is_refused(native_release, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".cache").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match=r"\.cache is a link or a file"):
        xorweights.decode(native_release["payload"], base=native_release["base"], out=out)
    assert (out / ".cache").is_symlink() and list(elsewhere.iterdir()) == []
    assert [p.name for p in out.iterdir()] == [".cache"]
