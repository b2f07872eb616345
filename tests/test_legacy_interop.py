"""Interoperability of the legacy format: gzip streams of every RFC 1952 shape read alike by both
backends, `--payload-compression`, and `added_tokens.json` as the published script makes it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import xorweights
from tests import legacy_reference as ref
from tests.conftest import legacy_folders, random_bytes, tree, write_files
from xorweights.checksum_types import MANIFEST_FORMAT
from xorweights.cli import main
from xorweights.formats import gzip_stream as _gzip

BACKENDS = ("zlib", "isal")

# --- gzip streams built by hand (RFC 1952) ------------------------------------------------------


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def member(
    data: bytes,
    *,
    ftext: bool = False,
    fhcrc: bool = False,
    extra: bytes | None = None,
    name: bytes | None = None,
    comment: bytes | None = None,
    reserved: int = 0,
    method: int = 8,
    header_crc_delta: int = 0,
    crc_delta: int = 0,
    size_delta: int = 0,
) -> bytes:
    """One gzip member: header with the flags asked for, raw deflate data, CRC-32 and ISIZE."""
    flags = ftext | fhcrc << 1 | (extra is not None) << 2 | (name is not None) << 3
    flags |= (comment is not None) << 4 | reserved
    header = b"\x1f\x8b" + bytes([method, flags]) + struct.pack("<I", 1_700_000_000) + b"\x02\x03"
    if extra is not None:
        header += struct.pack("<H", len(extra)) + extra
    if name is not None:
        header += name + b"\0"
    if comment is not None:
        header += comment + b"\0"
    if fhcrc:
        header += struct.pack("<H", (zlib.crc32(header) + header_crc_delta) & 0xFFFF)
    trailer = struct.pack(
        "<II", (zlib.crc32(data) + crc_delta) & 0xFFFFFFFF, (len(data) + size_delta) & 0xFFFFFFFF
    )
    return header + deflate(data) + trailer


DATA = random_bytes(70_000, 11) + bytes(50_000) + b"text " * 3000
HALF = len(DATA) // 2
SUBFIELDS = b"AB\x03\x00xyzCD\x00\x00"

#: name: (stream, what it inflates to)
VALID = {
    "no flags": (member(DATA), DATA),
    "FTEXT": (member(DATA, ftext=True), DATA),
    "FHCRC": (member(DATA, fhcrc=True), DATA),
    "FEXTRA": (member(DATA, extra=SUBFIELDS), DATA),
    "FEXTRA empty": (member(DATA, extra=b""), DATA),
    "FEXTRA 65535 bytes": (member(DATA, extra=b"E" * 65535), DATA),
    "FNAME": (member(DATA, name=b"pytorch_model-00001-of-00007.bin"), DATA),
    "FCOMMENT": (member(DATA, comment=b"made by hand"), DATA),
    "FNAME 3 MiB": (member(DATA, name=b"n" * (3 << 20)), DATA),
    "FCOMMENT past 32 MiB": (member(DATA, comment=b"c" * ((32 << 20) + 5)), DATA),
    "every flag": (
        member(DATA, ftext=True, fhcrc=True, extra=SUBFIELDS, name=b"w.bin", comment=b"all"),
        DATA,
    ),
    "two members": (member(DATA[:HALF]) + member(DATA[HALF:]), DATA),
    "members with other flags": (
        member(DATA[:1000], fhcrc=True, name=b"a")
        + member(DATA[1000:HALF], extra=SUBFIELDS, comment=b"b")
        + member(DATA[HALF:], fhcrc=True, extra=b"", name=b"c", comment=b"d"),
        DATA,
    ),
    "empty members around": (member(b"") + member(DATA) + member(b"", fhcrc=True), DATA),
    "many small members": (
        b"".join(member(DATA[i : i + 997], fhcrc=i % 2 == 0) for i in range(0, len(DATA), 997)),
        DATA,
    ),
    "zero padding after members": (member(DATA[:HALF]) + bytes(7) + member(DATA[HALF:]) + bytes(300), DATA),
    "empty data": (member(b""), b""),
}

_GOOD = member(DATA)
#: name: a stream no RFC 1952 reader may accept
INVALID = {
    "wrong header CRC": member(DATA, fhcrc=True, header_crc_delta=1),
    "wrong header CRC, second member": member(DATA[:HALF])
    + member(DATA[HALF:], fhcrc=True, header_crc_delta=1),
    "reserved flag bit": member(DATA, reserved=0x20),
    "reserved flag bit, second member": member(DATA[:HALF]) + member(DATA[HALF:], reserved=0x80),
    "wrong CRC-32": member(DATA, crc_delta=1),
    "wrong ISIZE": member(DATA, size_delta=1),
    "wrong ISIZE, second member": member(DATA[:HALF]) + member(DATA[HALF:], size_delta=-1),
    "method 7, second member": member(DATA[:HALF]) + member(DATA[HALF:], method=7),
    "truncated in FNAME": member(DATA, name=b"abcdef")[:14],
    "truncated in FEXTRA": member(DATA, extra=b"x" * 100)[:50],
    "truncated in the data": _GOOD[: len(_GOOD) // 2],
    "truncated in the trailer": _GOOD[:-3],
    "trailing garbage": _GOOD + b"garbage!",
    "trailing single byte": _GOOD + b"\x1f",
    "corrupt deflate data": _GOOD[:10] + b"\xff" * 64 + _GOOD[74:],
}


def read_all(stream) -> bytes:
    out = bytearray()
    buf = bytearray(100_003)
    with stream:
        while n := stream.readinto(buf):
            out += buf[:n]
    return bytes(out)


def open_stream(path: Path, backend: str) -> bytes:
    stream, compressed = _gzip.open_source(path, detect_gzip=True, backend=backend)
    assert compressed
    return read_all(stream)


@pytest.mark.parametrize("case", VALID, ids=list(VALID))
def test_valid_gzip_streams_inflate_alike_with_both_backends(tmp_path: Path, case: str) -> None:
    stream, expected = VALID[case]
    (tmp_path / "f").write_bytes(stream)
    assert gzip.decompress(stream) == expected  # the standard library agrees on what it means
    for backend in BACKENDS:
        assert open_stream(tmp_path / "f", backend) == expected, backend


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_gzip_streams_are_refused_alike_by_both_backends(tmp_path: Path, case: str) -> None:
    (tmp_path / "f").write_bytes(INVALID[case])
    errors = {}
    for backend in BACKENDS:
        with pytest.raises(_gzip.GZIP_ERRORS) as info:
            open_stream(tmp_path / "f", backend)
        errors[backend] = info.value
    if case != "corrupt deflate data":  # the framing is ours: the same words whichever inflates
        assert str(errors["zlib"]) == str(errors["isal"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_headers_and_members_split_across_reads(backend: str) -> None:
    """Every boundary falls somewhere inside a header, a trailer or deflate data."""
    for case, (stream, expected) in VALID.items():
        if len(stream) < 1 << 20:
            assert b"".join(_gzip.inflate(io.BytesIO(stream), backend, block=7)) == expected, case
    for stream in INVALID.values():
        with pytest.raises(_gzip.GZIP_ERRORS):
            b"".join(_gzip.inflate(io.BytesIO(stream), backend, block=5))


def test_isal_inflates_every_member_zlib_only_what_isal_cannot_read(monkeypatch) -> None:
    """ISA-L reads a member whose header comes in its first bytes, even split across reads; zlib
    takes over only a header longer than those, or reserved flag bits (which ISA-L ignores)."""
    zlib_members = []
    inflate_zlib = _gzip._inflate_zlib

    def counted(src, piece):  # type: ignore[no-untyped-def]
        zlib_members.append(src.consumed)
        return inflate_zlib(src, piece)

    monkeypatch.setattr(_gzip, "_inflate_zlib", counted)
    for case in ("every flag", "members with other flags", "many small members", "FNAME 3 MiB"):
        stream, expected = VALID[case]
        for block in (7, _gzip.BLOCK) if len(stream) < 1 << 20 else (_gzip.BLOCK,):
            assert b"".join(_gzip.inflate(io.BytesIO(stream), "isal", block=block)) == expected
            assert zlib_members == [], (case, block)
    stream, expected = VALID["FCOMMENT past 32 MiB"]
    assert b"".join(_gzip.inflate(io.BytesIO(stream), "isal")) == expected
    assert zlib_members == [0]
    with pytest.raises(gzip.BadGzipFile, match="reserved header flag bits set"):
        b"".join(_gzip.inflate(io.BytesIO(INVALID["reserved flag bit, second member"]), "isal"))
    assert zlib_members == [0, len(member(DATA[:HALF]))]  # the second member only


def xor(a: bytes, b: bytes) -> bytes:
    """The legacy XOR: as long as `a`, `b` zero-padded or truncated."""
    x = np.frombuffer(a, np.uint8)
    y = np.zeros(len(a), np.uint8)
    y[: min(len(a), len(b))] = np.frombuffer(b[: len(a)], np.uint8)
    return np.bitwise_xor(x, y).tobytes()


def model_folders(tmp_path: Path, *, base_tokens: bytes | None = None, tuned_tokens: bytes | None = None):
    """`base/` and `finetuned/` shaped like a legacy release; `base_tokens` gives the base an
    `added_tokens.json`."""
    return legacy_folders(
        tmp_path,
        base_extra={"added_tokens.json": base_tokens} if base_tokens is not None else None,
        **{"added_tokens.json": tuned_tokens or b'{"<pad>": 32000, "<|prompter|>": 32001}\n'},
    )


#: How each payload file of the end-to-end test is framed.
FRAMING = {
    "pytorch_model-00001-of-00002.bin": lambda d: (
        member(d[:1000], fhcrc=True, name=b"x") + member(d[1000:], extra=SUBFIELDS, comment=b"second")
    ),
    "pytorch_model-00002-of-00002.bin": lambda d: member(
        d, ftext=True, fhcrc=True, extra=SUBFIELDS, name=b"w", comment=b"c"
    ),
    "pytorch_model.bin.index.json": lambda d: member(d),
    "config.json": lambda d: member(b"") + member(d, fhcrc=True) + bytes(9),
    "tokenizer.model": lambda d: member(d, name=b"n" * (3 << 20)),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_reads_every_framing_alike(tmp_path: Path, backend: str) -> None:
    base, tuned = model_folders(tmp_path)
    files = {n: frame(xor((tuned / n).read_bytes(), (base / n).read_bytes())) for n, frame in FRAMING.items()}
    payload = write_files(
        tmp_path / "payload", {**files, "added_tokens.json": (tuned / "added_tokens.json").read_bytes()}
    )
    report = xorweights.decode(payload, base=base, out=tmp_path / "out", gzip_backend=backend)
    assert report.gzip_backend == backend
    assert tree(tmp_path / "out") == tree(tuned)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_decode_refuses_invalid_streams_with_a_format_error(tmp_path: Path, case: str, backend: str) -> None:
    base = write_files(tmp_path / "base", {"tokenizer.model": random_bytes(len(DATA), 7)})
    payload = write_files(tmp_path / "payload", {"tokenizer.model": INVALID[case]})
    with pytest.raises(xorweights.FormatError, match="gzip stream is corrupt or truncated") as info:
        xorweights.decode(payload, base=base, out=tmp_path / "out", gzip_backend=backend)
    assert info.value.path == str(payload / "tokenizer.model")
    assert "tokenizer.model" not in tree(tmp_path / "out")


# --- --payload-compression --------------------------------------------------------------------


def magic_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A base, a fine-tuned copy whose XOR with it begins with 1f 8b 08, and the published
    script's plain payload of them."""
    base_model = random_bytes(50_000, 21)
    base, tuned = model_folders(tmp_path)
    (base / "tokenizer.model").write_bytes(base_model)
    (tuned / "tokenizer.model").write_bytes(xor(b"\x1f\x8b\x08" + random_bytes(49_997, 22), base_model))
    payload = tmp_path / "payload"
    ref.xor_dir(str(payload), str(tuned), str(base), decode=False, compress=False)
    assert (payload / "tokenizer.model").read_bytes()[:3] == b"\x1f\x8b\x08"
    return base, tuned, payload


