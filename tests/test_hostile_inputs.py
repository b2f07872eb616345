"""Inputs from strangers: names that climb out of folders, symlinks, gzip bombs, malformed
headers and pickles. Every one is refused with a typed error and bounded memory."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xorweights
from tests.conftest import tree, write_files
from xorweights.checksum_types import MANIFEST_FORMAT
from xorweights.errors import FormatError, InputError, UnsafePathError
from xorweights.hub import parse_repo_spec, validate_revision
from xorweights.outfolder.folder import STATE_FORMAT, STATE_PATH, OutputFolder
from xorweights.outfolder.paths import check_name
from xorweights.tensors.safetensors_header import parse_header, read_header
from xorweights.tensors.torch_zip import read_checkpoint

BAD_NAMES = [
    "../x",
    "a/../../x",
    "/etc/passwd",
    "C:evil",
    "c:\\x",
    "\\\\server\\share",
    "a/./b",
    "",
    ".",
    "..",
    "a//b",
    "x\x00y",
    "tab\tname",
    "a\\..\\b",
    "x" * 300,
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafePathError):
        check_name(name, "test")


@pytest.mark.parametrize("name", BAD_NAMES[:6])
def test_manifest_names_that_escape_are_refused(tmp_path: Path, name: str) -> None:
    m = tmp_path / "m.json"
    m.write_text(
        json.dumps(
            {"format": MANIFEST_FORMAT, "release": "r", "stages": {"decoded": {name: {"md5": "0" * 32}}}}
        )
    )
    with pytest.raises(FormatError):
        xorweights.load_checksums(m)


@pytest.mark.parametrize("name", ["../escape.bin", "/abs.bin", "C:x.bin"])
def test_md5sum_file_names_that_escape_are_refused(tmp_path: Path, name: str) -> None:
    f = tmp_path / "sums.md5"
    f.write_text(f"{'0' * 32}  {name}\n")
    with pytest.raises(FormatError):
        xorweights.verify(tmp_path, f)


def test_state_file_with_hostile_names_is_ignored(tmp_path: Path) -> None:
    state = {
        "format": STATE_FORMAT,
        "files": {
            "../../etc/passwd": {"size": 1, "mtime_ns": 1},
            "ok.bin": {"size": "x"},
            "fine.bin": {"size": 1, "mtime_ns": 2},
        },
    }
    write_files(tmp_path, {STATE_PATH: json.dumps(state).encode()})
    with OutputFolder(tmp_path) as folder:
        assert set(folder.done) == {"fine.bin"}
    write_files(tmp_path, {STATE_PATH: b"\x00garbage"})
    with OutputFolder(tmp_path) as folder:
        assert folder.done == {}


def test_payload_symlink_out_of_the_folder_is_refused(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    secret = write_files(tmp_path / "elsewhere", {"secret": b"do not read"}) / "secret"
    (tmp_path / "payload" / "config.json").unlink()
    (tmp_path / "payload" / "config.json").symlink_to(secret)
    with pytest.raises(UnsafePathError, match="outside"):
        xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_output_symlink_out_of_the_folder_is_refused(tmp_path: Path, model_pair) -> None:
    base, tuned = model_pair()
    xorweights.encode(tuned, format="oasst", base=base, out=tmp_path / "payload")
    target = write_files(tmp_path / "elsewhere", {"precious": b"keep me"}) / "precious"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").symlink_to(target)
    for force in (False, True):
        with pytest.raises(UnsafePathError, match="outside"):
            xorweights.decode(tmp_path / "payload", base=base, out=tmp_path / "out", force=force)
    assert target.read_bytes() == b"keep me"


def test_gzip_bomb_is_stopped_at_the_limit(tmp_path: Path) -> None:
    base = write_files(tmp_path / "base", {"w.bin": b"x" * 1024})
    bomb = gzip.compress(bytes(80 * 1024 * 1024), compresslevel=9)  # 80 KiB that inflate to 80 MiB
    payload = write_files(tmp_path / "payload", {"w.bin": bomb})
    with pytest.raises(FormatError, match="inflates beyond") as info:
        xorweights.decode(payload, base=base, out=tmp_path / "out", gzip_backend="zlib")
    assert info.value.expected == 2 * 1024 + 64 * 1024 * 1024
    assert tree(tmp_path / "out") == {}
    # With a published size the limit is that size.
    m = tmp_path / "m.json"
    m.write_text(
        json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "release": "r",
                "stages": {"decoded": {"w.bin": {"md5": "0" * 32, "size": 1000}}},
            }
        )
    )
    small = write_files(tmp_path / "p2", {"w.bin": gzip.compress(bytes(10 * 1024 * 1024))})
    with pytest.raises(FormatError, match="inflates beyond 1000 bytes"):
        xorweights.decode(small, base=base, out=tmp_path / "out2", checksums=m, gzip_backend="isal")


@pytest.mark.parametrize(
    "spec",
    [
        "OpenAssistant/oasst-sft-6-llama-30b-xor",
        "gpt2",
        "a/b@main",
        "a/b@refs/pr/3",
        "a/b@" + "0" * 40,
        "A.b_c-d/e@v1.0",
    ],
)
def test_good_repo_specs(spec: str) -> None:
    repo, rev = parse_repo_spec(spec)
    assert repo == spec.split("@")[0] and (rev is None) == ("@" not in spec)


@pytest.mark.parametrize(
    "spec",
    [
        "../x",
        "a/b/c",
        "a//b",
        "-a/b",
        "a--b/c",
        "a..b/c",
        "a/b@../x",
        "a/b@-x",
        "a/b@x..y",
        "a/b@/abs",
        "a/b@x.lock",
        "a/b@x y",
        "a/b@",
        "",
        "a/" + "b" * 97,
        "a/b@x\ny",
        "a/b@.hidden",
    ],
)
def test_bad_repo_specs_are_refused(spec: str) -> None:
    with pytest.raises(InputError):
        parse_repo_spec(spec)


@settings(max_examples=400)
@given(st.text(max_size=120))
def test_repo_spec_fuzz(spec: str) -> None:
    try:
        repo, rev = parse_repo_spec(spec)
    except InputError:
        return
    assert ".." not in spec and not repo.startswith("/") and "\x00" not in spec
    if rev is not None:
        assert validate_revision(rev) == rev


# --- safetensors headers -------------------------------------------------------------------------


def _st_file(tmp_path: Path, header: dict | bytes, data: bytes = b"", declared: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = tmp_path / "t.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw) if declared is None else declared) + raw + data)
    return p


def test_real_safetensors_header_is_read(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    tensors = {
        "b": np.arange(6, dtype=np.float16).reshape(2, 3),
        "a": np.ones(4, dtype=np.int8),
        "c": np.zeros((0, 5), dtype=np.float32),
        "m": np.array([True, False]),
    }
    save_file(tensors, str(tmp_path / "r.safetensors"), metadata={"format": "pt"})
    h = read_header(tmp_path / "r.safetensors")
    assert h.metadata == {"format": "pt"} and set(h.tensors) == set(tensors)
    raw = (tmp_path / "r.safetensors").read_bytes()
    for name, t in tensors.items():
        info = h.tensors[name]
        assert info.shape == t.shape and raw[info.begin : info.end] == t.tobytes()


@pytest.mark.parametrize(
    ("header", "data", "declared", "message"),
    [
        (b"{}", b"", 10**12, "beyond the file"),
        (b"{}", b"", 200_000_000, "beyond"),
        (b"{not json", b"", None, "not valid JSON"),
        (b'{"a": 1, "a": 2}', b"", None, "not valid JSON"),
        (b"[]", b"", None, "must be a JSON object"),
        (
            {"t": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}, "__metadata__": {"k": 1}},
            bytes(4),
            None,
            "__metadata__",
        ),
        ({"t": {"dtype": "X9", "shape": [2], "data_offsets": [0, 4]}}, bytes(4), None, "unknown dtype"),
        ({"t": {"dtype": "F16", "shape": [-2], "data_offsets": [0, 4]}}, bytes(4), None, "non-negative"),
        ({"t": {"dtype": "F16", "shape": [2], "data_offsets": [0, 8]}}, bytes(4), None, "outside the data"),
        ({"t": {"dtype": "F16", "shape": [3], "data_offsets": [0, 4]}}, bytes(4), None, "needs 6 bytes"),
        (
            {
                "t": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
                "u": {"dtype": "F16", "shape": [2], "data_offsets": [2, 6]},
            },
            bytes(6),
            None,
            "overlaps",
        ),
        ({"t": {"dtype": "F16", "shape": [2], "data_offsets": [2, 6]}}, bytes(6), None, "gap"),
        ({"t": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}, bytes(9), None, "cover 4 of the 9"),
        ({"t": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4], "x": 1}}, bytes(4), None, "exactly"),
        ({"t": {"dtype": "F16", "shape": [True], "data_offsets": [0, 2]}}, bytes(2), None, "non-negative"),
    ],
)
def test_bad_safetensors_headers_are_refused(
    tmp_path: Path, header, data: bytes, declared, message: str
) -> None:
    with pytest.raises(FormatError, match=message):
        read_header(_st_file(tmp_path, header, data, declared))


def test_short_safetensors_file(tmp_path: Path) -> None:
    (tmp_path / "s.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(FormatError, match="too short"):
        read_header(tmp_path / "s.safetensors")


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**20) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=12,
)
_entry = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F16", "BF16", "F32", "I8", "BOOL", "X"]),
        "shape": st.lists(st.integers(-1, 6), max_size=3),
        "data_offsets": st.lists(st.integers(-2, 80), min_size=2, max_size=2),
    }
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=6), _entry | _json_value, max_size=4), st.integers(0, 100))
def test_safetensors_header_fuzz(doc: dict, data_len: int) -> None:
    header = json.dumps(doc).encode()
    try:
        h = parse_header(header, 8 + len(header) + data_len, "fuzz")
    except FormatError:
        return
    spans = sorted((t.begin, t.end) for t in h.tensors.values())
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_safetensors_raw_bytes_fuzz(blob: bytes) -> None:
    try:
        parse_header(blob, 8 + len(blob), "fuzz")
    except FormatError:
        pass


# --- torch zip checkpoints -----------------------------------------------------------------------


def test_real_torch_checkpoint_is_indexed_and_bytes_match(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    state = {
        "w": torch.randn(4, 6, generator=g).half(),
        "b": torch.arange(5, dtype=torch.int64),
        "m": torch.tensor([True, False, True]),
        "bf": torch.randn(3, generator=g).bfloat16(),
        "f": torch.randn(2, 2, generator=g),
    }
    state["view"] = state["w"][1]  # shares w's storage at an offset
    torch.save(state, tmp_path / "c.bin")
    ck = read_checkpoint(tmp_path / "c.bin")
    raw = (tmp_path / "c.bin").read_bytes()
    for name, t in state.items():
        ref = ck.tensors[name]
        assert ref.shape == tuple(t.shape)
        b, e = ck.byte_range(name)
        assert (
            raw[b:e] == t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else True
        )
    assert ck.tensors["view"].storage == ck.tensors["w"].storage and ck.tensors["view"].offset == 6
    assert {ck.tensors[n].dtype for n in ("w", "b", "m", "bf", "f")} == {"F16", "I64", "BOOL", "BF16", "F32"}


class _Evil:
    def __reduce__(self):
        return (eval, ("open('PWNED','w').write('x')",))


def _zip_with_pickle(path: Path, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/version", "3\n")
    return path


def test_pickle_globals_outside_the_allow_list_are_refused_unrun(tmp_path: Path, chdir_tmp: Path) -> None:
    ck = _zip_with_pickle(tmp_path / "evil.bin", pickle.dumps({"w": _Evil()}, protocol=2))
    with pytest.raises(FormatError, match=r"refusing to load (__builtin__|builtins)\.eval"):
        read_checkpoint(ck)
    assert not (chdir_tmp / "PWNED").exists()
    import os

    ck2 = _zip_with_pickle(tmp_path / "evil2.bin", pickle.dumps(os.system, protocol=2))
    with pytest.raises(FormatError, match=r"refusing to load (posix|os)\.system"):
        read_checkpoint(ck2)


def test_torch_checkpoint_defects(tmp_path: Path) -> None:
    (tmp_path / "not.bin").write_bytes(b"not a zip at all")
    with pytest.raises(FormatError, match="not a PyTorch zip checkpoint"):
        read_checkpoint(tmp_path / "not.bin")
    with pytest.raises(FormatError, match="not a dict of tensors"):
        read_checkpoint(_zip_with_pickle(tmp_path / "list.bin", pickle.dumps([1, 2], protocol=2)))
    with pytest.raises(FormatError, match="is not a tensor"):
        read_checkpoint(_zip_with_pickle(tmp_path / "int.bin", pickle.dumps({"a": 1}, protocol=2)))
    torch.save({"w": torch.zeros(4)}, tmp_path / "c.bin")
    with zipfile.ZipFile(tmp_path / "c.bin") as z, zipfile.ZipFile(tmp_path / "deflated.bin", "w") as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(FormatError, match="compressed"):
        read_checkpoint(tmp_path / "deflated.bin")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_torch_pickle_fuzz(tmp_path: Path, blob: bytes) -> None:
    ck = _zip_with_pickle(tmp_path / "fuzz.bin", blob)
    try:
        read_checkpoint(ck)
    except FormatError:
        pass


_REAL_RECORDS: dict[str, bytes] = {}


def _real_records() -> dict[str, bytes]:
    if not _REAL_RECORDS:
        buf = io.BytesIO()
        torch.save({"w": torch.ones(3, 2).half(), "b": torch.zeros(2)}, buf)
        with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
            _REAL_RECORDS.update({n: z.read(n) for n in z.namelist()})
    return _REAL_RECORDS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_torch_mutated_real_pickle_fuzz(tmp_path: Path, data: st.DataObject) -> None:
    records = dict(_real_records())
    name = next(n for n in records if n.endswith("data.pkl"))
    pkl = bytearray(records[name])
    for _ in range(data.draw(st.integers(1, 4))):
        pkl[data.draw(st.integers(0, len(pkl) - 1))] = data.draw(st.integers(0, 255))
    records[name] = bytes(pkl)
    path = tmp_path / "mut.bin"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for n, b in records.items():
            out.writestr(n, b)
    try:
        read_checkpoint(path)
    except FormatError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(max_size=12), _json_value, max_size=4) | _json_value)
def test_state_file_fuzz(tmp_path: Path, files: object) -> None:
    """Whatever the state file holds, the folder opens; only well-formed, safe entries count."""
    (tmp_path / STATE_PATH).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / STATE_PATH).write_text(json.dumps({"format": STATE_FORMAT, "files": files}))
    with OutputFolder(tmp_path) as folder:
        for name, done in folder.done.items():
            check_name(name, "state")
            assert isinstance(done.size, int) and isinstance(done.mtime_ns, int)
