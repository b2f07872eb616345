"""The legacy `oasst` format, byte for byte against an independent implementation of the script."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

import xorweights
from tests import legacy_reference as ref
from tests.conftest import random_bytes, tree, write_files
from xorweights._sizing import CHUNK_SIZE


def legacy_payload(tmp_path: Path, base: Path, tuned: Path, *, compress: bool = False) -> Path:
    out = tmp_path / ("ref_payload_gz" if compress else "ref_payload")
    failed = ref.xor_dir(str(out), str(tuned), str(base), decode=False, compress=compress)
    assert failed == ["added_tokens.json"]  # the base has none: the script swallows it, raw copy stays
    return out


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_decode_matches_the_legacy_script(tmp_path: Path, model_pair, compress: bool) -> None:
    base, tuned = model_pair()
    payload = legacy_payload(tmp_path, base, tuned, compress=compress)
    legacy_out = tmp_path / "legacy_out"
    ref.xor_dir(str(legacy_out), str(payload), str(base), decode=True, compress=compress)

    report = xorweights.decode(payload, base=base, out=tmp_path / "out")

    assert tree(tmp_path / "out") == tree(legacy_out) == tree(tuned)
    assert {f.name: f.compressed for f in report.files} == {
        n: compress and n != "added_tokens.json" for n in tree(tuned)
    }
    assert {f.name: f.action for f in report.files}["added_tokens.json"] == "copy"


@pytest.mark.parametrize("compress", [None, "gzip"], ids=["plain", "gzip"])
def test_encode_matches_the_legacy_script(tmp_path: Path, model_pair, compress: str | None) -> None:
    base, tuned = model_pair()
    expected = legacy_payload(tmp_path, base, tuned, compress=compress is not None)
    xorweights.encode(
        tuned, format="oasst", base=base, out=tmp_path / "ours", compress=compress, gzip_mtime=ref.FIXED_MTIME
    )
    assert tree(tmp_path / "ours") == tree(expected)


def test_gzip_is_recognised_by_magic_not_by_name_or_flag(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    payload = legacy_payload(tmp_path, base, tuned, compress=True)
    # Mix: one file plain, the others gzip; decode needs no flag.
    plain_name = "config.json"
    ref.xor_uncompressed(str(payload / plain_name), str(tuned / plain_name), str(base / plain_name))
    report = xorweights.decode(payload, base=base, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(tuned)
    flags = {f.name: f.compressed for f in report.files}
    assert flags[plain_name] is False and flags["tokenizer.model"] is True


@pytest.mark.parametrize(
    ("n_tuned", "n_base"),
    [
        (0, 0),
        (0, 100),
        (100, 0),
        (1, 1),
        (7, 9),
        (9, 7),
        (CHUNK_SIZE, CHUNK_SIZE),
        (CHUNK_SIZE + 3, CHUNK_SIZE - 5),
        (CHUNK_SIZE - 5, 2 * CHUNK_SIZE + 1),
    ],
    ids=lambda v: str(v),
)
def test_round_trip_at_every_size(tmp_path: Path, n_tuned: int, n_base: int) -> None:
    base = write_files(tmp_path / "base", {"w.dat": random_bytes(n_base, 1)})
    tuned = write_files(tmp_path / "tuned", {"w.dat": random_bytes(n_tuned, 2)})
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    assert (tmp_path / "payload" / "w.dat").stat().st_size == n_tuned  # output length = input length
    ref_payload = tmp_path / "ref.bin"
    ref.xor_uncompressed(str(ref_payload), str(tuned / "w.dat"), str(base / "w.dat"))
    assert (tmp_path / "payload" / "w.dat").read_bytes() == ref_payload.read_bytes()
    xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out")
    assert (tmp_path / "out" / "w.dat").read_bytes() == (tuned / "w.dat").read_bytes()


def test_empty_files_round_trip_with_gzip(tmp_path: Path) -> None:
    base = write_files(tmp_path / "base", {"a.dat": b"", "b.dat": b"xyz"})
    tuned = write_files(tmp_path / "tuned", {"a.dat": b"", "b.dat": b""})
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload", compress="gzip")
    assert gzip.decompress((tmp_path / "payload" / "a.dat").read_bytes()) == b""
    xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(tuned)


def test_nested_payload_folder_is_found(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    repo = tmp_path / "oasst-sft-6-llama-30b-xor"
    inner = repo / "oasst-sft-6-llama-30b-xor" / "oasst-sft-6-llama-30b-xor"
    xorweights.encode(tuned, format="oasst", base=base, out=inner)
    (repo / "README.md").write_text("# model card\n")
    (repo / ".gitattributes").write_text("*.bin filter=lfs\n")
    report = xorweights.decode(repo, base=base, out=tmp_path / "out")
    assert report.payload_dir == str(inner)
    assert tree(tmp_path / "out") == tree(tuned)


def test_two_payload_folders_are_ambiguous(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "repo" / "a")
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "repo" / "b")
    with pytest.raises(xorweights.InputError, match="several folders with model files"):
        xorweights.decode(tmp_path / "repo", base=base, out=tmp_path / "out")


def test_added_tokens_json_is_copied_raw_even_if_the_base_has_one(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    assert (tmp_path / "payload" / "added_tokens.json").read_bytes() == (
        tuned / "added_tokens.json"
    ).read_bytes()
    (base / "added_tokens.json").write_bytes(b"{}")
    xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out")
    assert (tmp_path / "out" / "added_tokens.json").read_bytes() == (tuned / "added_tokens.json").read_bytes()


def test_missing_base_files_are_all_named_before_anything_is_written(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    (base / "config.json").unlink()
    (base / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(xorweights.MissingFileError) as info:
        xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out")
    assert "config.json" in str(info.value) and "pytorch_model-00002-of-00002.bin" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert not (tmp_path / "out").exists()


def test_truncated_gzip_payload_is_a_format_error_and_leaves_nothing(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload", compress="gzip")
    victim = tmp_path / "payload" / "pytorch_model-00001-of-00002.bin"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(xorweights.FormatError, match="pytorch_model-00001-of-00002.bin.*gzip"):
        xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out", jobs=1)
    assert "pytorch_model-00001-of-00002.bin" not in tree(tmp_path / "out")
    assert not [n for n in tree(tmp_path / "out") if n.startswith(".")]  # no temporaries left


def test_existing_outputs_are_not_overwritten_without_force(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    out = write_files(tmp_path / "out", {"config.json": b"mine"})
    with pytest.raises(xorweights.OutputExistsError, match="config.json"):
        xorweights.decode(tmp_path / "payload", base=base, out=out)
    assert tree(out) == {"config.json": b"mine"}
    xorweights.decode(tmp_path / "payload", base=base, out=out, force=True)
    assert tree(out) == tree(tuned)


def test_out_may_not_be_an_input_folder(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    with pytest.raises(xorweights.InputError, match="must differ from the base"):
        xorweights.decode(tmp_path / "payload", base=base, out=base, force=True)


def test_plain_payload_that_would_look_like_gzip_is_refused(tmp_path: Path) -> None:
    base = write_files(tmp_path / "base", {"w.dat": b"\x00\x00\x00rest"})
    tuned = write_files(tmp_path / "tuned", {"w.dat": b"\x1f\x8b\x08data"})
    with pytest.raises(xorweights.FormatError, match="encode with `compress='gzip'`"):
        xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    assert tree(tmp_path / "payload") == {}
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload", compress="gzip")
    xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(tuned)


def test_parallel_jobs_give_the_same_bytes(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    for jobs in (1, 2, 4):
        xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / f"out{jobs}", jobs=jobs)
        assert tree(tmp_path / f"out{jobs}") == tree(tuned)


def test_gzip_encode_matches_the_legacy_script_across_a_chunk_boundary(tmp_path: Path) -> None:
    n = CHUNK_SIZE + 3
    # Half-compressible data, so deflate makes real matches across the boundary.
    data = bytes(random_bytes(n // 2, 1)) + bytes(n - n // 2)
    base = write_files(tmp_path / "base", {"w.dat": random_bytes(n - 11, 2)})
    tuned = write_files(tmp_path / "tuned", {"w.dat": data})
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload", compress="gzip")
    (tmp_path / "ref").mkdir()  # the gzip header holds the file's name, so same name here
    ref.xor_encode(str(tmp_path / "ref" / "w.dat"), str(tuned / "w.dat"), str(base / "w.dat"))
    assert (tmp_path / "payload" / "w.dat").read_bytes() == (tmp_path / "ref" / "w.dat").read_bytes()


@pytest.mark.parametrize("backend", ["zlib", "isal"])
def test_gzip_backends_decode_the_same_bytes(tmp_path: Path, model_pair, backend: str) -> None:
    base, tuned = model_pair()
    payload = legacy_payload(tmp_path, base, tuned, compress=True)
    report = xorweights.decode(payload, base=base, out=tmp_path / "out", gzip_backend=backend)
    assert report.gzip_backend == backend
    assert tree(tmp_path / "out") == tree(tuned)
    victim = payload / "tokenizer.model"
    victim.write_bytes(victim.read_bytes()[:-9])  # drop the trailer: truncated stream
    with pytest.raises(xorweights.FormatError, match="tokenizer.model: gzip stream is corrupt or truncated"):
        xorweights.decode(payload, base=base, out=tmp_path / "out2", gzip_backend=backend, jobs=1)
    assert "tokenizer.model" not in tree(tmp_path / "out2")


def test_gzip_backend_auto_prefers_isal_and_env_can_force_zlib(monkeypatch) -> None:
    from xorweights.formats.gzip_stream import gzip_backend

    assert gzip_backend() == "isal"  # installed with the test extra
    monkeypatch.setenv("XORWEIGHTS_GZIP_BACKEND", "zlib")
    assert gzip_backend() == "zlib"
    with pytest.raises(xorweights.InputError, match="unknown gzip backend"):
        gzip_backend("lz4")


def test_plain_payload_reports_no_gzip_backend(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    assert xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out").gzip_backend is None


def test_drop_cache_and_no_fsync_give_the_same_bytes(tmp_path: Path) -> None:
    n = 3 * CHUNK_SIZE + 5
    base = write_files(tmp_path / "base", {"w.dat": random_bytes(n - 100, 1)})
    tuned = write_files(tmp_path / "tuned", {"w.dat": random_bytes(n, 2)})
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "a", drop_cache=True)
    xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "b", fsync=False)
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == tree(tuned)


def _resident_bytes(path: Path) -> int:
    """Bytes of `path` in the page cache, as util-linux fincore reports them."""
    import subprocess

    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[0])


def test_drop_cache_keeps_the_inputs_and_output_out_of_the_page_cache(tmp_path: Path) -> None:
    n = 8 * CHUNK_SIZE
    base = write_files(tmp_path / "base", {"w.dat": random_bytes(n, 1)})
    payload = write_files(tmp_path / "payload", {"w.dat": random_bytes(n, 2)})
    os.sync()  # real inputs are clean; dirty pages cannot be dropped until written back
    for p in (base / "w.dat", payload / "w.dat"):
        assert _resident_bytes(p) > n // 2  # just written: cached
    xorweights.decode(payload, base=base, out=tmp_path / "kept")
    assert _resident_bytes(tmp_path / "kept" / "w.dat") > n // 2  # without the option, cached
    xorweights.decode(payload, base=base, out=tmp_path / "out", drop_cache=True)
    # Only the last window behind the cursor may remain (the writeback window and one chunk each).
    for p in (base / "w.dat", payload / "w.dat", tmp_path / "out" / "w.dat"):
        assert _resident_bytes(p) <= 5 * CHUNK_SIZE, p


def test_gzip_progress_counts_stored_bytes(tmp_path: Path, model_pair) -> None:
    from xorweights.formats.legacy_source import Inflating
    from xorweights.pipeline.job import _stored_progress

    base, tuned = model_pair()
    payload = legacy_payload(tmp_path, base, tuned, compress=True)
    victim = payload / "pytorch_model-00001-of-00002.bin"

    class Bar:
        n = 0

        def update(self, k: int) -> None:
            self.n += k

    bar = Bar()
    stream, compressed = __import__("xorweights.formats.gzip_stream", fromlist=["open_source"]).open_source(
        victim, detect_gzip=True, backend="zlib"
    )
    assert compressed
    with Inflating(stream, None, victim) as stream:
        update = _stored_progress(stream, bar)
        while stream.readinto(bytearray(4096)):
            update(4096)
    assert compressed and bar.n == victim.stat().st_size


@pytest.mark.parametrize("published", ["neither", "as stored"])
def test_raw_rule_readings_are_tried_whole_whatever_the_published_size(
    tmp_path: Path, published: str
) -> None:
    """A gzip-looking `added_tokens.json` under the raw rule: each reading is tried in full (its
    inflate cap is the base's, not the published size), and the digest decides."""
    import hashlib
    import json

    from xorweights.errors import ChecksumMismatchError

    pay, base = write_files(tmp_path / "pay", {}), write_files(tmp_path / "base", {})
    (base / "added_tokens.json").write_bytes(b'{"x": 1}\n')
    stored = gzip.compress(bytes(range(256)) * 4, mtime=0)  # inflates to 1 KiB
    (pay / "added_tokens.json").write_bytes(stored)
    want = b"0123456789" if published == "neither" else stored
    digest = {"sha256": hashlib.sha256(want).hexdigest(), "size": len(want)}
    sums = tmp_path / "sums.json"
    sums.write_text(
        json.dumps(
            {
                "format": "xorweights-checksums/1",
                "release": "r",
                "stages": {"decoded": {"added_tokens.json": digest}},
            }
        )
    )
    if published == "neither":
        with pytest.raises(ChecksumMismatchError, match="no reading of payload file"):
            xorweights.decode(pay, base=base, out=tmp_path / "out", checksums=sums)
        assert not (tmp_path / "out" / "added_tokens.json").exists()
        return
    report = xorweights.decode(pay, base=base, out=tmp_path / "out", checksums=sums)
    assert [(f.action, f.verified) for f in report.files] == [("copy", True)]
    assert (tmp_path / "out" / "added_tokens.json").read_bytes() == stored


def test_an_unmasked_tail_is_in_the_report_and_the_cli_notes_it(tmp_path: Path) -> None:
    """A fine-tuned weight file longer than its base: the legacy format stores the part past the
    base's end as it is. The report names it (the library logs no warning); the CLI prints a note."""
    import subprocess
    import sys

    base = write_files(tmp_path / "base", {"w.bin": random_bytes(5000, 1), "config.json": b"{}"})
    tuned = write_files(tmp_path / "ft", {"w.bin": random_bytes(5300, 2), "config.json": b'{"a": 1}'})
    report = xorweights.encode(tuned, base=base, out=tmp_path / "p", format="oasst")
    assert report.unmasked_tails == (("w.bin", 300),) and report.to_dict()["unmasked_tails"] == [
        ["w.bin", 300]
    ]
    cli = [sys.executable, "-m", "xorweights.cli", "encode", tuned, "--base", base, "--format", "oasst"]
    done = subprocess.run([*map(str, cli), "--out", str(tmp_path / "q")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("note: w.bin: its last 300 B lie past the end of its base file") == 1