def test_plain_payload_starting_like_gzip_decodes_with_compression_none(tmp_path: Path) -> None:
    base, tuned, payload = magic_pair(tmp_path)
    report = xorweights.decode(payload, base=base, out=tmp_path / "out", payload_compression="none")
    assert tree(tmp_path / "out") == tree(tuned)
    assert not any(f.compressed for f in report.files) and report.gzip_backend is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_failing_on_gzip_magic_suggests_compression_none(tmp_path: Path, backend: str) -> None:
    base, _, payload = magic_pair(tmp_path)
    with pytest.raises(xorweights.FormatError, match='decode with `payload_compression="none"`') as info:
        xorweights.decode(payload, base=base, out=tmp_path / "out", gzip_backend=backend)
    assert info.value.path == str(payload / "tokenizer.model")
    assert "tokenizer.model" not in tree(tmp_path / "out")


def test_compression_gzip_decodes_an_all_gzip_payload(tmp_path: Path) -> None:
    base, tuned = model_folders(tmp_path)
    payload = tmp_path / "payload"
    ref.xor_dir(str(payload), str(tuned), str(base), decode=False, compress=True)
    report = xorweights.decode(payload, base=base, out=tmp_path / "out", payload_compression="gzip")
    assert tree(tmp_path / "out") == tree(tuned)
    assert {f.name for f in report.files if f.compressed} == set(tree(tuned)) - {"added_tokens.json"}


