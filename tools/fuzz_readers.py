"""Mutation fuzzing of every reader of untrusted input, without hypothesis.

Each reader gets a valid input made with the real tools (the `safetensors` package, `torch.save`,
`NativeManifest.dumps`, a bundled checksum manifest, `format_sum_lines`, `model_card.render`),
mutated at random (bytes, JSON values, pickle opcodes, ZIP header fields, checksum lines) and read
back. Success or an `XorWeightsError` is fine; any other exception, or an input that takes longer
than the limit, is a bug: the first traceback of each distinct one is printed.

Usage:
    python tools/fuzz_readers.py [--inputs N] [--seconds T] [--seed S] [--reader NAME ...] [--save DIR]

`--inputs` and `--seconds` apply to each reader (whichever comes first). Exit code 1 when any
input raised an untyped exception or ran past `--limit` seconds. tests/test_reader_fuzz.py drives
the same mutators through hypothesis.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import pickletools
import random
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from xorweights.checksums import (  # noqa: E402
    ChecksumManifest,
    FileDigest,
    format_sum_lines,
    load_manifest_file,
    manifests_dir,
)
from xorweights.errors import XorWeightsError  # noqa: E402
from xorweights.formats.native_manifest import (  # noqa: E402
    BaseFile,
    BaseTensor,
    FileEntry,
    NativeManifest,
    TensorEntry,
    load_manifest,
)
from xorweights.hub import model_card  # noqa: E402
from xorweights.tensors.safetensors_header import read_header  # noqa: E402
from xorweights.tensors.torch_zip import read_checkpoint  # noqa: E402

logger = logging.getLogger(__name__)

#: Seconds one input may take before it counts as a hang.
LIMIT_SECONDS = 10.0

# --- valid inputs --------------------------------------------------------------------------------


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def seed_safetensors() -> bytes:
    """A real safetensors file (several dtypes, an empty tensor, metadata)."""
    import numpy as np
    from safetensors.numpy import save

    return save(
        {
            "model.embed.weight": np.arange(12, dtype=np.float16).reshape(3, 4),
            "model.norm.weight": np.ones(4, dtype=np.float32),
            "model.mask": np.array([True, False, True]),
            "model.empty": np.zeros((0, 2), dtype=np.int8),
        },
        metadata={"format": "pt"},
    )


def seed_torch() -> bytes:
    """A real `torch.save` zip checkpoint of a module's state dict (its `_metadata` included) with a
    view sharing storage, bf16, bool and int64 tensors."""
    import torch

    g = torch.Generator().manual_seed(0)
    state = torch.nn.Linear(3, 2).half().state_dict()
    state["w"] = torch.randn(4, 3, generator=g).half()
    state["b"] = torch.arange(5, dtype=torch.int64)
    state["m"] = torch.tensor([True, False])
    state["bf"] = torch.randn(3, generator=g).bfloat16()
    state["row"] = state["w"][1]
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def native_manifest() -> NativeManifest:
    """A small native manifest with every method: tensor-xor, file-xor and copy."""
    bases = {
        "model.embed.weight": BaseTensor(
            name="model.embed.weight", dtype="F16", shape=(3, 4), digest=_sha("b1")
        ),
        "model.norm.weight": BaseTensor(name="model.norm.weight", dtype="F32", shape=(4,), digest=_sha("b2")),
    }
    tensors = (
        TensorEntry(
            name="model.embed.weight", dtype="F16", shape=(4, 4), sha256=_sha("t1"), base="model.embed.weight"
        ),
        TensorEntry(
            name="model.norm.weight", dtype="F32", shape=(4,), sha256=_sha("t2"), base="model.norm.weight"
        ),
        TensorEntry(name="model.extra", dtype="BF16", shape=(2, 2), sha256=_sha("t3"), base=None),
    )
    files = (
        FileEntry(
            name="config.json",
            method="copy",
            size=20,
            sha256=_sha("f1"),
            payload_size=20,
            payload_sha256=_sha("f1"),
        ),
        FileEntry(
            name="model.safetensors",
            method="tensor-xor",
            size=200,
            sha256=_sha("f2"),
            payload_size=200,
            payload_sha256=_sha("p2"),
            tensors=tensors,
        ),
        FileEntry(
            name="tokenizer.model",
            method="file-xor",
            size=50,
            sha256=_sha("f3"),
            payload_size=50,
            payload_sha256=_sha("p3"),
            base_file=BaseFile(name="tokenizer.model", size=48, sha256=_sha("b3")),
        ),
    )
    return NativeManifest(encoder="xorweights fuzz", files=files, base_tensors=bases)


def seed_native() -> bytes:
    return native_manifest().dumps()


def seed_checksum_manifest() -> bytes:
    """The smallest bundled release manifest."""
    return min((p.read_bytes() for p in manifests_dir().glob("*.json")), key=len)


def seed_sum_lines() -> bytes:
    """md5sum lines, with an escaped name (a backslash), a `./` name and one in binary mode."""
    names = ["config.json", "model-00001-of-00002.safetensors", "sub/tokenizer.model", "back\\slash.bin"]
    text = format_sum_lines({n: hashlib.md5(n.encode()).hexdigest() for n in names})
    return (text + f"{hashlib.md5(b'x').hexdigest()} *./binary mode.bin\n").encode()


def card_manifest() -> ChecksumManifest:
    decoded = {n: FileDigest(md5=hashlib.md5(n.encode()).hexdigest(), sha256=_sha(n), size=10) for n in "abc"}
    base = {n: FileDigest(md5=hashlib.md5(n.encode()).hexdigest()) for n in "ab"}
    return ChecksumManifest(release="fuzz", stages={"decoded": decoded, "hf_base": base})


def seed_card() -> bytes:
    card = model_card.render(
        "someone/fuzz-xor", card_manifest(), payload_format="oasst", version="0", payload_bytes=1000
    )
    return card.encode()


# --- mutators ------------------------------------------------------------------------------------

#: JSON texts that break readers: wrong types, non-finite and huge numbers, lone surrogates, depth.
HOSTILE_JSON = [
    "{}",
    "[]",
    "null",
    "true",
    "false",
    "-1",
    "0",
    "1.5",
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "-Infinity",
    '"\\ud800"',
    '"a\\udfffb"',
    '""',
    '"' + "a" * 3000 + '"',
    "9" * 5000,
    "9" * 41,
    str(2**64),
    str(2**63),
    "-" + "9" * 30,
    "[" * 3000 + "]" * 3000,
    '{"a":' * 90 + "1" + "}" * 90,
    '"\\u0000"',
    '"x\\ny"',
    '"../../etc/passwd"',
    '"F16"',
    '"\\u001b[31m"',
    '["F16"]',
    "[1, 2]",
    "[-1]",
    "[1e999]",
    '{"": 1}',
    '"' + "0" * 64 + '\\n"',
    '"' + "0" * 32 + '"',
]
INTERESTING_BYTES = [
    b"\x00",
    b"\xff",
    b"\x80",
    b"\xed\xa0\x80",
    b"\xc3",
    b"\x1b",
    b"\r",
    b"\n",
    b"\\",
    b'"',
    b"{",
    b"[",
    b"\t",
    b"\x7f",
    b"9" * 50,
    b"\xef\xbb\xbf",
]
_SENTINEL = "\x00fuzz{}\x00"


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One random byte-level change: flip, overwrite, insert, delete, duplicate or truncate."""
    b = bytearray(data)
    op = rng.randrange(7)
    pos = rng.randrange(len(b) + 1)
    if op == 0 and b:
        b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
    elif op == 1 and b:
        b[min(pos, len(b) - 1)] = rng.randrange(256)
    elif op == 2:
        b[pos:pos] = rng.choice(INTERESTING_BYTES)
    elif op == 3:
        b[pos:pos] = rng.randbytes(rng.randrange(1, 16))
    elif op == 4:
        del b[pos : pos + rng.randrange(1, 64)]
    elif op == 5:
        end = min(len(b), pos + rng.randrange(1, 64))
        b[end:end] = b[pos:end]
    else:
        del b[pos:]
    return bytes(b)


