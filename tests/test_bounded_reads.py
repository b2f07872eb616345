"""Every file read whole is a regular file no larger than the bound of its kind, checked on the open
file before it is read: a 4 GiB sparse file is one typed line at once (never a `MemoryError`), a
FIFO never blocks, a device never ends a read."""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import random_bytes, write_files
from tests.test_paths_output_state import within
from xorweights.checksum_manifests import load_checksums
from xorweights.cli import main
from xorweights.delta.checks import model_config
from xorweights.errors import FileTooLargeError, MissingFileError, NotRegularFileError, UnsafePathError
from xorweights.formats.native_manifest import load_manifest
from xorweights.llama.tokenizer import derive_tokenizer_json
from xorweights.outfolder.paths import read_bounded
from xorweights.tensor_manifest import load_tensor_manifest

GiB = 1 << 30
PACKAGE = Path(__file__).resolve().parent.parent / "xorweights"


def sparse(path: Path, size: int = 4 * GiB) -> Path:
    """A file of `size` bytes that takes no room (a hole), as `truncate -s 4G` makes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_a_sparse_4_gib_file_is_refused_unread(tmp_path: Path) -> None:
    path = sparse(tmp_path / "config.json")
    started = time.monotonic()
    with pytest.raises(FileTooLargeError) as info:
        read_bounded(path, 1 << 20, "a config.json")
    assert time.monotonic() - started < 5  # refused from its size, not after reading 4 GiB
    assert str(info.value) == (
        f"{path}: 4.0 GiB (4294967296 bytes), more than a config.json may be (1.0 MiB at most); "
        "check that it is the right file"
    )
    assert (info.value.path, info.value.expected, info.value.actual) == (str(path), 1 << 20, 4 * GiB)


def test_a_file_longer_than_its_size_says_stops_at_the_bound() -> None:
    # /proc files are regular files of size 0 that yield bytes: a file growing while read looks alike.
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("no /proc here")
    with pytest.raises(FileTooLargeError, match=r"more than a status may be \(16 B at most\)"):
        read_bounded(status, 16, "a status")
    assert b"Name:" in read_bounded(status, 1 << 20, "a status")


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(
        NotRegularFileError, match=r"pipe is a FIFO, not a regular file; refusing to read it$"
    ):
        within(30, lambda: read_bounded(tmp_path / "pipe", 1 << 20))
    with pytest.raises(NotRegularFileError, match="is a device, not a regular file"):
        within(30, lambda: read_bounded(Path("/dev/zero"), 1 << 20))
    with pytest.raises(NotRegularFileError, match="is a folder, not a regular file"):
        read_bounded(tmp_path, 1 << 20)
    assert issubclass(NotRegularFileError, UnsafePathError)  # callers that refuse unsafe paths refuse these
    with pytest.raises(MissingFileError):
        read_bounded(tmp_path / "absent", 1 << 20)
    (tmp_path / "link").symlink_to(tmp_path / "pipe")
    with pytest.raises(NotRegularFileError, match="FIFO"):
        within(30, lambda: read_bounded(tmp_path / "link", 1 << 20))


READERS: dict[str, tuple[str, Callable[[Path], object]]] = {
    "checksum file": ("m.json", load_checksums),
    "native manifest": ("xorweights.json", load_manifest),
    "tensor manifest": ("xorweights-tensors.json", load_tensor_manifest),
    "sentencepiece model": ("tokenizer.model", derive_tokenizer_json),
    "model config": ("config.json", lambda p: model_config(p.parent)),
}


@pytest.mark.parametrize("kind", list(READERS))
def test_every_reader_refuses_a_sparse_4_gib_file(tmp_path: Path, kind: str) -> None:
    name, read = READERS[kind]
    path = sparse(tmp_path / name)
    with pytest.raises(
        FileTooLargeError, match="^" + str(path) + r": 4\.0 GiB \(4294967296 bytes\), more than"
    ):
        within(30, lambda: read(path))
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(NotRegularFileError, match="is a FIFO"):
        within(30, lambda: read(path))


def _whole_file_reads(tree: ast.AST) -> list[int]:
    """Lines that read a file whole: `.read_bytes()`, `.read_text()`, `json.load(...)`, `.read()`."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name in ("read_bytes", "read_text") or (
                name == "read" and not node.args and not node.keywords
            ):
                lines.append(node.lineno)
            elif name == "load" and isinstance(node.func.value, ast.Name) and node.func.value.id == "json":
                lines.append(node.lineno)
    return lines


#: Whole-file reads left outside `read_bounded`, with why they need no bound.
UNBOUNDED = {
    "demo.py": "copies a file the demo itself generated a moment before",
    "_version.py": "the installed distribution's direct_url.json, which pip writes (a few hundred bytes)",
}


def test_every_whole_file_read_goes_through_read_bounded() -> None:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        lines = _whole_file_reads(ast.parse(path.read_text(encoding="utf-8")))
        if lines and rel not in UNBOUNDED:
            found[rel] = lines
    assert found == {}, f"whole-file reads with no size bound (use outfolder.paths.read_bounded): {found}"


# --- delta side files from the command line ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "recipe", "what"),
    [("config.json", "fastchat", "a config.json"), ("model_sum.txt", "alpaca", "a file of one number")],
)
def test_a_sparse_delta_side_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], delta_pair, name: str, recipe: str, what: str
) -> None:
    delta, base = delta_pair
    (delta / name).unlink(missing_ok=True)
    sparse(delta / name)
    out = tmp_path / "out"
    started = time.monotonic()
    code = main(["decode", str(delta), "--base", str(base), "--out", str(out), "--recipe", recipe, "-q"])
    err = capsys.readouterr().err
    assert time.monotonic() - started < 60  # a safety net; the size decides before any read
    assert code == 2, err
    assert err.splitlines() == [
        f"Error: {delta / name}: 4.0 GiB (4294967296 bytes), more than {what} may be "
        f"({'64.0 MiB' if name == 'config.json' else '4.0 KiB'} at most); check that it is the right file"
    ]
    assert not out.exists()


def test_a_fifo_sum_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], delta_pair) -> None:
    delta, base = delta_pair
    os.mkfifo(delta / "model_sum.txt")
    args = ["decode", str(delta), "--base", str(base), "--out", str(tmp_path / "out"), "--recipe", "alpaca"]
    code = within(60, lambda: main([*args, "-q"]))
    err = capsys.readouterr().err
    assert (
        code == 2
        and err == f"Error: {delta / 'model_sum.txt'} is a FIFO, not a regular file; refusing to read it\n"
    )


def test_a_small_file_reads_as_it_is(tmp_path: Path) -> None:
    data = random_bytes(3 << 20, 1)  # several reads' worth
    path = write_files(tmp_path, {"f.bin": data}) / "f.bin"
    assert read_bounded(path, len(data)) == data
    with pytest.raises(FileTooLargeError):
        read_bounded(path, len(data) - 1)