def test_compression_gzip_refuses_a_plain_file_naming_it_before_writing(tmp_path: Path) -> None:
    base, tuned = model_folders(tmp_path)
    payload = tmp_path / "payload"
    ref.xor_dir(str(payload), str(tuned), str(base), decode=False, compress=True)
    ref.xor_uncompressed(str(payload / "config.json"), str(tuned / "config.json"), str(base / "config.json"))
    with pytest.raises(xorweights.FormatError, match=r"config\.json is not gzip") as info:
        xorweights.decode(payload, base=base, out=tmp_path / "out", payload_compression="gzip")
    assert info.value.path == str(payload / "config.json")
    assert not (tmp_path / "out").exists()
    # auto reads the same mixed payload file by file
    xorweights.decode(payload, base=base, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(tuned)


def test_compression_none_reads_gzip_files_as_plain_bytes(tmp_path: Path) -> None:
    base = write_files(tmp_path / "base", {"tokenizer.model": random_bytes(len(DATA), 7)})
    payload = write_files(tmp_path / "payload", {"tokenizer.model": member(DATA)})
    xorweights.decode(payload, base=base, out=tmp_path / "out", payload_compression="none")
    assert tree(tmp_path / "out") == {
        "tokenizer.model": xor(member(DATA), (base / "tokenizer.model").read_bytes())
    }


def test_unknown_payload_compression_is_refused(tmp_path: Path) -> None:
    base, tuned = model_folders(tmp_path)
    with pytest.raises(xorweights.InputError, match="unknown payload compression"):
        xorweights.decode(tuned, base=base, out=tmp_path / "out", payload_compression="zstd")  # type: ignore[arg-type]


def test_compression_gzip_is_refused_for_a_native_payload(tmp_path: Path) -> None:
    payload = write_files(tmp_path / "payload", {"xorweights.json": b"{}"})
    with pytest.raises(xorweights.InputError, match="native payload, never gzip"):
        xorweights.decode(payload, base=tmp_path, out=tmp_path / "out", payload_compression="gzip")


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_payload_compression(tmp_path: Path, capsys) -> None:
    base, tuned, payload = magic_pair(tmp_path)
    args = ("decode", payload, "--base", base, "--quiet")
    code, _, err = run(capsys, *args, "--out", tmp_path / "auto")
    assert code == 2 and "--payload-compression none" in err
    code, _, err = run(capsys, *args, "--out", tmp_path / "none", "--payload-compression", "none")
    assert code == 0, err
    assert tree(tmp_path / "none") == tree(tuned)
    code, _, err = run(capsys, *args, "--out", tmp_path / "gzip", "--payload-compression", "gzip")
    assert code == 2 and "is not gzip" in err


# --- added_tokens.json as the published script makes it ---------------------------------------

BASE_TOKENS = b'{"<pad>": 32000}\n'


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("base_tokens", [None, BASE_TOKENS], ids=["base-without", "base-with"])
def test_published_script_payload_decodes(tmp_path: Path, base_tokens: bytes | None, compress: bool) -> None:
    base, tuned = model_folders(tmp_path, base_tokens=base_tokens)
    payload = tmp_path / "payload"
    failed = ref.xor_dir(str(payload), str(tuned), str(base), decode=False, compress=compress)
    assert failed == ([] if base_tokens else ["added_tokens.json"])
    stored = (payload / "added_tokens.json").read_bytes()
    tokens = (tuned / "added_tokens.json").read_bytes()
    assert (stored == tokens) is (base_tokens is None)  # XOR-ed exactly when the base has the file

    report = xorweights.decode(payload, base=base, out=tmp_path / "out")
    assert tree(tmp_path / "out") == tree(tuned)
    action = {f.name: f.action for f in report.files}["added_tokens.json"]
    assert action == ("xor" if base_tokens else "copy")


def write_manifest(path: Path, tuned: Path, **override: str) -> Path:
    decoded = {n: {"md5": hashlib.md5(b).hexdigest()} for n, b in tree(tuned).items()}
    decoded.update({n: {"md5": d} for n, d in override.items()})
    path.write_text(json.dumps({"format": MANIFEST_FORMAT, "release": "r", "stages": {"decoded": decoded}}))
    return path


@pytest.mark.parametrize("base_tokens", [None, BASE_TOKENS], ids=["base-without", "base-with"])
def test_published_script_payload_decodes_verified(tmp_path: Path, base_tokens: bytes | None) -> None:
    base, tuned = model_folders(tmp_path, base_tokens=base_tokens)
    payload = tmp_path / "payload"
    ref.xor_dir(str(payload), str(tuned), str(base), decode=False)
    checksums = write_manifest(tmp_path / "m.json", tuned)
    report = xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=checksums)
    assert tree(tmp_path / "out") == tree(tuned)
    assert all(f.verified for f in report.files)