def _nodes(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _nodes(v, (*path, i))


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def mutate_json(text: str, rng: random.Random) -> str:
    """One JSON-level change: a value replaced by a hostile one, a key duplicated, deleted or renamed."""
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    paths = list(_nodes(doc))
    path = rng.choice(paths)
    raw: dict[str, str] = {}

    def token(raw_text: str) -> str:
        key = _SENTINEL.format(len(raw))
        raw[json.dumps(key)] = raw_text
        return key

    op = rng.randrange(5)
    parent = _get(doc, path[:-1]) if path else None
    if op == 0 or not path:
        value = token(rng.choice(HOSTILE_JSON))
        if path:
            parent[path[-1]] = value
        else:
            doc = value
    elif op == 1 and isinstance(parent, dict):  # the same key twice, second value hostile or equal
        dup = token(json.dumps(path[-1]))
        parent[dup] = rng.choice([parent[path[-1]], token(rng.choice(HOSTILE_JSON))])
    elif op == 2:
        del parent[path[-1]]
    elif op == 3 and isinstance(parent, dict):
        parent[token(rng.choice(['"__metadata__"', '"format"', '"size"', '"\\ud800"', '""', '"a"']))] = (
            parent.pop(path[-1])
        )
    else:
        parent[path[-1]] = [parent[path[-1]]] if rng.random() < 0.5 else {"x": parent[path[-1]]}
    out = json.dumps(doc, indent=rng.choice([None, 1]))
    for key, value in raw.items():
        out = out.replace(key, value)
    return out


def _json_or_bytes(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.6:
        return mutate_json(data.decode("utf-8", "surrogatepass"), rng).encode("utf-8", "surrogatepass")
    return mutate_bytes(data, rng)


def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    """Header JSON mutated and repacked, the length prefix or the data section changed, or bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    header, rest = data[8 : 8 + n], data[8 + n :]
    op = rng.randrange(4)
    if op == 0:
        header = mutate_json(header.decode(), rng).encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(header)) + header + rest
    if op == 1:
        n = rng.choice([0, 1, n - 1, n + 1, 2**63, 2**64 - 1, rng.randrange(2**64)])
        return struct.pack("<Q", n) + header + rest
    if op == 2:
        return data[:8] + header + mutate_bytes(rest, rng)
    return mutate_bytes(data, rng)


#: Pickle snippets with no net effect on the stack, spliced between opcodes of a real data.pkl.
_PICKLE_SNIPPETS = [
    b"ctorch\nHalfStorage\n}(X\x05\x00\x00\x00dtypeX\x03\x00\x00\x00F32X\x08\x00\x00\x00itemsizeK\x04ub0",
    b"ctorch\nFloatStorage\nN}(X\x05\x00\x00\x00dtypeX\x03\x00\x00\x00BADu\x86b0",
    b"ctorch._utils\n_rebuild_tensor_v2\n}(X\x04\x00\x00\x00evilK\x01ub0",
    b"ctorch._utils\n_rebuild_parameter\nN}(X\x08\x00\x00\x00__name__X\x01\x00\x00\x00xu\x86b0",
    b"ccollections\nOrderedDict\n}(X\x01\x00\x00\x00xK\x01ub0",
    b"ccollections\nOrderedDict\n)\x81}(X\x01\x00\x00\x00xK\x01ub0",
    b"ccollections\nOrderedDict\n](K\x01K\x02e\x85R0",
    b"cos\nsystem\n0",
    b"cbuiltins\ngetattr\n0",
    b"\x8b\x00\x00\x10\x00" + b"\x7f" * 0x100000 + b"0",
    b"L" + b"9" * 5000 + b"L\n0",
    b"(" * 2000 + b"1" * 2000,
    b"]" * 3000 + b"0" * 3000,
    b"N\x85Q0",
    b"Nr\xf0\xff\xff\xff0",
    b"(ccollections\nOrderedDict\no0",
    b"ccollections\nOrderedDict\n)\x81}b0",
    b"\x82\x01" + b"0",
    b"(X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu\x8a\x09"
    + b"\xff" * 8
    + b"\x7ftQ0",
]


def _splice_pickle(pkl: bytes, rng: random.Random) -> bytes:
    try:
        bounds = [pos for _, _, pos in pickletools.genops(pkl)]
    except Exception:  # noqa: BLE001 (a mutated pickle may not even disassemble)
        bounds = [0]
    at = rng.choice([b for b in bounds if b > 1] or [0])
    if rng.random() < 0.3:
        snippet = (
            b"h" + bytes([rng.randrange(24)]) + rng.choice([b"}b0", b"N}(X\x01\x00\x00\x00aK\x01u\x86b0"])
        )
    else:
        snippet = rng.choice(_PICKLE_SNIPPETS)
    return pkl[:at] + snippet + pkl[at:]


def _rezip(records: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for name, data in records:
                z.writestr(name, data)
    return buf.getvalue()


def _signatures(data: bytes, sig: bytes) -> list[int]:
    out, at = [], data.find(sig)
    while at != -1:
        out.append(at)
        at = data.find(sig, at + 1)
    return out


# Offsets and widths of the fields of a central directory entry and a local header worth changing.
_CENTRAL_FIELDS = [(8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (34, 2), (42, 4)]
_LOCAL_FIELDS = [(6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)]
_EOCD_FIELDS = [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4)]


def _patch_zip_field(data: bytes, rng: random.Random) -> bytes:
    kinds = [(b"PK\x01\x02", _CENTRAL_FIELDS), (b"PK\x03\x04", _LOCAL_FIELDS), (b"PK\x05\x06", _EOCD_FIELDS)]
    sig, fields = rng.choice(kinds)
    places = _signatures(data, sig)
    if not places:
        return mutate_bytes(data, rng)
    at = rng.choice(places)
    offset, width = rng.choice(fields)
    old = int.from_bytes(data[at + offset : at + offset + width], "little")
    top = (1 << (8 * width)) - 1
    new = rng.choice(
        [0, 1, 8, 12, 99, top, old ^ (1 << rng.randrange(8 * width)), (old + rng.randrange(-64, 64)) & top]
    )
    return data[: at + offset] + new.to_bytes(width, "little") + data[at + offset + width :]


def _duplicate_central_entry(data: bytes, rng: random.Random) -> bytes:
    entries = _signatures(data, b"PK\x01\x02")
    eocd = data.rfind(b"PK\x05\x06")
    if not entries or eocd == -1:
        return mutate_bytes(data, rng)
    i = rng.randrange(len(entries))
    start = entries[i]
    end = entries[i + 1] if i + 1 < len(entries) else eocd
    zip64 = data.rfind(b"PK\x06\x06", 0, eocd)
    end = min(end, zip64) if zip64 > start else end
    entry = data[start:end]
    out = bytearray(data[:end] + entry + data[end:])
    eocd += len(entry)
    for off in (8, 10):  # entry counts
        count = int.from_bytes(out[eocd + off : eocd + off + 2], "little")
        out[eocd + off : eocd + off + 2] = min(count + 1, 0xFFFF).to_bytes(2, "little")
    size = int.from_bytes(out[eocd + 12 : eocd + 16], "little")
    out[eocd + 12 : eocd + 16] = min(size + len(entry), 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(out)


def mutate_torch(data: bytes, rng: random.Random) -> bytes:
    """Pickle-level (the archive rebuilt, CRCs valid), ZIP-field-level or byte-level changes."""
    op = rng.randrange(5)
    if op <= 1:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                records = [(i.filename, z.read(i)) for i in z.infolist()]
        except Exception:  # noqa: BLE001 (an earlier mutation broke the archive)
            return mutate_bytes(data, rng)
        i = next((k for k, (n, _) in enumerate(records) if n.endswith("data.pkl")), 0)
        name, pkl = records[i]
        pkl = _splice_pickle(pkl, rng) if op == 0 else mutate_bytes(pkl, rng)
        records[i] = (name, pkl)
        if rng.random() < 0.2:
            records.append(rng.choice(records))  # a duplicated name
        return _rezip(records)
    if op == 2:
        return _patch_zip_field(data, rng)
    if op == 3:
        return _duplicate_central_entry(data, rng)
    return mutate_bytes(data, rng)


def mutate_sum_lines(data: bytes, rng: random.Random) -> bytes:
    """Line-level changes: a name listed twice, control characters, bad UTF-8, escapes, CRLF."""
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    line = lines[i]
    op = rng.randrange(9)
    if op == 0:  # the same name with another digest
        digest, _, rest = line.partition(b" ")
        lines.insert(rng.randrange(len(lines) + 1), (digest[::-1] or b"0" * 32) + b" " + rest)
    elif op == 1:
        lines.insert(rng.randrange(len(lines) + 1), line)
    elif op == 2:
        at = rng.randrange(len(line) + 1)
        lines[i] = line[:at] + bytes([rng.choice([0, 1, 9, 11, 12, 13, 27, 127])]) + line[at:]
    elif op == 3:
        at = rng.randrange(len(line) + 1)
        lines[i] = line[:at] + rng.choice([b"\xff", b"\xed\xa0\x80", b"\xc3", b"\x80abc"]) + line[at:]
    elif op == 4:
        lines[i] = b"\\" + line.replace(b"  ", b"  \\", 1)
    elif op == 5:
        lines = [x + b"\r" for x in lines]
    elif op == 6:
        lines[i] = line.replace(b"  ", b"  ./", 1)
    elif op == 7:
        lines.insert(i, b"0" * 64 + b"  sha.bin")
    else:
        return mutate_bytes(data, rng)
    return b"\n".join(lines)


def mutate_card(data: bytes, rng: random.Random) -> bytes:
    """The card's JSON block mutated, its fences and marker disturbed, or bytes changed."""
    text = data.decode("utf-8", "surrogateescape")
    marker = model_card.MARKER
    op = rng.randrange(6)
    start = text.find("```json\n", text.find(marker))
    end = text.find("\n```", start + 8)
    if op <= 1 and start != -1 and end != -1:
        block = mutate_json(text[start + 8 : end], rng)
        text = text[: start + 8] + block + text[end:]
    elif op == 2:
        text = text.replace("\n```\n", "\n", rng.randrange(1, 4))
    elif op == 3:
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice([marker, marker + "\n```json\n", "\n```", marker * 50]) + text[at:]
    elif op == 4 and start != -1 and end != -1:
        text = text + "\n" + text[text.find(marker) : end + 4]
    else:
        return mutate_bytes(data, rng)
    return text.encode("utf-8", "surrogateescape")


# --- readers -------------------------------------------------------------------------------------


def _read_card(path: Path) -> object:
    return model_card.parse(path.read_bytes().decode("utf-8", "surrogateescape"), str(path))


@dataclass(frozen=True)
class Reader:
    """One reader of untrusted input, a valid input for it, and how to mutate that input."""

    name: str
    filename: str
    seed: Callable[[], bytes]
    mutate: Callable[[bytes, random.Random], bytes]
    read: Callable[[Path], object]


READERS: dict[str, Reader] = {
    r.name: r
    for r in [
        Reader("native_manifest", "xorweights.json", seed_native, _json_or_bytes, load_manifest),
        Reader(
            "checksum_manifest", "release.json", seed_checksum_manifest, _json_or_bytes, load_manifest_file
        ),
        Reader("sum_lines", "SUMS.md5", seed_sum_lines, mutate_sum_lines, load_manifest_file),
        Reader("model_card", "README.md", seed_card, mutate_card, _read_card),
        Reader("safetensors", "model.safetensors", seed_safetensors, mutate_safetensors, read_header),
        Reader("torch_zip", "pytorch_model.bin", seed_torch, mutate_torch, read_checkpoint),
    ]
}


def mutate(reader: Reader, seed: bytes, rng: random.Random, rounds: int | None = None) -> bytes:
    """The seed after 1 to 3 of the reader's mutations (each falls back to byte changes)."""
    data = seed
    for _ in range(rounds or rng.randint(1, 3)):
        try:
            data = reader.mutate(data, rng)
        except (ValueError, IndexError, KeyError, RecursionError, struct.error, zipfile.BadZipFile):
            data = mutate_bytes(data, rng)  # an earlier round broke what this mutator parses
    return data


# --- running -------------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so that no reader's `except Exception` swallows it."""


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` (main thread, POSIX; elsewhere it only times)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise Hang(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    """How one input went: `accepted`, `typed` (an XorWeightsError), `untyped` or `hang`."""

    kind: str
    seconds: float
    error: BaseException | None = None
    trace: str = ""

    @property
    def key(self) -> str:
        """Tells distinct failures apart: exception type and the line that raised it."""
        if self.error is None:
            return ""
        tb = traceback.extract_tb(self.error.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
        return f"{type(self.error).__name__} at {where}"


def run_one(reader: Reader, path: Path, limit: float = LIMIT_SECONDS) -> Outcome:
    """Read `path` with the reader under the watchdog and classify what happened."""
    start = time.perf_counter()
    try:
        with watchdog(limit):
            reader.read(path)
    except XorWeightsError as e:
        return Outcome("typed", time.perf_counter() - start, e)
    except Hang as e:
        return Outcome("hang", time.perf_counter() - start, e, traceback.format_exc())
    except Exception as e:  # noqa: BLE001 (this is what the fuzzer looks for)
        return Outcome("untyped", time.perf_counter() - start, e, traceback.format_exc())
    elapsed = time.perf_counter() - start
    return Outcome("hang" if elapsed > limit else "accepted", elapsed)


@dataclass
class Tally:
    """Counts for one reader, with the first traceback of each distinct failure."""

    inputs: int = 0
    typed: int = 0
    accepted: int = 0
    untyped: int = 0
    hangs: int = 0
    leaks: int = 0
    """Inputs after which the valid input no longer read back the same (state kept between reads)."""
    max_seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def bad(self) -> int:
        return self.untyped + self.hangs + self.leaks

    def add(self, outcome: Outcome) -> None:
        self.inputs += 1
        self.max_seconds = max(self.max_seconds, outcome.seconds)
        if outcome.kind == "typed":
            self.typed += 1
        elif outcome.kind == "accepted":
            self.accepted += 1
        else:
            if outcome.kind == "untyped":
                self.untyped += 1
            else:
                self.hangs += 1
            self.failures.setdefault(outcome.key or outcome.kind, outcome.trace)


def _reading(reader: Reader, path: Path) -> object:
    """What reading `path` gives: the result, or the error's type and message."""
    try:
        return reader.read(path)
    except Exception as e:  # noqa: BLE001 (compared, not handled)
        return f"{type(e).__name__}: {e}"


def fuzz_reader(
    reader: Reader,
    workdir: Path,
    *,
    inputs: int,
    seconds: float,
    seed: int,
    limit: float = LIMIT_SECONDS,
    save: Path | None = None,
) -> Tally:
    """Run one reader on mutated inputs until `inputs` were read or `seconds` passed.

    After each input the valid one is read again and compared with its first reading, so that
    an input which changes how later files are read is caught too.
    """
    rng = random.Random(f"{seed}:{reader.name}")
    valid = reader.seed()
    folder = workdir / reader.name
    (folder / "valid").mkdir(parents=True, exist_ok=True)
    valid_path = folder / "valid" / reader.filename
    valid_path.write_bytes(valid)
    path = folder / reader.filename
    expected = _reading(reader, valid_path)
    tally = Tally()
    deadline = time.monotonic() + seconds
    while tally.inputs < inputs and time.monotonic() < deadline:
        data = mutate(reader, valid, rng)
        path.write_bytes(data)
        outcome = run_one(reader, path, limit)
        tally.add(outcome)
        leaked = _reading(reader, valid_path) != expected
        if leaked:
            tally.leaks += 1
            tally.failures.setdefault("state kept between reads", f"after input {tally.inputs}\n")
        if save is not None and (leaked or outcome.kind in ("untyped", "hang")):
            save.mkdir(parents=True, exist_ok=True)
            (save / f"{reader.name}-{tally.inputs}-{reader.filename}").write_bytes(data)
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs per reader (default 10000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per reader (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--limit", type=float, default=LIMIT_SECONDS, help="seconds one input may take")
    parser.add_argument("--reader", action="append", choices=sorted(READERS), help="only these readers")
    parser.add_argument("--save", type=Path, help="folder to keep the inputs that failed")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)
    columns = ("inputs", "typed", "accepted", "untyped", "hangs", "leaks", "max s")
    print(f"{'reader':<18}" + "".join(f"{c:>9}" for c in columns))
    total = Tally()
    with tempfile.TemporaryDirectory(prefix="xorweights-fuzz-") as tmp:
        for name in args.reader or list(READERS):
            t = fuzz_reader(
                READERS[name],
                Path(tmp),
                inputs=args.inputs,
                seconds=args.seconds,
                seed=args.seed,
                limit=args.limit,
                save=args.save,
            )
            counts = (t.inputs, t.typed, t.accepted, t.untyped, t.hangs, t.leaks)
            print(f"{name:<18}" + "".join(f"{c:>9}" for c in counts) + f"{t.max_seconds:>9.3f}", flush=True)
            for key, trace in t.failures.items():
                print(f"\n--- {name}: {key}\n{trace}", flush=True)
            for attr in ("inputs", "typed", "accepted", "untyped", "hangs", "leaks"):
                setattr(total, attr, getattr(total, attr) + getattr(t, attr))
            total.max_seconds = max(total.max_seconds, t.max_seconds)
    counts = (total.inputs, total.typed, total.accepted, total.untyped, total.hangs, total.leaks)
    print(f"{'total':<18}" + "".join(f"{c:>9}" for c in counts) + f"{total.max_seconds:>9.3f}")
    return 1 if total.bad else 0


if __name__ == "__main__":
    sys.exit(main())
