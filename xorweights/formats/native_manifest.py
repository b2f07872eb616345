"""`xorweights.json`, the manifest of a native payload: what each output file is, how it is made,
and the sha256 of every output file, output tensor and base tensor it depends on.

Validated strictly on reading: every file name goes through `outfolder.paths.check_name`, every digest is 64
hex digits, every size and shape a non-negative integer, and each file's method one of
`tensor-xor`, `file-xor`, `copy`. Version 2 adds `compression` (`delta-frames`) to
tensor-xor files whose payload file holds delta frames. The optional `base_model` names the base
for people (a Hub repo id or a plain name, see `check_base_model`); nothing is proven by it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import _json
from .._display import quoted, shown
from ..checksum_types import BASE_MODEL_RULE, MAX_MANIFEST_BYTES, ChecksumManifest, FileDigest, is_base_model
from ..errors import FormatError, InputError, MissingFileError
from ..outfolder.paths import check_name, read_bounded
from ..tensors.dtypes import DTYPE_SIZES

MANIFEST_NAME = "xorweights.json"
FORMAT = "xorweights"
#: Version 3 is written when a file is compressed (2 was, before plane codings), 1 otherwise
#: (so older readers read it).
READABLE_VERSIONS = (1, 2, 3)
FORMAT_VERSION = 3
#: The digest of base tensors from version 3: only xorweights reads it, and a decode hashes every
#: base byte, so the fastest cryptographic hash (sha256 stays for everything users check).
BASE_DIGEST = "blake3"
#: The one compression a payload file may have (versions 2 and 3): `formats.delta_frames`.
COMPRESSION = "delta-frames"
#: Larger than a checksum file may be: a 65B model lists about 800 tensors per file.
MAX_NATIVE_MANIFEST_BYTES = 4 * MAX_MANIFEST_BYTES
Method = Literal["tensor-xor", "file-xor", "copy"]
_METHODS = ("tensor-xor", "file-xor", "copy")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Sizes and dimensions are int64 wherever they are used.
_MAX_INT = 2**63 - 1
#: A base model name: a Hub repo id (`owner/name`) or a plain name, one line of at most 200 characters.


def check_base_model(name: str) -> str:
    """Return `name` if it is a well-formed base model name.

    Raises:
        `InputError`: naming the value and the rule.
    """
    if not is_base_model(name):
        raise InputError(f"base model name {quoted(name, 60)}: expected {BASE_MODEL_RULE}", path=str(name))
    return name


@dataclass(frozen=True)
class RawNote:
    """Why a fine-tuned tensor or file is in the payload unmasked, and the pattern that allowed it."""

    reason: str
    allowed_by: str


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of an output safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    sha256: str
    """Of the decoded tensor's bytes."""
    base: str | None
    """The base tensor its payload bytes are XOR-ed with; None: stored raw."""
    raw: RawNote | None = None
    """Why a raw tensor is stored raw (None for an XOR-ed one, or in a manifest from before notes)."""