@pytest.mark.parametrize("compress", [None, "gzip"], ids=["plain", "gzip"])
@pytest.mark.parametrize("base_tokens", [None, BASE_TOKENS], ids=["base-without", "base-with"])
def test_encode_oasst_writes_what_the_published_script_writes(
    tmp_path: Path, base_tokens: bytes | None, compress: str | None
) -> None:
    base, tuned = model_folders(tmp_path, base_tokens=base_tokens)
    expected = tmp_path / "ref_payload"
    ref.xor_dir(str(expected), str(tuned), str(base), decode=False, compress=compress is not None)
    ours = tmp_path / "ours"
    report = xorweights.encode(
        tuned,
        format="oasst",
        base=base,
        out=ours,
        compress=compress,
        gzip_mtime=ref.FIXED_MTIME,
        with_checksums=True,
    )
    assert tree(ours) == tree(expected)
    assert {f.name: f.action for f in report.files}["added_tokens.json"] == ("xor" if base_tokens else "copy")
    assert report.manifest is not None
    assert ("added_tokens.json" in report.manifest.stage("hf_base")) is (base_tokens is not None)

    back = tmp_path / "ref_decoded"
    ref.xor_dir(str(back), str(ours), str(base), decode=True, compress=compress is not None)
    assert tree(back) == tree(tuned)
    xorweights.decode(ours, base=base, out=tmp_path / "out", checksums=report.manifest)
    assert tree(tmp_path / "out") == tree(tuned)


