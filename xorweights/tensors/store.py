"""Tensors of a model folder in any container, read lazily and one at a time.

A folder may hold safetensors files (one or sharded, any layout; headers parsed strictly, bytes
read straight from the file), PyTorch zip checkpoints (`*.bin`, `*.pt`; indexed through the
allow-list reader, nothing unpickled beyond it), or Meta's original LLaMA folder (tensors
converted to HF names on the fly). Memory never holds more than a chunk, or one tensor when a
tensor has to be computed (Meta's model-parallel concatenation, a strided checkpoint tensor).

Tensor bytes can be read in another floating-point dtype than stored (`F16`, `BF16`, `F32`,
`F64`): the cast is deterministic (IEEE round-to-nearest-even), so an fp32 copy of fp16 weights
yields the fp16 bytes exactly.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._buffers import work_buffer
from .._sizing import CHUNK_SIZE
from ..errors import FormatError, MissingFileError
from ..hashing import hash_stream
from ..outfolder.paths import is_regular
from .dtypes import DTYPE_SIZES, FLOAT_DTYPES, NUMPY_DTYPES
from .safetensors_header import read_header
from .torch_zip import read_checkpoint

logger = logging.getLogger(__name__)

_WEIGHT_GLOBS = ("*.bin", "*.pt")


def _weight_file(path: Path) -> bool:
    """Whether `path`, named like a weight file, is one: a regular file (a folder is skipped, and
    a FIFO or a device is refused as `NotRegularFileError` rather than taken for no file at all)."""
    return not path.is_dir() and is_regular(path)


def nbytes_of(dtype: str, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * DTYPE_SIZES[dtype]


def castable(src: str, dst: str) -> bool:
    """Whether tensor bytes stored as `src` can be read as `dst`."""
    return src == dst or (src in FLOAT_DTYPES and dst in FLOAT_DTYPES)


def cast(a: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Cast a flat array between float dtypes (BF16 held as uint16 bits), round-to-nearest-even."""
    if src == dst:
        return a
    if src == "BF16":
        wide: np.ndarray = (a.astype(np.uint32) << 16).view(np.float32)
    else:
        wide = a
    if dst != "BF16":
        with np.errstate(over="ignore"):  # out of range becomes inf, as in torch
            return wide.astype(NUMPY_DTYPES[dst])
    u = wide.astype(np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(
        np.uint16
    )
    nan = np.isnan(wide)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes are: a contiguous range of a file, or computed on demand."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: str
    """The file holding it (or the folder it is computed from), for messages."""
    begin: int | None = None
    """Absolute file offset of its contiguous bytes, when it has them."""
    compute: Callable[[], np.ndarray] | None = None

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.dtype, self.shape)


def tensor_array(t: StoredTensor) -> np.ndarray:
    """The tensor as an array: a read-only memory map of its file, or computed (one tensor)."""
    if t.compute is not None:
        a = t.compute()
    elif t.nbytes == 0:  # nothing to map (mmap refuses empty ranges)
        a = np.empty(t.shape, dtype=NUMPY_DTYPES[t.dtype])
    else:
        a = np.memmap(t.source, dtype=NUMPY_DTYPES[t.dtype], mode="r", offset=t.begin or 0, shape=t.shape)
    if a.shape != t.shape:
        raise FormatError(
            f"{t.source}: tensor {t.name} came out {a.shape}, expected {t.shape}", path=t.source
        )
    return a


