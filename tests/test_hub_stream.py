"""`decode --stream`: payload files read from the test Hub server as they are decoded, never on disk.

The real huggingface_hub client over real HTTP (tests/hubserver.py); nothing is mocked. Each test
checks the outputs byte for byte and that no copy of a streamed payload file exists anywhere under
the test's folder but in the server's own blob store.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import xorweights
from tests import die_after_rename
from tests.conftest import random_bytes, tree, write_files
from tests.hubserver import TOKEN, HubServer
from xorweights import publish
from xorweights.errors import InputError, PayloadMismatchError

pytestmark = pytest.mark.hub


def kw(hub: HubServer, tmp_path: Path, **more: object) -> dict[str, object]:
    return {"endpoint": hub.url, "cache_dir": tmp_path / "hf-cache", "token": TOKEN, "stream": True, **more}


def copies_on_disk(root: Path, payload: Path, *, skip: Path) -> list[Path]:
    """Files under `root` (outside `skip`) holding the bytes of any weight file of `payload`."""
    digests = {
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in payload.iterdir()
        if p.suffix in (".safetensors", ".bin", ".model")
    }
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and skip not in p.parents and hashlib.sha256(p.read_bytes()).hexdigest() in digests
    ]


def publish_legacy(release: dict[str, Path], hub: HubServer, repo: str) -> None:
    publish(release["payload"], repo, checksums=release["manifest"], endpoint=hub.url, token=TOKEN)


def streamed_gets(hub: HubServer, path: str) -> list[dict[str, str]]:
    return hub.requests_for("GET", path)


def test_a_native_payload_streams_byte_exact_with_no_payload_file_on_disk(
    native_release, hub, tmp_path
) -> None:
    publish(native_release["payload"], "org/ft-xor", endpoint=hub.url, token=TOKEN)
    out = tmp_path / "out"
    report = xorweights.decode("org/ft-xor", base=native_release["base"], out=out, **kw(hub, tmp_path))
    assert tree(out) == tree(native_release["ft"]) and all(f.verified for f in report.files)
    assert report.streamed == ("model.safetensors", "tokenizer.model")  # the LFS files; config.json cached
    assert copies_on_disk(tmp_path, native_release["payload"], skip=tmp_path / "hub-server") == []
    cached = {p.name for p in (tmp_path / "hf-cache").rglob("*") if p.is_file() and not p.is_symlink()}
    assert "model.safetensors" not in cached and "tokenizer.model" not in cached
    assert streamed_gets(hub, "model.safetensors")  # read over HTTP, not from a download


def test_a_legacy_gzip_payload_streams_byte_exact(hub, tmp_path) -> None:
    base = write_files(tmp_path / "base", {"w.bin": random_bytes(3_000_000, 1), "config.json": b"{}\n"})
    ft = write_files(tmp_path / "ft", {"w.bin": random_bytes(3_000_000, 2), "config.json": b'{"a": 1}\n'})
    report = xorweights.encode(
        ft, base=base, out=tmp_path / "payload", format="oasst", compress="gzip", with_checksums=True
    )
    assert report.manifest is not None
    (tmp_path / "release.json").write_text(json.dumps(report.manifest.to_json()))
    publish(
        tmp_path / "payload", "org/gz-xor", checksums=tmp_path / "release.json", endpoint=hub.url, token=TOKEN
    )
    out = tmp_path / "out"
    got = xorweights.decode("org/gz-xor", base=base, out=out, **kw(hub, tmp_path))
    assert tree(out) == tree(ft) and all(f.verified for f in got.files)
    assert next(f for f in got.files if f.name == "w.bin").compressed
    assert copies_on_disk(tmp_path, tmp_path / "payload", skip=tmp_path / "hub-server") == [
        tmp_path / "payload" / "w.bin"  # the publisher's own folder, nothing else
    ]


def test_a_dropped_connection_mid_file_resumes_from_the_last_byte(legacy_release, hub, tmp_path) -> None:
    publish_legacy(legacy_release, hub, "org/legacy-xor")
    shard = "payload/pytorch_model-00001-of-00002.bin"
    hub.state.cut_after[shard] = 15_000_000  # the connection drops after 15 MB of 24 MB
    out = tmp_path / "out"
    report = xorweights.decode("org/legacy-xor", base=legacy_release["base"], out=out, **kw(hub, tmp_path))
    assert tree(out) == tree(legacy_release["ft"]) and all(f.verified for f in report.files)
    ranges = [h.get("Range") for h in streamed_gets(hub, shard)]
    assert ranges[-1] == "bytes=15000000-"  # resumed exactly where the received bytes end
    assert all(r is None for r in ranges[:-1])
    assert copies_on_disk(tmp_path, legacy_release["payload"], skip=tmp_path / "hub-server") == []


@pytest.mark.parametrize("which", ["native", "legacy"])
def test_bytes_not_matching_the_listed_sha256_fail_before_commit(
    native_release, legacy_release, hub, tmp_path, which: str
) -> None:
    if which == "native":
        publish(native_release["payload"], "org/x", endpoint=hub.url, token=TOKEN)
        victim, base = "payload/model.safetensors", native_release["base"]
    else:
        publish_legacy(legacy_release, hub, "org/x")
        victim, base = "payload/pytorch_model-00002-of-00002.bin", legacy_release["base"]
    hub.state.tamper("org/x", victim)  # served bytes change; the listing keeps the original sha256
    out = tmp_path / "out"
    with pytest.raises((PayloadMismatchError, xorweights.FormatError)) as e:
        xorweights.decode("org/x", base=base, out=out, **kw(hub, tmp_path, jobs=1))
    assert Path(victim).name in str(e.value)
    if which == "legacy":  # a plain XOR file: only the digest at its end can tell
        assert isinstance(e.value, PayloadMismatchError) and "as received, but the Hub lists" in str(e.value)
    assert Path(victim).name not in tree(out)
    assert not [p for p in out.rglob("*") if p.is_file() and Path(victim).name in p.name]


def test_a_killed_streaming_decode_resumes_keeping_what_it_finished(legacy_release, hub, tmp_path) -> None:
    publish_legacy(legacy_release, hub, "org/legacy-xor")
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home")}
    args = [
        sys.executable,
        "-m",
        "xorweights.cli",
        "decode",
        "org/legacy-xor",
        "--stream",
        "-j",
        "1",
        "-q",
        "--base",
        str(legacy_release["base"]),
        "--out",
        str(tmp_path / "out"),
    ]
    killed = subprocess.run(die_after_rename.command(1, args), env=env, capture_output=True, timeout=300)
    assert killed.returncode == 9
    first = [n for n in tree(tmp_path / "out") if not n.startswith(".")]
    assert len(first) == 1  # one output renamed into place, then the process died
    gets = len([r for r in hub.state.requests if r[0] == "GET" and "/resolve/" in r[1]])
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert tree(tmp_path / "out") == tree(legacy_release["ft"])
    refetched = [r[1] for r in hub.state.requests[:] if r[0] == "GET" and "/resolve/" in r[1]][gets:]
    assert not [p for p in refetched if p.endswith(first[0])]  # the finished one was kept unread
    assert copies_on_disk(tmp_path, legacy_release["payload"], skip=tmp_path / "hub-server") == []


def test_stream_needs_a_repo_id_and_the_network(native_release, hub, tmp_path) -> None:
    with pytest.raises(InputError, match="`stream` applies to a Hub repo id"):
        xorweights.decode(
            native_release["payload"], base=native_release["base"], out=tmp_path / "o", stream=True
        )
    publish(native_release["payload"], "org/ft-xor", endpoint=hub.url, token=TOKEN)
    with pytest.raises(InputError, match="`stream` reads the payload from the Hub"):
        xorweights.decode(
            "org/ft-xor", base=native_release["base"], out=tmp_path / "o", **kw(hub, tmp_path, offline=True)
        )