def test_published_digest_overrules_a_payload_that_parses_as_json(tmp_path: Path) -> None:
    """The XOR-ed file happens to be JSON: the rule alone would take it as stored."""
    tokens = b'{"<pad>": 32000, "<|prompter|>": 32001}\n'
    looks_like_json = b"[" + b" " * (len(tokens) - 2) + b"]"
    base, tuned = model_folders(tmp_path, base_tokens=xor(tokens, looks_like_json), tuned_tokens=tokens)
    payload = tmp_path / "payload"
    ref.xor_dir(str(payload), str(tuned), str(base), decode=False)
    assert (payload / "added_tokens.json").read_bytes() == looks_like_json

    checksums = write_manifest(tmp_path / "m.json", tuned)
    report = xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=checksums)
    assert tree(tmp_path / "out") == tree(tuned)
    assert {f.name: f.action for f in report.files}["added_tokens.json"] == "xor"


def test_published_digest_overrules_a_raw_file_that_is_not_strict_json(tmp_path: Path) -> None:
    """Stored raw (the publisher's base had none) but refused by the strict reader (a duplicate
    key); the user's base has an added_tokens.json: the rule alone would XOR it."""
    tokens = b'{"<pad>": 32000, "<pad>": 32000}\n'
    base, tuned = model_folders(tmp_path, tuned_tokens=tokens)
    payload = tmp_path / "payload"
    ref.xor_dir(str(payload), str(tuned), str(base), decode=False)
    assert (payload / "added_tokens.json").read_bytes() == tokens
    (base / "added_tokens.json").write_bytes(BASE_TOKENS)

    checksums = write_manifest(tmp_path / "m.json", tuned)
    report = xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=checksums)
    assert tree(tmp_path / "out") == tree(tuned)
    assert {f.name: f.action for f in report.files}["added_tokens.json"] == "copy"