class TensorReader(io.RawIOBase):
    """A read-only stream of one tensor's bytes, optionally cast to another float dtype."""

    def __init__(self, tensor: StoredTensor, dtype: str | None = None, chunk_size: int = CHUNK_SIZE) -> None:
        super().__init__()
        self.tensor = tensor
        self.dtype = dtype or tensor.dtype
        if not castable(tensor.dtype, self.dtype):
            raise FormatError(
                f"{tensor.source}: tensor {tensor.name} is {tensor.dtype}, which cannot be read as "
                f"{self.dtype}",
                path=tensor.source,
                expected=self.dtype,
                actual=tensor.dtype,
            )
        self.nbytes = nbytes_of(self.dtype, tensor.shape)
        self._file: Any = None
        self._left = self.nbytes
        self._chunks: Iterator[memoryview] | None = None
        self._pending = memoryview(b"")
        if tensor.begin is not None and self.dtype == tensor.dtype:
            self._file = open(tensor.source, "rb")  # noqa: SIM115 (closed in close())
            self._file.seek(tensor.begin)
        else:
            self._chunks = self._cast_chunks(chunk_size)

    def _array(self) -> np.ndarray:
        return tensor_array(self.tensor)

    def _cast_chunks(self, chunk_size: int) -> Iterator[memoryview]:
        a = self._array()
        flat = np.ascontiguousarray(a).reshape(-1)  # no copy when already contiguous
        step = max(1, chunk_size // max(1, flat.dtype.itemsize))
        for i in range(0, flat.size, step):
            part = np.ascontiguousarray(cast(np.asarray(flat[i : i + step]), self.tensor.dtype, self.dtype))
            yield memoryview(part).cast("B")

    def readable(self) -> bool:
        return True

    @property
    def remaining(self) -> int:
        """Bytes of the tensor not read yet."""
        return max(0, self._left)

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if self._left <= 0 or not len(view):
            return 0
        if self._file is not None:
            n = self._file.readinto(view[: min(len(view), self._left)])
            if not n:
                raise FormatError(
                    f"{self.tensor.source}: file ends inside tensor {self.tensor.name}",
                    path=self.tensor.source,
                )
            self._left -= n
            return int(n)
        while not self._pending:
            assert self._chunks is not None
            nxt = next(self._chunks, None)
            if nxt is None:
                raise FormatError(
                    f"{self.tensor.source}: tensor {self.tensor.name} ended early", path=self.tensor.source
                )
            self._pending = nxt
        n = min(len(view), len(self._pending), self._left)
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._left -= n
        return n

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._chunks = None
        super().close()


class TensorStore:
    """The tensors of one folder, by name; see the module docstring for the containers read."""

    def __init__(self, folder: Path, tensors: dict[str, StoredTensor], kind: str, files: list[Path]) -> None:
        self.folder = folder
        self.tensors = tensors
        self.kind = kind
        self.files = files

    @classmethod
    def open(cls, folder: os.PathLike[str] | str) -> TensorStore:
        """Index the tensors of `folder` (headers only; no tensor byte is read).

        Raises:
            `MissingFileError`: no such folder, or no tensor files in it.
            `FormatError`: a malformed file, or one tensor name in two files (`index_tensors`).
            `NotRegularFileError`: a file named like weights is a FIFO, a device or a socket.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingFileError(f"base folder not found: {folder}", path=folder)
        # The safetensors files when there are any (a folder often holds a .bin copy of the same weights).
        safetensors = sorted(p for p in folder.glob("*.safetensors") if _weight_file(p))
        if safetensors:
            others = [p.name for g in _WEIGHT_GLOBS for p in folder.glob(g)]
            if others:
                logger.info(
                    "%s: reading the safetensors files; ignoring %s", folder, ", ".join(sorted(others))
                )
            return cls(folder, index_tensors(safetensors), "safetensors", safetensors)
        checkpoints = sorted({p for g in _WEIGHT_GLOBS for p in folder.glob(g) if _weight_file(p)})
        if not checkpoints:
            raise MissingFileError(
                f"no tensors in {folder}: looked for *.safetensors, *.bin, *.pt, or Meta's "
                "consolidated.NN.pth with params.json",
                path=folder,
            )
        return cls(folder, index_tensors(checkpoints), "pytorch", checkpoints)

    def get(self, name: str) -> StoredTensor | None:
        return self.tensors.get(name)

    def reader(self, name: str, dtype: str | None = None) -> TensorReader:
        """A stream of tensor `name`'s bytes, as `dtype` (default: as stored)."""
        return TensorReader(self.tensors[name], dtype)

    def digest(
        self,
        name: str,
        dtype: str | None = None,
        on_progress: Callable[[int], None] | None = None,
        algorithm: str = "sha256",
    ) -> str:
        """The digest (`algorithm`, see `hashing.new_hasher`) of tensor `name`'s bytes as `dtype`."""
        buf = work_buffer(CHUNK_SIZE)  # its pages are touched only as far as the tensor goes
        with self.reader(name, dtype) as r:
            return hash_stream(r, [algorithm], buffer=buf, on_progress=on_progress)[algorithm]

    def identity(self) -> tuple[int, int]:
        """Total size and newest modification time of the files read (for resume records)."""
        stats = [p.stat() for p in self.files]
        return sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)


def index_tensors(files: Iterable[Path]) -> dict[str, StoredTensor]:
    """Where each tensor of `files` is, by name (headers only; no tensor byte is read).

    A `*.safetensors` file is read by its header; any other file as a PyTorch zip checkpoint,
    through the allow-list reader (a non-contiguous tensor of one is gathered when it is read).
    Which files to index (safetensors only, or `.bin` beside them) is the caller's choice.

    Raises:
        `FormatError`: a malformed file, or one tensor name in two files (both named).
    """
    tensors: dict[str, StoredTensor] = {}
    for path in files:
        for t in _file_tensors(path):
            if t.name in tensors:
                raise FormatError(
                    f"{path}: tensor {t.name!r} is also in {tensors[t.name].source}; which one is meant?",
                    path=path,
                )
            tensors[t.name] = t
    return tensors


def _file_tensors(path: Path) -> Iterator[StoredTensor]:
    if path.suffix == ".safetensors":
        for t in read_header(path).tensors.values():
            yield StoredTensor(t.name, t.dtype, t.shape, str(path), begin=t.begin)
        return
    ck = read_checkpoint(path)
    for name, ref in ck.tensors.items():
        if ref.is_contiguous():
            yield StoredTensor(name, ref.dtype, ref.shape, str(path), begin=ck.byte_range(name)[0])
        else:
            yield StoredTensor(name, ref.dtype, ref.shape, str(path), compute=_strided(ck, name))


def _strided(ck: Any, name: str) -> Callable[[], np.ndarray]:
    """A non-contiguous checkpoint tensor, gathered from its storage's memory map."""

    def compute() -> np.ndarray:
        ref = ck.tensors[name]
        span = ck.storages[ref.storage]
        dtype = np.dtype(NUMPY_DTYPES[ref.dtype])
        storage = np.memmap(
            ck.path, dtype=dtype, mode="r", offset=span.offset, shape=(span.nbytes // span.itemsize,)
        )
        view = np.lib.stride_tricks.as_strided(
            storage[ref.offset :],
            shape=ref.shape,
            strides=[s * dtype.itemsize for s in ref.stride],
            writeable=False,
        )
        return np.ascontiguousarray(view)

    return compute
