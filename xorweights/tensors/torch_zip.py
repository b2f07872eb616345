"""Read the tensor index of a PyTorch zip checkpoint (`torch.save`) without torch, and safely.

A checkpoint is an uncompressed ZIP: `<stem>/data.pkl` (a pickle of the state dict), one record
`<stem>/data/<key>` per storage, and `<stem>/version`. The pickle is read with an allow-list:
an OrderedDict or dict of names to tensors built by `torch._utils._rebuild_tensor_v2` over
storages of the standard dtypes. Any other global in the pickle is refused, so nothing from
a checkpoint ever runs. Tensor bytes are then read straight from the ZIP by offset.

Nothing is kept between checkpoints: every object the pickle can reach through the allow-list is
made fresh for it and has no state a pickle could set (`BUILD` on it is refused), so one file can
never change how another is read; opcodes that build other objects are refused outright. The ZIP
is held to what torch writes: every record stored (uncompressed), unencrypted, on one disk, named
once, its local header agreeing with the central directory, and no two records overlapping.
"""

from __future__ import annotations

import binascii
import collections
import io
import logging
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from ..errors import FormatError, IOFailure, MissingFileError
from .dtypes import STORAGE_DTYPES

logger = logging.getLogger(__name__)

#: data.pkl of a state dict is small (names and shapes: about 100 bytes a tensor); a larger one is
#: refused unread.
MAX_PICKLE_BYTES = 16 * 1024 * 1024
#: Sizes, offsets, shapes and strides are int64 in torch; anything larger is refused.
_MAX_INT = 2**63 - 1
_MAX_DIMS = 64
# signature, version, flags, method, time, date, crc, compressed size, size, name length, extra length
_LOCAL_HEADER = struct.Struct("<4sHHHHHLLLHH")
_FLAG_ENCRYPTED = 0x0001
_FLAG_DESCRIPTOR = 0x0008  # sizes follow the data (torch sets it; the central directory has them)
_FLAG_STRONG_ENCRYPTION = 0x0040
_FLAG_UTF8 = 0x0800
_FLAG_MASKED_HEADER = 0x2000
_ZIP64_SIZE = 0xFFFFFFFF


class _ReadOnly:
    """Base of every object a checkpoint's pickle can reach through the allow-list.

    No instance dict, no attribute that can be set, and `BUILD` (`__setstate__`) refused: a pickle
    can use these objects but never change them.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __setstate__(self, state: Any) -> NoReturn:
        raise pickle.UnpicklingError(f"BUILD on {type(self).__name__} is refused (it has no state)")

    def _init(self, **fields: Any) -> None:
        for k, v in fields.items():
            object.__setattr__(self, k, v)


class _StorageType(_ReadOnly):
    """`torch.<X>Storage` as named in a pickle: its dtype and element size."""

    __slots__ = ("dtype", "itemsize")
    dtype: str
    itemsize: int

    def __init__(self, dtype: str, itemsize: int) -> None:
        self._init(dtype=dtype, itemsize=itemsize)


class _StorageRef(_ReadOnly):
    """A storage a tensor lives in: the record key, its element type and its length."""

    __slots__ = ("key", "dtype", "itemsize", "numel")
    key: str
    dtype: str
    itemsize: int
    numel: int

    def __init__(self, key: str, dtype: str, itemsize: int, numel: int) -> None:
        self._init(key=key, dtype=dtype, itemsize=itemsize, numel=numel)


class _TensorArgs(_ReadOnly):
    """What `_rebuild_tensor_v2` was called with (checked once the whole pickle is read)."""

    __slots__ = ("storage", "offset", "size", "stride")
    storage: Any
    offset: Any
    size: Any
    stride: Any

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        self._init(storage=storage, offset=offset, size=size, stride=stride)


class _RebuildTensor(_ReadOnly):
    """`torch._utils._rebuild_tensor_v2`: records its arguments."""

    __slots__ = ()

    def __call__(self, storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> _TensorArgs:
        return _TensorArgs(storage, offset, size, stride)


class _RebuildParameter(_ReadOnly):
    """`torch._utils._rebuild_parameter`: a parameter is its data."""

    __slots__ = ()

    def __call__(self, data: Any, *_rest: Any) -> Any:
        return data


class _OrderedDict(_ReadOnly):
    """`collections.OrderedDict`: a fresh empty one (torch pickles it as `OrderedDict()` + SETITEMS)."""

    __slots__ = ()

    def __call__(self, *args: Any) -> collections.OrderedDict[Any, Any]:
        if args:
            raise pickle.UnpicklingError("OrderedDict is only built empty in a checkpoint")
        return collections.OrderedDict()


#: Globals a checkpoint's pickle may name, each a factory of a fresh read-only object.
_ALLOWED: Mapping[tuple[str, str], Callable[[], _ReadOnly]] = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _RebuildTensor,
    ("torch._utils", "_rebuild_parameter"): _RebuildParameter,
    **{
        ("torch", name): (lambda dt=dt, size=size: _StorageType(dt, size))
        for name, (dt, size) in STORAGE_DTYPES.items()
    },
}
_STORAGE_KINDS = frozenset(STORAGE_DTYPES.values())


@dataclass(frozen=True)
class TensorRef:
    """A tensor of a checkpoint: where its elements live and how they are laid out."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage: str
    offset: int
    """Element offset into the storage."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def is_contiguous(self) -> bool:
        expected = 1
        for d, s in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if d != 1 and s != expected:
                return False
            expected *= d
        return True


@dataclass(frozen=True)
class StorageSpan:
    """Where a storage's bytes sit in the checkpoint file."""

    offset: int
    nbytes: int
    itemsize: int


