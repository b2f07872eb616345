"""Cheap checks that a file is what its name says: the last guard for outputs with no published digest.

A decoded `.json` file MUST parse; a `.safetensors` file's header MUST parse and tile its data; a
torch checkpoint (`.bin`, `.pt`, `.pth`, `.ckpt`) MUST be a zip with a readable central directory
(or a pre-zip torch pickle). XOR with the wrong base, or a truncated payload, fails these checks
with near certainty; the same checks on a *payload* file that passes them show that it was never
XOR-ed at all (a model folder, or a native payload without its manifest).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from .. import _json
from .._json import MAX_JSON_FILE_BYTES
from ..errors import FileTooLargeError, FormatError
from ..model_files import TORCH_SUFFIXES
from ..outfolder.paths import read_bounded
from ..tensors.safetensors_header import read_header

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
#: Start of a torch file from before the zip format (pickle protocol 2, then torch's magic number).
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def kind(name: str) -> str | None:
    """What a file of this name must be, or None when nothing is checked."""
    if name.endswith(".json"):
        return "JSON file"
    if name.endswith(".safetensors"):
        return "safetensors file"
    if name.endswith(TORCH_SUFFIXES):
        return "torch checkpoint"
    return None


def problem(path: Path, name: str) -> str | None:
    """Why the file at `path` is not a valid file of the kind `name` says, or None if it is (or
    if its kind is not checked)."""
    what = kind(name)
    try:
        if what == "JSON file":
            try:
                raw = read_bounded(path, MAX_JSON_FILE_BYTES, "a JSON file")
            except FileTooLargeError:
                logger.info("%s: over %d MiB, not parsed", name, MAX_JSON_FILE_BYTES >> 20)
                return None
            _json.loads(raw, name)
        elif what == "safetensors file":
            read_header(path)
        elif what == "torch checkpoint":
            with open(path, "rb") as f:
                head = f.read(len(_LEGACY_TORCH_MAGIC))
            if head.startswith(_LEGACY_TORCH_MAGIC):
                return None
            if not head.startswith(_ZIP_MAGIC):
                return "it is neither a zip nor a pre-zip torch file"
            with zipfile.ZipFile(path) as z:
                if not z.infolist():
                    return "its zip holds no records"
    except FormatError as e:  # a failed read is not a verdict: IOFailure and the like propagate
        return str(e).removeprefix(f"{path}: ").removeprefix(f"{name}: ")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
        return f"no readable zip central directory ({e})"
    return None


def verdict(path: Path, name: str) -> str | None:
    """What the file at `path` is not, as a decoded output called `name` ("not a valid ... (why)"),
    or None when it is plausible (see `problem`)."""
    why = problem(path, name)
    return None if why is None else f"not a valid {kind(name)} ({why})"