@pytest.mark.parametrize("base_tokens", [None, BASE_TOKENS], ids=["base-without", "base-with"])
def test_wrong_published_digest_names_the_rule(tmp_path: Path, capsys, base_tokens: bytes | None) -> None:
    base, tuned = model_folders(tmp_path, base_tokens=base_tokens)
    payload = tmp_path / "payload"
    ref.xor_dir(str(payload), str(tuned), str(base), decode=False)
    checksums = write_manifest(tmp_path / "m.json", tuned, **{"added_tokens.json": "0" * 32})

    with pytest.raises(
        xorweights.ChecksumMismatchError, match="Rule: a payload added_tokens.json that parses"
    ) as info:
        xorweights.decode(payload, base=base, out=tmp_path / "out", checksums=checksums)
    assert info.value.stage == "decoded" and info.value.expected == "0" * 32
    assert info.value.path == str(payload / "added_tokens.json")
    assert (f"XOR-ed with {base / 'added_tokens.json'} gives" in str(info.value)) is (base_tokens is not None)
    assert not (tmp_path / "out").exists()  # refused before anything was written

    code, _, err = run(
        capsys,
        "decode",
        payload,
        "--base",
        base,
        "--out",
        tmp_path / "out",
        "--checksums",
        checksums,
        "--quiet",
    )
    assert code == 1
    assert "added_tokens.json" in err and "Rule:" in err and "as stored gives" in err


# --- the gzip reader's thread: stopped and its file closed, however the reader ends -------------


def _gzip_threads() -> int:
    import threading

    return sum(t.name == "xorweights-gunzip" for t in threading.enumerate())


def _open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def big_gzip(tmp_path: Path) -> Path:
    """A gzip file inflating to far more than the reader keeps ready, so its thread fills the hand-off
    and waits there."""
    path = tmp_path / "big.gz"
    path.write_bytes(gzip.compress(random_bytes(1 << 20, 7) + bytes(48 << 20), compresslevel=1, mtime=0))
    return path


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc/self/fd")
@pytest.mark.parametrize("backend", BACKENDS)
def test_gzip_readers_dropped_unclosed_leave_no_thread_and_no_open_file(big_gzip: Path, backend: str) -> None:
    import gc
    import threading
    import time

    gc.collect()
    threads, fds = threading.active_count(), _open_fds()
    for read in (0, 1, 100_003, 5 << 20):
        for _ in range(3):
            stream, compressed = _gzip.open_source(big_gzip, detect_gzip=True, backend=backend)
            assert compressed
            buf = bytearray(read)
            got = 0
            while got < read:
                got += stream.readinto(memoryview(buf)[got:])
            if read:
                assert _gzip_threads() >= 1  # the thread runs (and soon waits on a full hand-off)
        del stream, buf
        gc.collect()
    deadline = time.monotonic() + 60  # a safety net: the threads go as soon as the readers are collected
    while (threading.active_count() > threads or _gzip_threads()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() == threads and _gzip_threads() == 0
    assert _open_fds() == fds


@pytest.mark.parametrize("backend", BACKENDS)
def test_gzip_reader_close_stops_a_thread_waiting_on_a_full_hand_off(big_gzip: Path, backend: str) -> None:
    import threading
    import time

    threads = threading.active_count()
    stream, _ = _gzip.open_source(big_gzip, detect_gzip=True, backend=backend)
    assert threading.active_count() == threads  # the thread starts with the first read
    assert stream.readinto(bytearray(10)) == 10
    channel = stream._channel  # the hand-off between the thread and the reader
    deadline = time.monotonic() + 60  # a safety net: the thread fills the hand-off in milliseconds
    while len(channel.items) < channel.depth:  # until the thread has filled it and waits there
        assert time.monotonic() < deadline and channel.thread is not None and channel.thread.is_alive()
        time.sleep(0.001)
    assert not channel.done  # it waits, the stream not inflated to its end
    stream.close()
    assert threading.active_count() == threads  # stopped and joined by close
    assert stream.closed
    with pytest.raises(ValueError):
        stream.fileno()
    with pytest.raises(ValueError):
        stream.readinto(bytearray(10))
    stream.close()  # closing again does nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_gzip_reader_never_read_starts_no_thread_and_closes_its_file(big_gzip: Path, backend: str) -> None:
    import threading

    threads = threading.active_count()
    stream, _ = _gzip.open_source(big_gzip, detect_gzip=True, backend=backend)
    with stream:
        assert threading.active_count() == threads
    assert stream.closed and stream.raw.closed