@dataclass(frozen=True)
class TorchCheckpoint:
    """The validated index of one checkpoint file."""

    path: str
    tensors: Mapping[str, TensorRef]
    storages: Mapping[str, StorageSpan]

    def byte_range(self, name: str) -> tuple[int, int]:
        """Absolute `(begin, end)` file offsets of a contiguous tensor's bytes."""
        t = self.tensors[name]
        if not t.is_contiguous():
            raise FormatError(f"{self.path}: tensor {name!r} is not contiguous", path=self.path)
        s = self.storages[t.storage]
        begin = s.offset + t.offset * s.itemsize
        return begin, begin + t.numel * s.itemsize


def _refuser(name: str) -> Callable[[Any], NoReturn]:
    def refuse(self: Any) -> NoReturn:
        raise pickle.UnpicklingError(f"opcode {name} is not allowed in a checkpoint")

    return refuse


def _load_build(self: Any) -> None:
    """BUILD only where torch writes it: attributes (`_metadata`) of a state dict's OrderedDict."""
    inst, state = self.stack[-2], self.stack[-1]
    if type(inst) is not collections.OrderedDict or type(state) is not dict:
        raise pickle.UnpicklingError(f"BUILD on a {type(inst).__name__} is refused")
    pickle._Unpickler.load_build(self)


#: Opcode table of `_Unpickler`: the standard one without the opcodes that build arbitrary
#: objects (INST, OBJ, NEWOBJ, extension registry, out-of-band buffers, text persistent ids).
_DISPATCH: dict[int, Callable[[Any], None]] = {
    **{op: _refuser(f"0x{op:02x}") for op in range(256)},
    **pickle._Unpickler.dispatch,
    **{
        code[0]: _refuser(name)
        for name, code in [
            ("INST", pickle.INST),
            ("OBJ", pickle.OBJ),
            ("NEWOBJ", pickle.NEWOBJ),
            ("NEWOBJ_EX", pickle.NEWOBJ_EX),
            ("EXT1", pickle.EXT1),
            ("EXT2", pickle.EXT2),
            ("EXT4", pickle.EXT4),
            ("PERSID", pickle.PERSID),
            ("NEXT_BUFFER", pickle.NEXT_BUFFER),
            ("READONLY_BUFFER", pickle.READONLY_BUFFER),
        ]
    },
    pickle.BUILD[0]: _load_build,
}


class _Unpickler(pickle._Unpickler):
    """Unpickles a state dict; every global comes fresh from `_ALLOWED`, nothing else resolves.

    The pure-Python unpickler with a reduced opcode table: its memo is a dict, so a PUT to index
    2**32 costs one entry (the C unpickler would allocate an array that long).
    """

    dispatch = _DISPATCH

    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise FormatError(
                f"{self.source}: refusing to load {module[:80]}.{name[:80]} from the checkpoint's "
                "pickle (only tensors in a dict are allowed; nothing from a checkpoint is executed)",
                path=self.source,
            )
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        if (
            type(pid) is tuple
            and len(pid) == 5
            and pid[0] == "storage"
            and type(pid[1]) is _StorageType
            and (pid[1].dtype, pid[1].itemsize) in _STORAGE_KINDS
            and type(pid[2]) is str
            and _int(pid[4])
        ):
            return _StorageRef(pid[2], pid[1].dtype, pid[1].itemsize, pid[4])
        raise FormatError(f"{self.source}: unexpected persistent id in the pickle", path=self.source)