@dataclass(frozen=True)
class BaseTensor:
    """A base tensor as the payload was made against it: its bytes in `dtype` hash to `digest`
    by `algorithm` (sha256 in format versions 1 and 2, blake3 from version 3)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    digest: str
    algorithm: str = "sha256"


@dataclass(frozen=True)
class BaseFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FileEntry:
    """One output file and how it is made from its payload file."""

    name: str
    method: Method
    size: int
    sha256: str
    payload_size: int
    payload_sha256: str
    tensors: tuple[TensorEntry, ...] = ()
    base_file: BaseFile | None = None
    note: str | None = None
    raw: RawNote | None = None
    """Set on a weight file copied whole (no base file), as allowed by an `allow_raw` pattern."""
    compression: str | None = None
    """`delta-frames`: the payload file holds the output as delta frames (`payload_size` and
    `payload_sha256` are the stored file's, `size` and `sha256` the output's)."""


@dataclass(frozen=True)
class NativeManifest:
    """The whole manifest; `files` sorted by name."""

    encoder: str
    files: tuple[FileEntry, ...]
    base_tensors: Mapping[str, BaseTensor]
    format_version: int = 1
    omitted: tuple[str, ...] = field(default=())
    """Files of the fine-tuned folder left out of the payload (duplicate weights in another container)."""
    allow_raw: tuple[str, ...] = field(default=())
    """The `allow_raw` patterns the payload was encoded with."""
    base_model: str | None = None
    """The base it was made against, as the publisher named it (`encode --base-name`)."""

    def file(self, name: str) -> FileEntry:
        return next(f for f in self.files if f.name == name)

    def to_checksums(
        self, release: str, description: str, *, repo_id: str | None = None, path: str | None = None
    ) -> ChecksumManifest:
        """The release's checksums: each output file's sha256 and size as the `decoded` stage."""

        decoded = {f.name: FileDigest(sha256=f.sha256, size=f.size) for f in self.files}
        return ChecksumManifest(
            release=release,
            stages={"decoded": decoded},
            repo_id=repo_id,
            description=description,
            path=path,
            base_model=self.base_model,
        )

    def to_json(self) -> dict[str, Any]:
        def tensor(t: TensorEntry) -> dict[str, Any]:
            return {
                "name": t.name,
                "dtype": t.dtype,
                "shape": list(t.shape),
                "sha256": t.sha256,
                "base": t.base,
                **({"raw": _note_json(t.raw)} if t.raw is not None else {}),
            }

        def entry(f: FileEntry) -> dict[str, Any]:
            d: dict[str, Any] = {
                "name": f.name,
                "method": f.method,
                "size": f.size,
                "sha256": f.sha256,
                "payload_size": f.payload_size,
                "payload_sha256": f.payload_sha256,
            }
            if f.base_file is not None:
                d["base_file"] = {
                    "name": f.base_file.name,
                    "size": f.base_file.size,
                    "sha256": f.base_file.sha256,
                }
            if f.method == "tensor-xor":
                d["tensors"] = [tensor(t) for t in f.tensors]
            if f.note:
                d["note"] = f.note
            if f.raw is not None:
                d["raw"] = _note_json(f.raw)
            if f.compression is not None:
                d["compression"] = f.compression
            return d

        doc: dict[str, Any] = {
            "format": FORMAT,
            "format_version": self.format_version,
            "encoder": self.encoder,
            **({"base_model": self.base_model} if self.base_model is not None else {}),
            "files": [entry(f) for f in self.files],
            "base_tensors": {
                n: {"dtype": b.dtype, "shape": list(b.shape), b.algorithm: b.digest}
                for n, b in sorted(self.base_tensors.items())
            },
        }
        if self.omitted:
            doc["omitted"] = list(self.omitted)
        if self.allow_raw:
            doc["allow_raw"] = list(self.allow_raw)
        return doc

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _note_json(note: RawNote) -> dict[str, str]:
    return {"reason": note.reason, "allowed_by": note.allowed_by}


def is_native(folder: os.PathLike[str] | str) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def load_manifest(path: os.PathLike[str] | str) -> NativeManifest:
    """Read and validate `xorweights.json` (a path to the file or to its folder).

    Raises:
        `MissingFileError`: no manifest there.
        `IOFailure`: it cannot be read.
        `FormatError`: anything malformed (strict JSON, see `_json`), named with the file and the field.
        `UnsafePathError`: a file name `outfolder.paths.check_name` refuses.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        raw = read_bounded(path, MAX_NATIVE_MANIFEST_BYTES, f"an {MANIFEST_NAME}")
    except MissingFileError:
        raise MissingFileError(f"no {MANIFEST_NAME} at {path}", path=path) from None
    return parse_manifest(_json.loads(raw, str(path)), str(path))


