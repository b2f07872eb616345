"""Manifests, coreutils line files, verification, and checksums fused into decode."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xorweights
from tests.conftest import tree, write_files
from xorweights.checksum_types import MANIFEST_FORMAT
from xorweights.checksums import (
    ChecksumManifest,
    FileDigest,
    format_sum_lines,
    known_releases,
    load_checksums,
    parse_manifest,
    parse_sum_lines,
)

REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "checksums"


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


# --- bundled manifests ---------------------------------------------------------------------------


def test_every_known_release_has_a_manifest() -> None:
    names = {m.release for m in known_releases()}
    assert names == {
        "oasst-sft-6-llama-30b",
        "oasst-sft-7-llama-30b",
        "oasst-rlhf-2-llama-30b-7k-steps",
        "pygmalion-7b",
    }
    for m in known_releases():
        assert m.sources and m.caveats and m.repo_id, m.release


def test_sft6_manifest_carries_the_published_digests() -> None:
    m = load_checksums("oasst-sft-6-llama-30b")
    assert m.stage("hf_base")["pytorch_model.bin.index.json"].md5 == "fecfda4fba7bfd911e187a85db5fa2ef"
    assert m.stage("decoded")["pytorch_model-00007-of-00007.bin"].md5 == "970e99665d66ba3fad6fdf9b4910acc5"
    assert len(m.stage("hf_base")) == 14 and len(m.stage("meta_original")) == 5
    assert "tokenizer.json" not in m.stage("decoded")


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="published reference lists are not beside this checkout")
def test_manifests_equal_the_published_lists() -> None:
    for ref_file in REFERENCE.glob("*.json"):
        ref = json.loads(ref_file.read_text())
        m = load_checksums(ref["release"])
        for stage, files in ref["stages"].items():
            assert {n: d.md5 for n, d in m.stage(stage).items()} == files, (ref_file.name, stage)


@pytest.mark.parametrize(
    "spec",
    [
        "oasst-sft-6-llama-30b",
        "oasst-sft-6-llama-30b-xor",
        "OpenAssistant/oasst-sft-6-llama-30b-xor",
        "OASST-SFT-6-LLAMA-30B",
    ],
)
def test_release_is_found_by_name_or_repo_id(spec: str) -> None:
    assert load_checksums(spec).release == "oasst-sft-6-llama-30b"


def test_unknown_release_lists_the_known_ones() -> None:
    with pytest.raises(xorweights.UnknownReleaseError, match="oasst-sft-6-llama-30b"):
        load_checksums("no-such-release")


def test_stage_not_published_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(xorweights.InputError, match="publishes decoded checksums, but xorweights does not"):
        xorweights.verify(tmp_path, "oasst-sft-7-llama-30b")
    with pytest.raises(xorweights.InputError, match="publishes no meta_original checksums"):
        xorweights.verify(tmp_path, "pygmalion-7b", stage="meta_original")


# --- line files ----------------------------------------------------------------------------------


def test_md5sum_accepts_what_checksum_writes(tmp_path: Path) -> None:
    folder = write_files(tmp_path / "d", {"a.bin": b"abc", "b c.json": b"{}", "w\\x.bin": b"back"})
    write_files(folder / "sub", {"n.txt": b"nested"})
    report = xorweights.checksum(folder, output=folder / "SUMS.md5")
    assert report.entries["a.bin"] == md5(b"abc") and "SUMS.md5" not in report.entries
    run = subprocess.run(["md5sum", "-c", "SUMS.md5"], cwd=folder, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(": OK") == 4
    # and the other way: what md5sum writes, we read
    ours = (folder / "SUMS.md5").read_text()
    theirs = subprocess.run(
        ["md5sum", "a.bin", "b c.json", "w\\x.bin", "sub/n.txt"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert parse_sum_lines(theirs) == parse_sum_lines(ours)
    assert sorted(theirs.splitlines()) == sorted(ours.splitlines())


def test_sha256sum_accepts_what_checksum_writes(tmp_path: Path) -> None:
    folder = write_files(tmp_path / "d", {"a.bin": b"abc"})
    xorweights.checksum(folder, algorithm="sha256", output=tmp_path / "s.sha256")
    run = subprocess.run(["sha256sum", "-c", str(tmp_path / "s.sha256")], cwd=folder, capture_output=True)
    assert run.returncode == 0


def test_line_parser_reads_binary_mode_and_escapes() -> None:
    algo, entries = parse_sum_lines(
        f"{md5(b'1')} *bin mode.bin\n\\{md5(b'2')}  back\\\\slash\n{md5(b'3')}  ./dot.bin\n"
    )
    assert algo == "md5"
    assert entries == {"bin mode.bin": md5(b"1"), "back\\slash": md5(b"2"), "dot.bin": md5(b"3")}


@pytest.mark.parametrize("escaped", ["new\\nline", "carriage\\rreturn", "both\\n\\r"])
def test_line_parser_refuses_names_that_unescape_to_control_characters(escaped: str) -> None:
    """coreutils escapes a newline or carriage return in a name; such a name is refused like any
    other name with control characters (no payload may hold one), on one line naming the line."""
    with pytest.raises(
        xorweights.FormatError, match="SUMS.md5:2: file name .* has control characters"
    ) as info:
        parse_sum_lines(f"{md5(b'1')}  ok.bin\n\\{md5(b'2')}  {escaped}\n", source="SUMS.md5")
    assert "\n" not in str(info.value) and "\r" not in str(info.value)
    assert info.value.path == "SUMS.md5"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nonsense\n", "not a '<digest>  <name>' line"),
        ("abc  x\n", "neither md5 nor sha256"),
        (f"{'0' * 32}  a\n{'0' * 64}  b\n", "mixes md5 and sha256"),
        ("\n", "no checksum lines"),
        (f"{'0' * 32}  ../escape\n", "must stay inside"),
        (f"{'0' * 32}  /etc/passwd\n", "must be relative to its folder"),
    ],
)
def test_line_parser_rejects_bad_input(text: str, message: str) -> None:
    with pytest.raises(xorweights.FormatError, match=message):
        parse_sum_lines(text)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_line_parser_fuzz_raises_only_format_errors(text: str) -> None:
    try:
        parse_sum_lines(text)
    except xorweights.FormatError:
        pass


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=30).filter(
            lambda s: s.strip(" ") == s and "\x00" not in s
        ),
        st.binary(min_size=16, max_size=16),
        min_size=1,
        max_size=8,
    )
)
def test_line_format_round_trips(entries: dict[str, bytes]) -> None:
    digests = {n: d.hex() for n, d in entries.items()}
    try:
        algo, parsed = parse_sum_lines(format_sum_lines(digests))
    except xorweights.FormatError:
        return  # names that cannot stay inside a folder are refused, never mangled
    assert algo == "md5" and parsed == digests


# --- JSON manifests ----------------------------------------------------------------------------


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    m = ChecksumManifest(release="r", stages={"decoded": {"a.bin": FileDigest(md5=md5(b"a"), size=1)}})
    back = parse_manifest(json.loads(json.dumps(m.to_json())), "mem")
    assert back.stage("decoded") == m.stage("decoded") and back.release == "r"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"format": "other"}, "not a checksum manifest"),
        ({"format": MANIFEST_FORMAT}, 'missing "release"'),
        ({"format": MANIFEST_FORMAT, "release": "r", "stages": {"bogus": {}}}, "unknown stage"),
        ({"format": MANIFEST_FORMAT, "release": "r", "stages": {"decoded": {"a": {"md5": "xyz"}}}}, "32 hex"),
        (
            {"format": MANIFEST_FORMAT, "release": "r", "stages": {"decoded": {"a": {}}}},
            "needs md5 or sha256",
        ),
        (
            {"format": MANIFEST_FORMAT, "release": "r", "stages": {"decoded": {"../a": {"md5": "0" * 32}}}},
            "inside",
        ),
        (
            {"format": MANIFEST_FORMAT, "release": "r", "stages": {"decoded": {"C:x": {"md5": "0" * 32}}}},
            "relative to its folder",
        ),
        (
            {"format": MANIFEST_FORMAT, "release": "r", "stages": {"decoded": {"a\nb": {"md5": "0" * 32}}}},
            r"^test.json \[decoded\]: file name 'a\\nb' has control characters$",
        ),
        (
            {
                "format": MANIFEST_FORMAT,
                "release": "r",
                "stages": {"hf_base": {"a\x1b[31m": {"md5": "0" * 32}}},
            },
            r"^test.json \[hf_base\]: file name .* has control characters$",
        ),
        (
            {
                "format": MANIFEST_FORMAT,
                "release": "r",
                "stages": {"decoded": {"a": {"md5": "0" * 32, "size": -1}}},
            },
            "non-negative",
        ),
    ],
)
def test_manifest_parser_rejects_bad_documents(doc: object, message: str) -> None:
    with pytest.raises(xorweights.FormatError, match=message):
        parse_manifest(doc, "test.json")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(
    st.fixed_dictionaries(
        {"format": st.just(MANIFEST_FORMAT), "release": _json},
        optional={
            "stages": st.dictionaries(st.sampled_from(["decoded", "hf_base", "x"]), _json, max_size=3),
            "caveats": _json,
            "sources": _json,
            "needs": _json,
            "raw_files": _json,
            "repo_id": _json,
        },
    )
)
def test_manifest_parser_fuzz_raises_only_format_errors(doc: dict) -> None:
    try:
        parse_manifest(doc, "fuzz.json")
    except xorweights.FormatError:
        pass


def test_bad_json_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(xorweights.FormatError, match="bad.json: invalid JSON"):
        load_checksums(bad)


# --- verify --------------------------------------------------------------------------------------


def test_verify_reads_md5sum_files_and_json_manifests(tmp_path: Path) -> None:
    folder = write_files(tmp_path / "d", {"a.bin": b"abc", "b.bin": b"def", "c.bin": b"extra"})
    lines = tmp_path / "sums.md5"
    lines.write_text(f"{md5(b'abc')}  a.bin\n{md5(b'def')}  b.bin\n")
    manifest = tmp_path / "m.json"
    manifest.write_text(
        json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "release": "t",
                "stages": {
                    "decoded": {
                        "a.bin": {"md5": md5(b"abc"), "sha256": hashlib.sha256(b"abc").hexdigest()},
                        "b.bin": {"md5": md5(b"def"), "size": 3},
                    }
                },
            }
        )
    )
    for source in (lines, manifest):
        r = xorweights.verify(folder, source)
        assert r.ok and r.matched == ("a.bin", "b.bin") and r.extra == ("c.bin",)
    r = xorweights.verify(folder, manifest)
    assert r.digests["a.bin"] == {"md5": md5(b"abc"), "sha256": hashlib.sha256(b"abc").hexdigest()}
    # A line file fits any stage.
    assert xorweights.verify(folder, lines, stage="hf_base").ok


def test_verify_reports_mismatch_and_missing(tmp_path: Path) -> None:
    folder = write_files(tmp_path / "d", {"a.bin": b"abX"})
    sums = tmp_path / "sums.md5"
    sums.write_text(f"{md5(b'abc')}  a.bin\n{md5(b'x')}  gone.bin\n")
    r = xorweights.verify(folder, sums)
    assert not r.ok
    assert [(m.name, m.expected, m.actual) for m in r.mismatches] == [("a.bin", md5(b"abc"), md5(b"abX"))]
    assert r.missing == ("gone.bin",)


# --- decode with checksums -----------------------------------------------------------------------


def _release(tmp_path: Path, model_pair) -> tuple[Path, Path, Path, Path]:
    base, tuned = model_pair()
    rep = xorweights.encode(
        tuned, format="oasst", base=base, out=tmp_path / "payload", with_checksums=True, release="t"
    )
    assert rep.manifest is not None
    m = tmp_path / "t.json"
    m.write_text(json.dumps(rep.manifest.to_json()))
    return base, tuned, tmp_path / "payload", m


def test_encode_manifest_lists_base_and_decoded_digests(tmp_path: Path, model_pair) -> None:
    base, tuned, _, m = _release(tmp_path, model_pair)
    man = load_checksums(m)
    for name, data in tree(tuned).items():
        assert man.stage("decoded")[name].md5 == md5(data)
        assert man.stage("decoded")[name].sha256 == hashlib.sha256(data).hexdigest()
        assert man.stage("decoded")[name].size == len(data)
    assert set(man.stage("hf_base")) == set(tree(tuned)) - {"added_tokens.json"}
    assert man.stage("hf_base")["config.json"].md5 == md5((base / "config.json").read_bytes())


def test_decode_verifies_base_and_output_in_the_same_pass(tmp_path: Path, model_pair) -> None:
    base, tuned, payload, m = _release(tmp_path, model_pair)
    r = xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=m)
    assert tree(tmp_path / "out") == tree(tuned)
    assert all(f.verified for f in r.files)
    assert all(f.base_verified for f in r.files if f.action == "xor")
    assert r.unverified == ()
    assert {f.name: f.digests["md5"] for f in r.files} == {n: md5(b) for n, b in tree(tuned).items()}


def test_base_mismatch_stops_and_names_the_file(tmp_path: Path, model_pair) -> None:
    base, tuned, payload, m = _release(tmp_path, model_pair)
    victim = base / "pytorch_model-00002-of-00002.bin"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1  # past the payload's end: the output would still be right, the base is not
    victim.write_bytes(bytes(data))
    with pytest.raises(xorweights.BaseMismatchError) as info:
        xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=m, jobs=1)
    e = info.value
    assert e.path == str(victim) and e.actual == md5(bytes(data)) and e.expected != e.actual
    assert "pinned conversion" in str(e) and isinstance(e, xorweights.ChecksumMismatchError)
    assert "pytorch_model-00002-of-00002.bin" not in tree(tmp_path / "out")
    assert not [n for n in tree(tmp_path / "out") if n.startswith(".")]


def test_base_size_mismatch_is_caught_before_any_xor(tmp_path: Path, model_pair) -> None:
    base, tuned, payload, m = _release(tmp_path, model_pair)
    (base / "config.json").write_bytes(b"{}")
    with pytest.raises(xorweights.BaseMismatchError, match="bytes, but t hf_base expects"):
        xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=m)
    assert not (tmp_path / "out").exists()


def test_output_mismatch_names_the_file_and_keeps_nothing_under_its_name(tmp_path: Path, model_pair) -> None:
    base, tuned, payload, m = _release(tmp_path, model_pair)
    victim = payload / "pytorch_model-00001-of-00002.bin"
    data = bytearray(victim.read_bytes())
    data[1234] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(xorweights.ChecksumMismatchError) as info:
        xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=m, jobs=1)
    assert info.value.stage == "decoded" and "pytorch_model-00001-of-00002.bin" in str(info.value)
    assert "pytorch_model-00001-of-00002.bin" not in tree(tmp_path / "out")
    assert not [n for n in tree(tmp_path / "out") if n.startswith(".")]


def test_checksums_of_another_release_are_refused_up_front(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()  # two shards; sft-6 lists seven others
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    with pytest.raises(xorweights.InputError, match="wrong release"):
        xorweights.decode(
            tmp_path / "payload", base=base, out=tmp_path / "out", checksums="oasst-sft-6-llama-30b"
        )
    assert not (tmp_path / "out").exists()


def test_decode_with_an_md5sum_file_checks_outputs(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    xorweights.checksum(tuned, output=tmp_path / "decoded.md5")
    r = xorweights.decode(
        tmp_path / "payload", base=base, out=tmp_path / "out", checksums=tmp_path / "decoded.md5"
    )
    assert all(f.verified for f in r.files)


def test_mismatch_stages_are_a_closed_vocabulary() -> None:
    """Every stage an error names is one of `errors.STAGE_NAMES`; the release stages among them."""
    import re

    from xorweights.checksum_types import STAGES
    from xorweights.errors import STAGE_NAMES, ChecksumMismatchError

    assert set(STAGES) <= set(STAGE_NAMES)
    package = Path(xorweights.__file__).parent
    used = {m for p in package.rglob("*.py") for m in re.findall(r'stage="(\w+)"', p.read_text())}
    assert used and used <= set(STAGE_NAMES), used - set(STAGE_NAMES)
    with pytest.raises(ValueError, match="unknown stage 'hfbase'"):
        ChecksumMismatchError("x", stage="hfbase")  # type: ignore[arg-type]