def _int(v: Any) -> bool:
    """A non-negative int64 (bool excluded)."""
    return type(v) is int and 0 <= v <= _MAX_INT


def _ints(v: Any) -> bool:
    return type(v) is tuple and len(v) <= _MAX_DIMS and all(_int(x) for x in v)


def _record_spans(f: BinaryIO, zf: zipfile.ZipFile, size: int, source: str) -> dict[str, tuple[int, int]]:
    """`(begin, end)` of every record's data, after holding each record to what torch writes.

    Raises:
        `FormatError`: a record compressed, encrypted, on another disk, named twice, with a local
            header that disagrees with the central directory, running past the archive, or
            overlapping another record.
    """
    end_of_records = min(size, getattr(zf, "start_dir", size))
    spans: dict[str, tuple[int, int]] = {}
    extents: list[tuple[int, int, str]] = []
    for info in zf.infolist():
        name = info.filename
        where = f"{source}: ZIP record {name[:80]!r}"
        if name in spans:
            raise FormatError(f"{where} appears twice", path=source)
        if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION | _FLAG_MASKED_HEADER):
            raise FormatError(f"{where} is encrypted", path=source)
        if info.compress_type != zipfile.ZIP_STORED:
            raise FormatError(
                f"{where} is compressed (method {info.compress_type}); torch stores every record",
                path=source,
            )
        if info.volume != 0:
            raise FormatError(f"{where} is on another disk of a multi-disk archive", path=source)
        if info.compress_size != info.file_size or not 0 <= info.header_offset < end_of_records:
            raise FormatError(f"{where} has inconsistent sizes or offsets", path=source)
        f.seek(info.header_offset)
        raw = f.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size:
            raise FormatError(f"{where}: truncated local header", path=source)
        sig, _, flags, method, _, _, crc, csize, usize, n_name, n_extra = _LOCAL_HEADER.unpack(raw)
        if sig != b"PK\x03\x04":
            raise FormatError(f"{where}: bad local header", path=source)
        local_name = f.read(n_name)
        encoding = "utf-8" if flags & _FLAG_UTF8 else "cp437"
        if (
            method != zipfile.ZIP_STORED
            or flags & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION)
            or local_name.decode(encoding, "replace") != info.orig_filename
        ):
            raise FormatError(f"{where}: local header disagrees with the central directory", path=source)
        if not flags & _FLAG_DESCRIPTOR and (
            crc != info.CRC or usize not in (info.file_size, _ZIP64_SIZE) or csize not in (usize, _ZIP64_SIZE)
        ):
            raise FormatError(f"{where}: local header sizes disagree with the central directory", path=source)
        begin = info.header_offset + _LOCAL_HEADER.size + n_name + n_extra
        end = begin + info.file_size
        if end > end_of_records:
            raise FormatError(f"{where} runs past the end of the archive's records", path=source)
        spans[name] = (begin, end)
        extents.append((info.header_offset, end, name))
    extents.sort()
    for (_, prev_end, prev), (start, _, name) in zip(extents, extents[1:], strict=False):
        if start < prev_end:
            raise FormatError(f"{source}: ZIP records {prev[:80]!r} and {name[:80]!r} overlap", path=source)
    return spans


def _unpickle(data: bytes, source: str) -> Any:
    try:
        return _Unpickler(data, source).load()
    except FormatError:
        raise
    except RecursionError:
        raise FormatError(
            f"{source}: malformed pickle in data.pkl (nested too deeply)", path=source
        ) from None
    except Exception as e:  # noqa: BLE001 (a malformed pickle raises many kinds of errors)
        reason = " ".join(str(e).split())[:200]
        raise FormatError(
            f"{source}: malformed pickle in data.pkl ({type(e).__name__}: {reason})", path=source
        ) from None