class _Fields:
    """Checks of the values of one manifest; each refusal is a one-line `FormatError` naming the file."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, msg: str) -> FormatError:
        msg = shown(msg)  # one line, whatever names hold
        if len(msg) > 500:
            msg = f"{msg[:240]}...{msg[-240:]}"
        return FormatError(f"{self.where}: {msg}", path=self.where)

    def obj(self, v: Any, what: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(f"{what} must be an object")
        return v

    def integer(self, v: Any, what: str) -> int:
        if type(v) is not int or not 0 <= v <= _MAX_INT:
            raise self.fail(f"{what} must be a non-negative integer (int64), got {quoted(v, 40)}")
        return v

    def digest(self, v: Any, what: str) -> str:
        if not isinstance(v, str) or not _SHA256.fullmatch(v):
            kind = "blake3" if what.endswith("blake3") else "sha256"
            raise self.fail(f"{what} must be a {kind} digest (64 lowercase hex digits)")
        return v

    def dtype(self, v: Any, what: str) -> str:
        if not isinstance(v, str) or v not in DTYPE_SIZES:
            raise self.fail(f"{what}: unknown dtype {quoted(v, 40)}")
        return v

    def shape(self, v: Any, what: str) -> tuple[int, ...]:
        if not isinstance(v, list):
            raise self.fail(f"{what} must be a list")
        return tuple(self.integer(d, what) for d in v)

    def text(self, v: Any, what: str) -> str:
        if not isinstance(v, str) or not v:
            raise self.fail(f"{what} must be a non-empty string")
        return v

    def file_name(self, v: Any, what: str) -> str:
        """A file name, by the one set of rules (`outfolder.paths.check_name`, as `UnsafePathError`)."""
        return check_name(v, f"{self.where}: {what}", path=self.where)

    def raw_note(self, v: Any, what: str) -> RawNote | None:
        if v is None:
            return None
        note = self.obj(v, what)
        return RawNote(
            self.text(note.get("reason"), f"{what} reason"),
            self.text(note.get("allowed_by"), f"{what} allowed_by"),
        )


def parse_manifest(doc: Any, where: str) -> NativeManifest:
    """Validate a decoded `xorweights.json` read from `where`.

    Raises:
        `FormatError`: anything malformed, on one line naming `where` and the field.
        `UnsafePathError`: a file name `outfolder.paths.check_name` refuses, named with `where` and the entry.
    """
    c = _Fields(where)
    d = c.obj(doc, "the manifest")
    if d.get("format") != FORMAT:
        raise c.fail(f"not a {FORMAT} manifest (format {d.get('format')!r})")
    version = c.integer(d.get("format_version"), "format_version")
    if version not in READABLE_VERSIONS:
        raise c.fail(
            f"format_version {version} is not supported by this xorweights (it reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade xorweights"
        )
    base_tensors = _base_tensors(c, c.obj(d.get("base_tensors", {}), "base_tensors"), version)
    files = _files(c, d.get("files"), base_tensors)
    for f in files:
        if f.compression is not None and (version < 2 or f.method != "tensor-xor"):
            raise c.fail(f"{f.name}: compression applies to tensor-xor files of format_version 2 or later")
    omitted = d.get("omitted", [])
    if not isinstance(omitted, list):
        raise c.fail("omitted must be a list")
    allow_raw = d.get("allow_raw", [])
    if not isinstance(allow_raw, list):
        raise c.fail("allow_raw must be a list")
    base_model = d.get("base_model")
    if base_model is not None and not is_base_model(base_model):
        raise c.fail(f"base_model {quoted(base_model, 60)}: expected {BASE_MODEL_RULE}")
    return NativeManifest(
        encoder=str(d.get("encoder", "")),
        files=tuple(sorted(files, key=lambda f: f.name)),
        base_tensors=base_tensors,
        format_version=version,
        omitted=tuple(c.file_name(o, f"omitted[{i}]") for i, o in enumerate(omitted)),
        allow_raw=tuple(c.text(p, "an allow_raw pattern") for p in allow_raw),
        base_model=base_model,
    )


def _base_tensors(c: _Fields, doc: dict[str, Any], version: int) -> dict[str, BaseTensor]:
    """Each base tensor's dtype, shape and digest: sha256 (versions 1-2) or blake3 (version 3)."""
    algorithm = BASE_DIGEST if version >= 3 else "sha256"
    return {
        c.text(n, "base tensor name"): BaseTensor(
            n,
            c.dtype(c.obj(b, n).get("dtype"), f"base tensor {n}"),
            c.shape(b.get("shape"), f"base tensor {n} shape"),
            c.digest(b.get(algorithm), f"base tensor {n} {algorithm}"),
            algorithm,
        )
        for n, b in doc.items()
    }


