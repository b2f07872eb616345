"""Every reader of untrusted input answers with a result or a typed error, and keeps no state.

Readers: the native manifest, checksum manifests, md5sum/sha256sum files, model cards, safetensors
headers and torch zip checkpoints. Hostile inputs are built here byte by byte; the property tests
mutate real files with the mutators of tools/fuzz_readers.py.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import json
import os
import pickletools
import resource
import struct
import sys
import time
import warnings
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import write_files
from xorweights import cli
from xorweights.checksums import FileDigest, load_manifest_file, parse_sum_lines, verify
from xorweights.errors import ChecksumMismatchError, FormatError, XorWeightsError
from xorweights.formats.native_manifest import load_manifest
from xorweights.hub import model_card
from xorweights.tensors import torch_zip
from xorweights.tensors.safetensors_header import read_header
from xorweights.tensors.torch_zip import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
#: Seconds after which a reader counts as hung (a bound, not a speed measurement).
HANG = 10.0


def _load_fuzz() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_readers", ROOT / "tools" / "fuzz_readers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()


def _one_line_naming(e: BaseException, path: Path) -> None:
    text = str(e)
    assert "\n" not in text and "\r" not in text, text
    assert str(path) in text or path.name in text, text


# --- JSON readers: the same hostile values in each -----------------------------------------------

_TOKEN = "\x00hostile\x00"


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _json_with(doc: Any, path: tuple[Any, ...], raw: bytes) -> bytes:
    """`doc` as JSON bytes with the value at `path` replaced by `raw`, written as is."""
    doc = copy.deepcopy(doc)
    _get(doc, path[:-1])[path[-1]] = _TOKEN
    return json.dumps(doc, indent=1).encode().replace(json.dumps(_TOKEN).encode(), raw)


def _json_with_duplicate(doc: Any, path: tuple[Any, ...]) -> bytes:
    """`doc` as JSON bytes with the key at `path` written twice (same value)."""
    doc = copy.deepcopy(doc)
    parent = _get(doc, path[:-1])
    parent[_TOKEN] = parent[path[-1]]
    return (
        json.dumps(doc, indent=1).encode().replace(json.dumps(_TOKEN).encode(), json.dumps(path[-1]).encode())
    )


def _card_with(block: bytes) -> bytes:
    card = fuzz.seed_card()
    start = card.index(b"```json\n", card.index(model_card.MARKER.encode())) + len(b"```json\n")
    end = card.index(b"\n```", start)
    return card[:start] + block + card[end:]


def _safetensors_with(header: bytes) -> bytes:
    seed = fuzz.seed_safetensors()
    (n,) = struct.unpack("<Q", seed[:8])
    return struct.pack("<Q", len(header)) + header + seed[8 + n :]


def _checksum_doc() -> tuple[dict[str, Any], tuple[str, str]]:
    doc = json.loads(fuzz.seed_checksum_manifest())
    stage = next(iter(doc["stages"]))
    return doc, (stage, next(iter(doc["stages"][stage])))


def _json_cases() -> dict[str, dict[str, Any]]:
    """Per reader: its valid document, how to pack JSON bytes into a file, and where to aim."""
    doc, (stage, name) = _checksum_doc()
    return {
        "native_manifest": {
            "doc": json.loads(fuzz.seed_native()),
            "pack": lambda b: b,
            "read": load_manifest,
            "file": "xorweights.json",
            "paths": {
                "dtype": ("base_tensors", "model.embed.weight", "dtype"),
                "int": ("files", 1, "size"),
                "str": ("encoder",),
                "unhashable": ("files", 1, "tensors", 0, "base"),
                "top": ("format",),
            },
        },
        "checksum_manifest": {
            "doc": doc,
            "pack": lambda b: b,
            "read": load_manifest_file,
            "file": "release.json",
            "paths": {
                "dtype": ("stages", stage, name, "md5"),
                "int": ("stages", stage, name, "size"),
                "str": ("release",),
                "unhashable": ("stages", stage, name),
                "top": ("format",),
            },
        },
        "model_card": {
            "doc": fuzz.card_manifest().to_json(),
            "pack": _card_with,
            "read": fuzz._read_card,
            "file": "README.md",
            "paths": {
                "dtype": ("stages", "decoded", "a", "md5"),
                "int": ("stages", "decoded", "a", "size"),
                "str": ("release",),
                "unhashable": ("stages", "decoded", "a"),
                "top": ("format",),
            },
        },
        "safetensors": {
            "doc": json.loads(
                fuzz.seed_safetensors()[8 : 8 + struct.unpack("<Q", fuzz.seed_safetensors()[:8])[0]]
            ),
            "pack": _safetensors_with,
            "read": read_header,
            "file": "model.safetensors",
            "paths": {
                "dtype": ("model.norm.weight", "dtype"),
                "int": ("model.norm.weight", "data_offsets", 1),
                "str": ("__metadata__", "format"),
                "unhashable": ("model.norm.weight", "shape"),
                "top": ("__metadata__",),
            },
        },
    }


#: (where, raw JSON text): each one a document every JSON reader must refuse with a FormatError.
HOSTILE_VALUES = {
    "nested_too_deep": ("str", b"[" * 100_000 + b"]" * 100_000),
    "nested_past_the_limit": ("str", b"[" * 1100 + b"]" * 1100),  # past the recursion limit
    "object_as_dtype": ("dtype", b"{}"),
    "array_as_dtype": ("dtype", b"[]"),
    "unhashable_where_a_name_goes": ("unhashable", b'[{"a": 1}]'),
    "escaped_lone_surrogate": ("str", b'"\\ud800"'),
    "raw_lone_surrogate": ("str", b'"\xed\xa0\x80"'),
    "invalid_utf8": ("str", b'"\xff\xfe"'),
    "integer_past_the_digit_limit": ("int", b"9" * 5000),
    "integer_of_41_digits": ("int", b"9" * 41),
    "integer_past_int64": ("int", str(2**64).encode()),
    "infinity": ("int", b"Infinity"),
    "minus_infinity": ("int", b"-Infinity"),
    "nan": ("int", b"NaN"),
    "overflowing_float": ("int", b"1e999"),
    "float_size": ("int", b"4.0"),
    "negative_size": ("int", b"-1"),
    "string_size": ("int", b'"4"'),
    "boolean_size": ("int", b"true"),
}
JSON_READERS = ["native_manifest", "checksum_manifest", "model_card", "safetensors"]


@pytest.mark.parametrize("case", sorted(HOSTILE_VALUES))
@pytest.mark.parametrize("reader", JSON_READERS)
def test_json_readers_refuse_hostile_values(tmp_path: Path, reader: str, case: str) -> None:
    spec = _json_cases()[reader]
    where, raw = HOSTILE_VALUES[case]
    path = tmp_path / spec["file"]
    path.write_bytes(spec["pack"](_json_with(spec["doc"], spec["paths"][where], raw)))
    with pytest.raises(FormatError) as info:
        spec["read"](path)
    _one_line_naming(info.value, path)


@pytest.mark.parametrize("where", ["dtype", "str", "top"])
@pytest.mark.parametrize("reader", JSON_READERS)
def test_json_readers_refuse_duplicate_keys(tmp_path: Path, reader: str, where: str) -> None:
    spec = _json_cases()[reader]
    path = tmp_path / spec["file"]
    path.write_bytes(spec["pack"](_json_with_duplicate(spec["doc"], spec["paths"][where])))
    with pytest.raises(FormatError, match="duplicate key") as info:
        spec["read"](path)
    _one_line_naming(info.value, path)


@pytest.mark.parametrize("reader", JSON_READERS)
def test_json_readers_read_their_valid_input(tmp_path: Path, reader: str) -> None:
    spec = _json_cases()[reader]
    path = tmp_path / spec["file"]
    path.write_bytes(spec["pack"](json.dumps(spec["doc"]).encode()))
    assert spec["read"](path) is not None


def test_safetensors_dtype_object_is_a_format_error_not_a_type_error(tmp_path: Path) -> None:
    header = b'{"t": {"dtype": {}, "shape": [1], "data_offsets": [0, 2]}}'
    path = write_files(tmp_path, {"t.safetensors": struct.pack("<Q", len(header)) + header + b"\0\0"})
    with pytest.raises(FormatError, match="dtype must be a string"):
        read_header(path / "t.safetensors")


def test_native_digest_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    doc = json.loads(fuzz.seed_native())
    doc["files"][0]["sha256"] += "\n"
    (tmp_path / "xorweights.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="sha256"):
        load_manifest(tmp_path)


def test_native_error_messages_stay_on_one_line(tmp_path: Path) -> None:
    doc = json.loads(fuzz.seed_native())
    doc["files"][1]["tensors"][0]["name"] = "two\nlines\x1b[31m" + "x" * 2000
    doc["files"][1]["tensors"][0]["dtype"] = "F99"
    path = tmp_path / "xorweights.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="unknown dtype") as info:
        load_manifest(path)
    _one_line_naming(info.value, path)
    assert len(str(info.value)) < 600


def test_model_card_with_many_unclosed_blocks_is_refused_quickly() -> None:
    text = (model_card.MARKER + "```json\n") * (15 * 1024 * 1024 // (len(model_card.MARKER) + 8))
    start = time.perf_counter()
    with pytest.raises(FormatError, match="not followed by"):
        model_card.parse(text, "README.md")
    assert time.perf_counter() - start < HANG  # a quadratic search took minutes here


# --- md5sum / sha256sum files ----------------------------------------------------------------------

A, B = "0" * 31 + "a", "0" * 31 + "b"


def test_sum_file_listing_a_name_twice_with_different_digests_is_a_mismatch(tmp_path: Path) -> None:
    sums = tmp_path / "SUMS.md5"
    sums.write_text(f"{A}  w.bin\n{A}  other.bin\n{B}  ./w.bin\n")
    with pytest.raises(ChecksumMismatchError, match=r"SUMS.md5:3: 'w.bin' is listed again") as info:
        load_manifest_file(sums)
    assert "line 1" in str(info.value) and A in str(info.value) and B in str(info.value)
    assert (info.value.expected, info.value.actual, info.value.algorithm) == (A, B, "md5")
    _one_line_naming(info.value, sums)


def test_cli_exits_1_on_a_name_listed_with_two_digests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_files(tmp_path / "d", {"w.bin": b"abc"})
    sums = tmp_path / "SUMS.md5"
    sums.write_text(f"{A}  w.bin\n{B}  w.bin\n")
    assert cli.main(["verify", str(folder), "--checksums", str(sums), "--quiet"]) == 1
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "listed again" in error[0]


def test_sum_file_listing_a_name_twice_with_one_digest_is_fine(tmp_path: Path) -> None:
    sums = tmp_path / "SUMS.md5"
    sums.write_text(f"{A}  w.bin\n{A.upper()} *./w.bin\n")
    assert load_manifest_file(sums).unstaged == {"w.bin": FileDigest(md5=A)}


@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\x0b", "\x0c", "\x1b", "\x7f", "\r"])
def test_sum_lines_with_control_characters_are_refused(tmp_path: Path, char: str) -> None:
    sums = tmp_path / "SUMS.md5"
    sums.write_bytes(f"{A}  ok.bin\n{A}  bad{char}name.bin\n".encode())
    with pytest.raises(FormatError, match="SUMS.md5:2: control character") as info:
        load_manifest_file(sums)
    _one_line_naming(info.value, sums)


@pytest.mark.parametrize("raw", [b"\xff", b"\xed\xa0\x80", b"\xc3", b"\x80"])
def test_sum_lines_with_names_that_are_not_utf8_keep_their_bytes(tmp_path: Path, raw: bytes) -> None:
    sums = tmp_path / "SUMS.md5"
    sums.write_bytes(A.encode() + b"  ok.bin\n" + B.encode() + b"  bad" + raw + b".bin\n")
    assert load_manifest_file(sums).unstaged == {
        "ok.bin": FileDigest(md5=A),
        os.fsdecode(b"bad" + raw + b".bin"): FileDigest(md5=B),
    }


def test_a_name_that_is_not_utf8_is_verified_against_the_file_on_disk(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    try:
        (folder / os.fsdecode(b"caf\xe9.bin")).write_bytes(b"abc")
    except (OSError, UnicodeError):
        pytest.skip("the file system refuses names that are not UTF-8")
    sums = tmp_path / "SUMS.md5"
    sums.write_bytes(hashlib.md5(b"abc").hexdigest().encode() + b"  caf\xe9.bin\n")
    report = verify(folder, sums)
    assert report.ok and report.matched == (os.fsdecode(b"caf\xe9.bin"),)


@pytest.mark.parametrize("text", ["\ud800", "\udbff", "\udc00", "\udd00", "\udfff"])
def test_sum_text_with_a_surrogate_that_stands_for_no_byte_is_refused(text: str) -> None:
    with pytest.raises(FormatError, match="surrogate"):
        parse_sum_lines(f"{A}  bad{text}.bin\n", source="SUMS.md5")


def test_escaped_names_and_crlf_are_still_read(tmp_path: Path) -> None:
    sums = tmp_path / "SUMS.md5"
    sums.write_bytes(f"\\{A}  back\\\\slash\r\n{B}  plain\r\n".encode())
    assert set(load_manifest_file(sums).stage("decoded")) == {"back\\slash", "plain"}


def test_escaped_control_characters_in_names_are_refused(tmp_path: Path) -> None:
    sums = tmp_path / "SUMS.md5"
    sums.write_bytes(f"{B}  plain\r\n\\{A}  new\\nline\r\n".encode())
    with pytest.raises(
        FormatError, match="SUMS.md5:2: file name 'new\\\\nline' has control characters"
    ) as info:
        load_manifest_file(sums)
    _one_line_naming(info.value, sums)


# --- torch zip checkpoints: hand-built pickles and archives ----------------------------------------


def _op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _op_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _op_dict(items: dict[str, bytes]) -> bytes:
    return b"}(" + b"".join(_op_str(k) + v for k, v in items.items()) + b"u"


PROTO, BUILD, POP, STOP, NONE, TUPLE2, EMPTY_DICT = b"\x80\x02", b"b", b"0", b".", b"N", b"\x86", b"}"

#: Pickles that try to change an allow-listed object: GLOBAL, a state, BUILD, then an empty dict.
HOSTILE_PICKLES = {
    "build_dict_state_on_a_storage_type": _op_global("torch", "HalfStorage")
    + _op_dict({"dtype": _op_str("F32"), "itemsize": b"K\x04"}),
    "build_slot_state_on_a_storage_type": _op_global("torch", "HalfStorage")
    + NONE
    + _op_dict({"dtype": _op_str("F32"), "itemsize": b"K\x04"})
    + TUPLE2,
    "build_on_rebuild_tensor": _op_global("torch._utils", "_rebuild_tensor_v2")
    + _op_dict({"evil": b"K\x01"}),
    "build_slot_state_on_rebuild_parameter": _op_global("torch._utils", "_rebuild_parameter")
    + NONE
    + _op_dict({"__name__": _op_str("x"), "__defaults__": b")"})
    + TUPLE2,
    "build_on_ordered_dict": _op_global("collections", "OrderedDict") + _op_dict({"x": b"K\x01"}),
}


def _hostile_pickle(body: bytes) -> bytes:
    data = PROTO + body + BUILD + POP + EMPTY_DICT + STOP
    list(pickletools.genops(data))  # well-formed: every opcode parses
    return data


def _zip(records: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are wanted in some tests
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for name, data in records:
                z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "pytorch_model.bin"
    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(3, 2, generator=g).half(), "b": torch.zeros(4), "m": torch.tensor([True])}
    state["row"] = state["w"][1]
    torch.save(state, path)
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE_PICKLES))
def test_a_hostile_pickle_changes_nothing_for_the_next_checkpoint(
    tmp_path: Path, real_checkpoint: Path, case: str
) -> None:
    before = read_checkpoint(real_checkpoint)
    allowed = dict(torch_zip._ALLOWED)
    hostile = tmp_path / "hostile.bin"
    hostile.write_bytes(
        _zip([("archive/data.pkl", _hostile_pickle(HOSTILE_PICKLES[case])), ("archive/version", b"3\n")])
    )
    with pytest.raises(FormatError, match="refused") as info:
        read_checkpoint(hostile)
    _one_line_naming(info.value, hostile)
    after = read_checkpoint(real_checkpoint)
    assert after.tensors == before.tensors and after.storages == before.storages
    assert after.tensors["w"].dtype == "F16" and after.storages[after.tensors["w"].storage].itemsize == 2
    assert dict(torch_zip._ALLOWED) == allowed


@pytest.mark.parametrize(
    "body",
    [
        b"(" + _op_global("collections", "OrderedDict") + b"o0",  # OBJ
        b"(icollections\nOrderedDict\n0",  # INST
        _op_global("collections", "OrderedDict") + b")\x81" + POP,  # NEWOBJ
        b"\x82\x01" + POP,  # EXT1
        b"P0\n" + POP,  # PERSID
    ],
    ids=["OBJ", "INST", "NEWOBJ", "EXT1", "PERSID"],
)
def test_object_building_opcodes_are_refused(tmp_path: Path, body: bytes) -> None:
    data = PROTO + body + EMPTY_DICT + STOP
    list(pickletools.genops(data))
    path = tmp_path / "op.bin"
    path.write_bytes(_zip([("archive/data.pkl", data), ("archive/version", b"3\n")]))
    with pytest.raises(FormatError, match="not allowed in a checkpoint"):
        read_checkpoint(path)


def test_a_memo_index_near_2_to_the_32_costs_nothing(tmp_path: Path) -> None:
    data = PROTO + EMPTY_DICT + b"r" + struct.pack("<I", 0xFFFFFFF0) + STOP  # LONG_BINPUT
    path = tmp_path / "memo.bin"
    path.write_bytes(_zip([("archive/data.pkl", data), ("archive/version", b"3\n")]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert read_checkpoint(path).tensors == {}
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 256 * 1024  # the C unpickler sized its memo to the index: gigabytes


def test_a_module_state_dict_with_its_metadata_is_read(tmp_path: Path) -> None:
    state = torch.nn.Linear(3, 2).state_dict()
    assert hasattr(state, "_metadata")  # pickled with BUILD on the OrderedDict
    torch.save(state, tmp_path / "lin.bin")
    ck = read_checkpoint(tmp_path / "lin.bin")
    assert {n: t.shape for n, t in ck.tensors.items()} == {"weight": (2, 3), "bias": (2,)}


def test_allow_listed_globals_are_fresh_and_read_only() -> None:
    unpickler = torch_zip._Unpickler(b"", "x")
    first, second = unpickler.find_class("torch", "HalfStorage"), unpickler.find_class("torch", "HalfStorage")
    assert first is not second and (first.dtype, first.itemsize) == ("F16", 2)
    for obj in (first, unpickler.find_class("torch._utils", "_rebuild_tensor_v2")):
        assert not hasattr(obj, "__dict__")
        with pytest.raises(AttributeError):
            obj.dtype = "F32"


def _records(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _central(raw: bytes, name: str) -> int:
    """Offset of the central directory entry of record `<stem>/<name>`."""
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        at = z.start_dir
        count = len(z.infolist())
    for _ in range(count):
        n_name, n_extra, n_comment = struct.unpack("<HHH", raw[at + 28 : at + 34])
        if raw[at + 46 : at + 46 + n_name].decode().endswith("/" + name):
            return at
        at += 46 + n_name + n_extra + n_comment
    raise KeyError(name)


def _local(raw: bytes, name: str) -> int:
    (offset,) = struct.unpack("<I", raw[_central(raw, name) + 42 : _central(raw, name) + 46])
    return offset


def _patched(raw: bytes, at: int, fmt: str, value: int) -> bytes:
    return raw[:at] + struct.pack(fmt, value) + raw[at + struct.calcsize(fmt) :]


def _flag(raw: bytes, name: str, bit: int) -> bytes:
    at = _central(raw, name) + 8
    (flags,) = struct.unpack("<H", raw[at : at + 2])
    return _patched(raw, at, "<H", flags | bit)


ZIP_DEFECTS = {
    "encrypted_record": (lambda raw: _flag(raw, "data/0", 0x1), "encrypted"),
    "strongly_encrypted_record": (lambda raw: _flag(raw, "data/1", 0x40), "encrypted"),
    "deflate_method": (
        lambda raw: _patched(
            _patched(raw, _central(raw, "data/0") + 10, "<H", 8),
            _local(raw, "data/0") + 8,
            "<H",
            8,
        ),
        "compressed",
    ),
    "bzip2_method_in_the_central_directory": (
        lambda raw: _patched(raw, _central(raw, "data/1") + 10, "<H", 12),
        "compressed",
    ),
    "second_disk": (lambda raw: _patched(raw, _central(raw, "data/0") + 34, "<H", 1), "another disk"),
    "local_name_differs": (
        lambda raw: _patched(raw, _local(raw, "data/1") + 30 + len("pytorch_model/data/"), "<B", ord("7")),
        "disagrees",
    ),
    "local_method_differs": (
        lambda raw: _patched(raw, _local(raw, "data/0") + 8, "<H", 8),
        "disagrees",
    ),
    "overlapping_records": (
        lambda raw: _patched(
            _patched(raw, _central(raw, "data/0") + 20, "<I", 300),
            _central(raw, "data/0") + 24,
            "<I",
            300,
        ),
        "overlap",
    ),
    "zip64_sizes_without_zip64_extra": (
        lambda raw: _patched(
            _patched(raw, _central(raw, "data/0") + 20, "<I", 0xFFFFFFFF),
            _central(raw, "data/0") + 24,
            "<I",
            0xFFFFFFFF,
        ),
        "past the end|overlap",
    ),
    "record_offset_past_the_records": (
        lambda raw: _patched(raw, _central(raw, "data/1") + 42, "<I", len(raw) - 30),
        "offsets|past|bad local header|truncated",
    ),
    "data_pkl_crc": (lambda raw: _patched(raw, _central(raw, "data.pkl") + 16, "<I", 0), "CRC"),
    "truncated_archive": (lambda raw: raw[: len(raw) // 2], "not a PyTorch zip checkpoint"),
}


@pytest.mark.parametrize("case", sorted(ZIP_DEFECTS))
def test_zip_features_torch_does_not_write_are_refused(
    tmp_path: Path, real_checkpoint: Path, case: str
) -> None:
    patch, message = ZIP_DEFECTS[case]
    path = tmp_path / "c.bin"
    path.write_bytes(patch(real_checkpoint.read_bytes()))
    with pytest.raises(FormatError, match=message) as info:
        read_checkpoint(path)
    _one_line_naming(info.value, path)


def test_torch_writes_data_descriptors_and_zip64_records_which_are_read(real_checkpoint: Path) -> None:
    with zipfile.ZipFile(real_checkpoint) as z:
        assert all(i.flag_bits & 0x8 for i in z.infolist())
    assert b"PK\x06\x06" in real_checkpoint.read_bytes()
    assert set(read_checkpoint(real_checkpoint).tensors) == {"w", "b", "m", "row"}


def test_duplicate_record_names_are_refused(tmp_path: Path, real_checkpoint: Path) -> None:
    records = _records(real_checkpoint)
    path = tmp_path / "dup.bin"
    path.write_bytes(_zip(records + [r for r in records if r[0].endswith("data/0")]))
    with pytest.raises(FormatError, match="appears twice"):
        read_checkpoint(path)


def _tensor_pickle(storage: bytes, key: str, numel: bytes, size: bytes) -> bytes:
    """{"t": _rebuild_tensor_v2(storage, 0, size, (1,), False, OrderedDict())} by hand."""
    pid = b"(" + _op_str("storage") + storage + _op_str(key) + _op_str("cpu") + numel + b"t"
    args = (
        b"("
        + pid
        + b"Q"
        + b"K\x00"
        + size
        + b"K\x01\x85"
        + b"\x89"
        + _op_global("collections", "OrderedDict")
        + b")R"
        + b"tR"
    )
    return (
        PROTO + b"}(" + _op_str("t") + _op_global("torch._utils", "_rebuild_tensor_v2") + args + b"u" + STOP
    )


@pytest.mark.parametrize(
    ("numel", "size", "message"),
    [
        (b"K\x02", b"\x8a\x09" + b"\x00" * 8 + b"\x01\x85", "malformed layout"),  # 2**64 elements
        (b"\x8a\x09" + b"\x00" * 8 + b"\x01", b"K\x02\x85", "persistent id"),  # 2**64 storage elements
        (b"K\x02", b"L" + b"9" * 5000 + b"L\n\x85", "malformed pickle"),  # past the digit limit
        (b"K\x02", b"K\x03\x85", "reaches outside"),
    ],
)
def test_hand_built_tensor_layouts_are_checked(
    tmp_path: Path, numel: bytes, size: bytes, message: str
) -> None:
    pkl = _tensor_pickle(_op_global("torch", "HalfStorage"), "0", numel, size)
    if len(size) < 100:  # pickletools itself stops at the digit limit
        list(pickletools.genops(pkl))
    path = tmp_path / "t.bin"
    path.write_bytes(
        _zip([("archive/data.pkl", pkl), ("archive/data/0", b"\0" * 4), ("archive/version", b"3\n")])
    )
    with pytest.raises(FormatError, match=message):
        read_checkpoint(path)


def test_a_storage_named_with_two_types_is_refused(tmp_path: Path) -> None:
    t = _tensor_pickle(_op_global("torch", "HalfStorage"), "0", b"K\x02", b"K\x02\x85")
    u = _tensor_pickle(_op_global("torch", "FloatStorage"), "0", b"K\x01", b"K\x01\x85")
    pkl = (
        t[:-2]
        + _op_str("u")
        + u[u.index(_op_global("torch._utils", "_rebuild_tensor_v2")) : -2]
        + b"u"
        + STOP
    )
    list(pickletools.genops(pkl))
    path = tmp_path / "t.bin"
    path.write_bytes(
        _zip([("archive/data.pkl", pkl), ("archive/data/0", b"\0" * 4), ("archive/version", b"3\n")])
    )
    with pytest.raises(FormatError, match="two types"):
        read_checkpoint(path)


# --- property: mutated real inputs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """Each reader's valid input on disk, with what reading it gives."""
    folder = tmp_path_factory.mktemp("seeds")
    out = {}
    for name, reader in fuzz.READERS.items():
        (folder / name).mkdir()
        path = folder / name / reader.filename
        path.write_bytes(reader.seed())
        out[name] = (path, reader.read(path))
    return out


@pytest.mark.parametrize("name", sorted(fuzz.READERS))
def test_mutated_inputs_get_a_result_or_a_typed_error(
    tmp_path_factory: pytest.TempPathFactory, seeds: dict[str, tuple[Path, Any]], name: str
) -> None:
    reader = fuzz.READERS[name]
    valid_path, expected = seeds[name]
    valid = valid_path.read_bytes()
    folder = tmp_path_factory.mktemp(f"mut-{name}")
    path = folder / reader.filename

    @settings(
        max_examples=500,
        deadline=None,  # a hung read is caught by run_one(limit=HANG); durations decide nothing
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(st.randoms(use_true_random=False))
    def check(rng: Any) -> None:
        path.write_bytes(fuzz.mutate(reader, valid, rng))
        outcome = fuzz.run_one(reader, path, limit=HANG)
        assert outcome.kind in ("accepted", "typed"), outcome.trace or outcome.kind
        assert outcome.error is None or isinstance(outcome.error, XorWeightsError)
        assert reader.read(valid_path) == expected  # nothing kept from the mutated input

    check()