def _index(
    obj: Any, records: Mapping[str, tuple[int, int]], prefix: str, source: str
) -> tuple[dict[str, TensorRef], dict[str, StorageSpan]]:
    """Validate the unpickled state dict against the records and index its tensors."""
    if not isinstance(obj, dict):
        raise FormatError(f"{source}: the checkpoint is not a dict of tensors", path=source)
    storages: dict[str, StorageSpan] = {}
    kinds: dict[str, tuple[str, int]] = {}
    tensors: dict[str, TensorRef] = {}
    for name, value in obj.items():
        if type(name) is not str:
            raise FormatError(f"{source}: tensor names must be strings", path=source)
        where = f"{source}: tensor {name[:80]!r}"
        if type(value) is not _TensorArgs:
            raise FormatError(f"{where} is not a tensor", path=source)
        st, offset, shape, stride = value.storage, value.offset, value.size, value.stride
        if not (type(st) is _StorageRef and _int(offset) and _ints(shape) and _ints(stride)):
            raise FormatError(f"{where} has a malformed layout", path=source)
        if len(shape) != len(stride):
            raise FormatError(f"{where}: shape and stride differ in rank", path=source)
        if kinds.setdefault(st.key, (st.dtype, st.numel)) != (st.dtype, st.numel):
            raise FormatError(
                f"{source}: storage {st.key[:80]!r} is named with two types or sizes", path=source
            )
        if st.key not in storages:
            span = records.get(prefix + "data/" + st.key)
            if span is None:
                raise FormatError(f"{source}: storage {st.key[:80]!r} has no data record", path=source)
            nbytes = span[1] - span[0]
            if nbytes != st.numel * st.itemsize:
                raise FormatError(
                    f"{source}: storage {st.key[:80]!r} holds {nbytes} bytes, "
                    f"{st.numel} x {st.itemsize} expected",
                    path=source,
                )
            storages[st.key] = StorageSpan(span[0], nbytes, st.itemsize)
        ref = TensorRef(name, st.dtype, shape, stride, st.key, offset)
        if ref.numel and offset + sum((d - 1) * s for d, s in zip(shape, stride, strict=True)) >= st.numel:
            raise FormatError(f"{where} reaches outside its storage", path=source)
        tensors[name] = ref
    return tensors, storages


def read_checkpoint(path: os.PathLike[str] | str) -> TorchCheckpoint:
    """Index the tensors of a `torch.save` zip checkpoint, validating every reference.

    Raises:
        `MissingFileError`: no such file.
        `IOFailure`: the file cannot be read.
        `FormatError`: not a zip checkpoint, a ZIP feature torch does not write (compression,
            encryption, several disks, duplicate or overlapping records), a refused pickle global
            or opcode, or a tensor that reaches outside its storage.
    """
    path = Path(path)
    source = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                zf = zipfile.ZipFile(f)
            except Exception as e:  # noqa: BLE001 (any defect of the archive is a format error here)
                reason = " ".join(str(e).split())[:200]
                raise FormatError(f"{source}: not a PyTorch zip checkpoint ({reason})", path=path) from None
            with zf:
                records = _record_spans(f, zf, size, source)
                pkl = [n for n in records if n.endswith("/data.pkl") and n.count("/") == 1]
                if len(pkl) != 1:
                    raise FormatError(
                        f"{source}: expected one <name>/data.pkl record, found {len(pkl)}", path=path
                    )
                begin, end = records[pkl[0]]
                if end - begin > MAX_PICKLE_BYTES:
                    raise FormatError(
                        f"{source}: data.pkl of {end - begin} bytes is beyond the limit", path=path
                    )
                f.seek(begin)
                data = f.read(end - begin)
                if len(data) != end - begin:
                    raise FormatError(f"{source}: data.pkl is truncated", path=path)
                if binascii.crc32(data) != zf.getinfo(pkl[0]).CRC:
                    raise FormatError(f"{source}: data.pkl fails its CRC check", path=path)
            obj = _unpickle(data, source)
            tensors, storages = _index(obj, records, pkl[0][: -len("data.pkl")], source)
    except FileNotFoundError:
        raise MissingFileError(f"checkpoint not found: {path}", path=path) from None
    except OSError as e:
        raise IOFailure("reading", path, e) from None
    return TorchCheckpoint(path=source, tensors=tensors, storages=storages)