def _files(c: _Fields, doc: Any, base_tensors: Mapping[str, BaseTensor]) -> list[FileEntry]:
    """The `files` entries: plain names (payloads are flat), each once, none the manifest's own."""
    if not isinstance(doc, list) or not doc:
        raise c.fail("files must be a non-empty list")
    files: list[FileEntry] = []
    seen: set[str] = set()
    for i, raw in enumerate(doc):
        f = c.obj(raw, "a files entry")
        name = c.file_name(f.get("name"), f"files[{i}]")
        if "/" in name or "\\" in name:
            raise c.fail(f"file name {name!r} must be a plain name (payloads are flat)")
        if name in seen or name == MANIFEST_NAME:
            raise c.fail(f"file {name!r} is listed twice or shadows the manifest")
        seen.add(name)
        files.append(_file(c, f, name, base_tensors))
    return files


def _file(c: _Fields, f: dict[str, Any], name: str, base_tensors: Mapping[str, BaseTensor]) -> FileEntry:
    method = f.get("method")
    if method not in _METHODS:
        raise c.fail(f"{name}: method must be one of {', '.join(_METHODS)}, got {method!r}")
    tensors = _tensors(c, f.get("tensors"), name, base_tensors) if method == "tensor-xor" else []
    base_file = None
    if method == "file-xor":
        b = c.obj(f.get("base_file"), f"{name}: base_file")
        base_file = BaseFile(
            c.file_name(b.get("name"), f"{name}: base_file"),
            c.integer(b.get("size"), f"{name}: base_file size"),
            c.digest(b.get("sha256"), f"{name}: base_file sha256"),
        )
    note = f.get("note")
    compression = f.get("compression")
    if compression is not None and compression != COMPRESSION:
        raise c.fail(f"{name}: unknown compression {quoted(compression, 40)}; expected {COMPRESSION}")
    return FileEntry(
        name=name,
        method=method,
        size=c.integer(f.get("size"), f"{name}: size"),
        sha256=c.digest(f.get("sha256"), f"{name}: sha256"),
        payload_size=c.integer(f.get("payload_size"), f"{name}: payload_size"),
        payload_sha256=c.digest(f.get("payload_sha256"), f"{name}: payload_sha256"),
        tensors=tuple(tensors),
        base_file=base_file,
        note=note if isinstance(note, str) else None,
        raw=c.raw_note(f.get("raw"), f"{name}: raw"),
        compression=compression,
    )


def _tensors(c: _Fields, doc: Any, name: str, base_tensors: Mapping[str, BaseTensor]) -> list[TensorEntry]:
    """The tensors of a `tensor-xor` file; each `base` must be one of `base_tensors`."""
    if not isinstance(doc, list):
        raise c.fail(f"{name}: tensors must be a list")
    tensors: list[TensorEntry] = []
    for rt in doc:
        t = c.obj(rt, f"{name}: a tensor")
        tname = c.text(t.get("name"), f"{name}: tensor name")
        base = t.get("base")
        if base is not None and (not isinstance(base, str) or base not in base_tensors):
            raise c.fail(f"{name}: tensor {tname} refers to base tensor {base!r}, not in base_tensors")
        tensors.append(
            TensorEntry(
                tname,
                c.dtype(t.get("dtype"), f"{name}: tensor {tname}"),
                c.shape(t.get("shape"), f"{name}: tensor {tname} shape"),
                c.digest(t.get("sha256"), f"{name}: tensor {tname} sha256"),
                base,
                c.raw_note(t.get("raw"), f"{name}: tensor {tname} raw"),
            )
        )
    return tensors
