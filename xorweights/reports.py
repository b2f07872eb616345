"""What decode and encode return: per-file reports and the run's totals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .checksum_types import ChecksumManifest
from .formats.native_manifest import NativeManifest
from .pipeline.report import FileReport


@dataclass(frozen=True)
class _Report:
    files: tuple[FileReport, ...]
    seconds: float

    @property
    def bytes_written(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_processed(self) -> int:
        """Bytes of model data passed through (for a gzip encode, before compression)."""
        return sum(f.size if f.data_size is None else f.data_size for f in self.files)

    @property
    def throughput(self) -> float:
        """Model bytes per second (`bytes_processed`)."""
        return self.bytes_processed / self.seconds if self.seconds > 0 else 0.0

    def _summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "bytes_written": self.bytes_written,
            "bytes_processed": self.bytes_processed,
            "throughput_bytes_per_s": round(self.throughput),
            "files": [f.to_dict() for f in self.files],
        }


@dataclass(frozen=True)
class DecodeReport(_Report):
    """What `decode` wrote and verified."""

    payload_dir: str
    base_dir: str
    out_dir: str
    release: str | None = None
    unverified: tuple[str, ...] = ()
    """Outputs with no published digest to check against (only when checksums were given)."""
    gzip_backend: str | None = None
    """The decompressor used, when any payload file was gzip (`isal` or `zlib`)."""
    format: str = "oasst"
    """`xorweights` (native, tensor-level), `oasst` (legacy, file-level) or `delta:RECIPE`."""
    source: str | None = None
    """The Hub repo and commit the payload came from (`owner/name@commit`), if any."""
    base_source: str | None = None
    """The Hub repo and commit the base came from (`owner/name@commit`), if any."""
    streamed: tuple[str, ...] = ()
    """Payload files read from the Hub as they were decoded (`stream`), never on disk."""
    tensor_manifest: str | None = None
    """A delta recovery's per-tensor digests (`xorweights-tensors.json` in the output folder)."""
    model_sum: float | None = None
    """The sum of every recovered weight, when the recipe or release has such a check (Alpaca)."""
    model_sum_expected: float | None = None
    """The sum the release publishes (checked before the outputs were moved into place)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": "decode",
            "format": self.format,
            "payload_dir": self.payload_dir,
            "source": self.source,
            "streamed": list(self.streamed),
            "base_dir": self.base_dir,
            "base_source": self.base_source,
            "out_dir": self.out_dir,
            "release": self.release,
            "gzip_backend": self.gzip_backend,
            "unverified": list(self.unverified),
            "tensor_manifest": self.tensor_manifest,
            "model_sum": self.model_sum,
            "model_sum_expected": self.model_sum_expected,
            **self._summary(),
        }


@dataclass(frozen=True)
class EncodeReport(_Report):
    """What `encode` wrote; `manifest` holds the release's checksums when they were computed."""

    finetuned_dir: str
    base_dir: str
    out_dir: str
    compress: str | None = None
    manifest: ChecksumManifest | None = None
    format: str = "oasst"
    native_manifest: NativeManifest | None = None
    """The `xorweights.json` written with a native payload."""
    unmasked_tails: tuple[tuple[str, int], ...] = ()
    """A legacy payload's weight files whose last bytes lie past their base file's end, stored
    unmasked as that format does: (name, bytes)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": "encode",
            "format": self.format,
            "finetuned_dir": self.finetuned_dir,
            "base_dir": self.base_dir,
            "out_dir": self.out_dir,
            "compress": self.compress,
            "manifest": self.manifest.to_json() if self.manifest is not None else None,
            "native_manifest": self.native_manifest.to_json() if self.native_manifest is not None else None,
            "unmasked_tails": [[n, b] for n, b in self.unmasked_tails],
            **self._summary(),
        }
