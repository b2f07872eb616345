"""Write state dicts exactly as torch 1.13.1 / 2.0.1 `torch.save` does, without torch.

The layout (read off real files, and checked byte for byte against them by the tests):

- An uncompressed ZIP whose records are `<stem>/data.pkl`, then `<stem>/data/<key>` for every
  storage in lexicographic key order ("0", "1", "10", "100", "11", ...), then `<stem>/version`
  holding `3\\n`; `<stem>` is the file name without its extension.
- Each local header: version 0, flags 0x0808 (data descriptor, UTF-8 name), method 0 (stored),
  time and date 0, CRC and sizes 0; the name; a ZIP64 extra field when the size or the header's
  offset reaches 0xFFFFFFFF (uncompressed size, a compressed size of 0, the offset: those
  needed); then an `FB` extra field of `Z` bytes so that the data starts on a
  64-byte boundary. After the data, a data descriptor (`PK\\x07\\x08`, CRC-32, sizes; 64-bit
  sizes when ZIP64).
- A central directory (version 0, flags 0x0808, sizes and offset capped at 0xFFFFFFFF with a
  ZIP64 extra field holding the real ones), then always a ZIP64 end record and locator, then
  the classic end record.
- `data.pkl`: pickle protocol 2 of a plain dict name -> tensor, each tensor reduced to
  `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())` with the
  storage as persistent id `("storage", torch.<Type>Storage, key, "cpu", numel)`.
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from ..tensors.dtypes import STORAGE_TYPES
from ..tensors.spec import TensorSpec

ALIGNMENT = 64
_U32 = 0xFFFFFFFF
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_ZIP64_EOCD = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_EOCD = struct.Struct("<IHHHHIIH")
_FLAGS = 0x0808


def _zip64_extra(*values: int) -> bytes:
    return struct.pack(f"<HH{len(values)}Q", 1, 8 * len(values), *values) if values else b""


class ZipRecordWriter:
    """Stream records into a ZIP laid out as PyTorch's writer lays it out (see module doc)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.offset = 0
        self.central: list[bytes] = []
        self._open: tuple[bytes, int, int] | None = None  # name, header offset, declared size
        self._crc = 0
        self._written = 0

    def _write(self, data: bytes | memoryview) -> None:
        self.out.write(data)
        self.offset += len(data)

    def begin(self, name: str, size: int) -> None:
        """Start a record of exactly `size` bytes; feed it with `write`, close it with `end`."""
        assert self._open is None, "a record is already open"
        raw = name.encode("utf-8")
        header_at = self.offset
        big_size, big_offset = size >= _U32, header_at >= _U32
        # In the local header the compressed size is left 0 (the data descriptor carries it).
        zip64 = _zip64_extra(*([size, 0] if big_size else []), *([header_at] if big_offset else []))
        start = header_at + _LOCAL.size + len(raw) + len(zip64) + 4
        pad = (-start) % ALIGNMENT
        extra = zip64 + b"FB" + struct.pack("<H", pad) + b"Z" * pad
        self._write(_LOCAL.pack(0x04034B50, 0, _FLAGS, 0, 0, 0, 0, 0, 0, len(raw), len(extra)) + raw + extra)
        self._open = (raw, header_at, size)
        self._crc = 0
        self._written = 0

    def write(self, data: bytes | memoryview) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self._written += len(data)
        self._write(data)

    def end(self) -> None:
        assert self._open is not None, "no record is open"
        raw, header_at, size = self._open
        if self._written != size:
            raise ValueError(f"record {raw.decode()} declared {size} bytes, got {self._written}")
        big_size, big_offset = size >= _U32, header_at >= _U32
        if big_size or big_offset:
            self._write(struct.pack("<IIQQ", 0x08074B50, self._crc, size, size))
        else:
            self._write(struct.pack("<IIII", 0x08074B50, self._crc, size, size))
        extra = _zip64_extra(*([size, size] if big_size else []), *([header_at] if big_offset else []))
        self.central.append(
            _CENTRAL.pack(
                0x02014B50,
                0,
                0,
                _FLAGS,
                0,
                0,
                0,
                self._crc,
                min(size, _U32),
                min(size, _U32),
                len(raw),
                len(extra),
                0,
                0,
                0,
                0,
                min(header_at, _U32),
            )
            + raw
            + extra
        )
        self._open = None

    def record(self, name: str, data: bytes) -> None:
        self.begin(name, len(data))
        self.write(data)
        self.end()

    def close(self) -> None:
        cd_at = self.offset
        for entry in self.central:
            self._write(entry)
        cd_size = self.offset - cd_at
        n = len(self.central)
        z64_at = self.offset
        self._write(_ZIP64_EOCD.pack(0x06064B50, 44, 0x031E, 45, 0, 0, n, n, cd_size, cd_at))
        self._write(_ZIP64_LOCATOR.pack(0x07064B50, 0, z64_at, 1))
        self._write(
            _EOCD.pack(
                0x06054B50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), min(cd_size, _U32), min(cd_at, _U32), 0
            )
        )


