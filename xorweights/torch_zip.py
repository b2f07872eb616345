"""Read the tensor index of a PyTorch zip checkpoint (`torch.save`) without torch, and safely.

A checkpoint is an uncompressed ZIP: `<stem>/data.pkl` (a pickle of the state dict), one record
`<stem>/data/<key>` per storage, and `<stem>/version`. The pickle is read with an allow-list:
an OrderedDict or dict of names to tensors built by `torch._utils._rebuild_tensor_v2` over
storages of the standard dtypes. Any other global in the pickle is refused, so nothing from
a checkpoint ever runs. Tensor bytes are then read straight from the ZIP by offset.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FormatError, MissingFileError

logger = logging.getLogger(__name__)

#: Storage classes a state dict may use, with safetensors' dtype name and the element size.
STORAGE_DTYPES = {
    "HalfStorage": ("F16", 2), "BFloat16Storage": ("BF16", 2), "FloatStorage": ("F32", 4),
    "DoubleStorage": ("F64", 8), "LongStorage": ("I64", 8), "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2), "CharStorage": ("I8", 1), "ByteStorage": ("U8", 1),
    "BoolStorage": ("BOOL", 1),
}  # fmt: skip
#: data.pkl of a state dict is small (names and shapes); a larger one is refused unread.
MAX_PICKLE_BYTES = 64 * 1024 * 1024
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length


@dataclass(frozen=True)
class _StorageType:
    dtype: str
    itemsize: int


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: str
    itemsize: int
    numel: int


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


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> Any:
    return ("tensor", storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(dt, size) for name, (dt, size) in STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise FormatError(
                f"{self.source}: refusing to load {module}.{name} from the checkpoint's pickle "
                "(only tensors in a dict are allowed; nothing from a checkpoint is executed)",
                path=self.source,
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
            and not isinstance(pid[4], bool)
            and pid[4] >= 0
        ):
            return _StorageRef(pid[2], pid[1].dtype, pid[1].itemsize, pid[4])
        raise FormatError(f"{self.source}: unexpected persistent id in the pickle", path=self.source)


def _ints(v: Any) -> bool:
    return isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def _data_offset(f: Any, info: zipfile.ZipInfo, size: int, source: str) -> int:
    f.seek(info.header_offset)
    raw = f.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise FormatError(f"{source}: truncated ZIP local header for {info.filename}", path=source)
    sig, n_name, n_extra = _LOCAL_HEADER.unpack(raw)
    if sig != b"PK\x03\x04":
        raise FormatError(f"{source}: bad ZIP local header for {info.filename}", path=source)
    start = info.header_offset + _LOCAL_HEADER.size + n_name + n_extra
    if start + info.file_size > size:
        raise FormatError(f"{source}: record {info.filename} runs past the end of the file", path=source)
    return start


def read_checkpoint(path: os.PathLike[str] | str) -> TorchCheckpoint:
    """Index the tensors of a `torch.save` zip checkpoint, validating every reference.

    Raises:
        `MissingFileError`: no such file.
        `FormatError`: not a zip checkpoint, a compressed storage record, a refused pickle
            global, or a tensor that reaches outside its storage.
    """
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise MissingFileError(f"checkpoint not found: {path}", path=path) from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise FormatError(f"{source}: not a PyTorch zip checkpoint ({e})", path=path) from None
    with zf:
        infos = zf.infolist()
        pkl = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if len(pkl) != 1:
            raise FormatError(f"{source}: expected one <name>/data.pkl record, found {len(pkl)}", path=path)
        prefix = pkl[0].filename[: -len("data.pkl")]
        if pkl[0].file_size > MAX_PICKLE_BYTES:
            raise FormatError(
                f"{source}: data.pkl of {pkl[0].file_size} bytes is beyond the limit", path=path
            )
        try:
            data = zf.read(pkl[0])
        except Exception as e:  # noqa: BLE001 (any defect of the archive is a format error here)
            raise FormatError(f"{source}: cannot read data.pkl ({e})", path=path) from None
        try:
            obj = _Unpickler(data, source).load()
        except FormatError:
            raise
        except Exception as e:  # noqa: BLE001 (a malformed pickle raises many kinds of errors)
            raise FormatError(
                f"{source}: malformed pickle in data.pkl ({type(e).__name__}: {e})", path=path
            ) from None
        if not isinstance(obj, dict):
            raise FormatError(f"{source}: the checkpoint is not a dict of tensors", path=path)
        records = {
            i.filename[len(prefix) + len("data/") :]: i
            for i in infos
            if i.filename.startswith(prefix + "data/")
        }
        storages: dict[str, StorageSpan] = {}
        tensors: dict[str, TensorRef] = {}
        with open(path, "rb") as f:
            for name, value in obj.items():
                if not isinstance(name, str):
                    raise FormatError(f"{source}: tensor names must be strings", path=path)
                if not (isinstance(value, tuple) and len(value) == 5 and value[0] == "tensor"):
                    raise FormatError(f"{source}: entry {name[:80]!r} is not a tensor", path=path)
                _, st, offset, shape, stride = value
                if not (isinstance(st, _StorageRef) and _ints((offset,)) and _ints(shape) and _ints(stride)):
                    raise FormatError(f"{source}: tensor {name[:80]!r} has a malformed layout", path=path)
                if len(shape) != len(stride):
                    raise FormatError(
                        f"{source}: tensor {name[:80]!r}: shape and stride differ in rank", path=path
                    )
                if st.key not in storages:
                    info = records.get(st.key)
                    if info is None:
                        raise FormatError(f"{source}: storage {st.key!r} has no data record", path=path)
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise FormatError(f"{source}: storage record {st.key!r} is compressed", path=path)
                    if info.file_size != st.numel * st.itemsize:
                        raise FormatError(
                            f"{source}: storage {st.key!r} holds {info.file_size} bytes, "
                            f"{st.numel} x {st.itemsize} expected",
                            path=path,
                        )
                    storages[st.key] = StorageSpan(
                        _data_offset(f, info, size, source), info.file_size, st.itemsize
                    )
                ref = TensorRef(name, st.dtype, shape, stride, st.key, offset)
                if (
                    ref.numel
                    and offset + sum((d - 1) * s for d, s in zip(shape, stride, strict=True)) >= st.numel
                ):
                    raise FormatError(
                        f"{source}: tensor {name[:80]!r} reaches outside its storage", path=path
                    )
                tensors[name] = ref
    return TorchCheckpoint(path=source, tensors=tensors, storages=storages)