# --- data.pkl --------------------------------------------------------------------------------


class _Global:
    """Pickles as `GLOBAL module name`, like the torch object it stands for."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle's save_reduce wants a callable
        raise TypeError(f"{self.module}.{self.name} is a stand-in for pickling only")


_REBUILD = _Global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_GLOBALS = {dt: _Global("torch", cls) for dt, cls in STORAGE_TYPES.items()}
# torch's persistent_id returns these two literals, so the pickle memoizes them once.
_STORAGE_TAG = "storage"
_CPU = "cpu"


class _Storage:
    def __init__(self, spec: TensorSpec, key: str) -> None:
        self.spec, self.key = spec, key


class _Tensor:
    def __init__(self, storage: _Storage) -> None:
        self.storage = storage

    def __reduce_ex__(self, protocol: Any) -> Any:
        s = self.storage.spec
        return (_REBUILD, (self.storage, 0, s.shape, s.stride, False, _NewOrderedDict()))


class _NewOrderedDict:
    """`OrderedDict()` as torch pickles the (empty) backward hooks of each tensor."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (_ORDERED_DICT, ())


_ORDERED_DICT = _Global("collections", "OrderedDict")


class _Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]  # the pure-Python pickler
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return (_STORAGE_TAG, _STORAGE_GLOBALS[obj.spec.dtype], obj.key, _CPU, obj.spec.numel)
        return None

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, _Global):
            memo = self.memo.get(id(obj))
            if memo is not None:
                self.write(self.get(memo[0]))
                return
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        super().save(obj, save_persistent_id)


def pickle_state_dict(specs: Iterable[TensorSpec]) -> tuple[bytes, list[_Storage]]:
    """The `data.pkl` bytes for tensors saved in this order, and their storages (keys "0", "1", ...)."""
    state: dict[str, _Tensor] = {}
    storages: list[_Storage] = []
    for i, spec in enumerate(specs):
        st = _Storage(spec, str(i))
        storages.append(st)
        state[spec.name] = _Tensor(st)
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(state)
    return buf.getvalue(), storages


def storage_order(storages: list[_Storage]) -> list[_Storage]:
    """Records follow the keys in string order, as torch sorts its `serialized_storages`."""
    return sorted(storages, key=lambda s: s.key)


def save_state_dict(
    out: BinaryIO,
    stem: str,
    specs: list[TensorSpec],
    data: Iterator[tuple[str, Iterable[bytes | memoryview]]],
) -> None:
    """Write a checkpoint: `data` yields `(tensor name, chunks of its bytes)` in record order.

    Record order is `record_order(specs)`; the caller streams each tensor's bytes in that order,
    so nothing larger than a chunk need be in memory.
    """
    pkl, storages = pickle_state_dict(specs)
    zw = ZipRecordWriter(out)
    zw.record(f"{stem}/data.pkl", pkl)
    expected = [s.spec.name for s in storage_order(storages)]
    by_name = {s.spec.name: s for s in storages}
    for want, (name, chunks) in zip(expected, data, strict=True):
        if name != want:
            raise ValueError(f"tensor {name!r} given where {want!r} comes in record order")
        st = by_name[name]
        zw.begin(f"{stem}/data/{st.key}", st.spec.nbytes)
        for chunk in chunks:
            zw.write(chunk)
        zw.end()
    zw.record(f"{stem}/version", b"3\n")
    zw.close()


def record_order(specs: list[TensorSpec]) -> list[TensorSpec]:
    """The order in which tensor bytes are written (storage keys sorted as strings)."""
    return [s.spec for s in storage_order(pickle_state_dict(specs)[1])]
