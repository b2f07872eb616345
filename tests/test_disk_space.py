"""A full disk: refused before writing when the outputs cannot fit; when it fills up anyway, the
error names the operation and the path, no temporary stays behind, and a rerun with room keeps
what was finished. Real full disks are small tmpfs mounts (root only; skipped, saying so, where
mounting is impossible)."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

import xorweights
from tests.conftest import encoded_release, write_files
from xorweights.cli import main
from xorweights.errors import IOFailure, NoSpaceError
from xorweights.outfolder import space as _space
from xorweights.outfolder.atomic import BOOKKEEPING_DIR, TEMP_PREFIX, TEMP_SUFFIX, AtomicFile
from xorweights.outfolder.folder import STATE_FILE, STATE_PATH

MiB = 1024 * 1024


def temporaries(folder: Path) -> list[str]:
    """Temporaries left in `folder` or its bookkeeping (none when a failed run left no folder at all)."""
    return [
        p.name
        for p in [*_entries(folder), *_entries(folder / BOOKKEEPING_DIR)]
        if p.name.startswith(TEMP_PREFIX) and p.name.endswith(TEMP_SUFFIX)
    ]


def _entries(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.exists() else []


def finals(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in _entries(folder) if p.is_file() and not p.name.startswith(".")}


def resize(where: Path, mib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={mib}m", str(where)], check=True)


def fill(where: Path) -> None:
    """Fill `where` up to the last page."""
    fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, dict[str, bytes]]:
    """Three 6 MiB weight files and a config: two fit in 16 MiB, the third does not."""
    root = tmp_path_factory.mktemp("space")
    sizes = {f"pytorch_model-0000{i}-of-00003.bin": 6 * MiB for i in (1, 2, 3)} | {"config.json": 600}
    return encoded_release(root, sizes, release="space", seed=50)


def test_refused_before_writing_with_both_figures(release, tmpfs, capsys) -> None:
    payload, base, manifest, _ = release
    out = tmpfs(8) / "out"
    args = [
        "decode",
        str(payload),
        "--base",
        str(base),
        "--out",
        str(out),
        "--checksums",
        str(manifest),
        "-q",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"Error: not enough free space in {out}: "), err
    assert " needed for 4 outputs, " in err[0] and err[0].endswith(" MiB free"), err
    assert finals(out) == {} and temporaries(out) == [] and not (out / STATE_PATH).exists()
    with pytest.raises(NoSpaceError) as e:
        xorweights.decode(payload, base=base, out=out, checksums=manifest)
    assert e.value.expected > 18 * MiB > 8 * MiB >= e.value.actual


def test_encode_refused_before_writing(release, tmpfs, tmp_path: Path) -> None:
    _, base, _, expected = release
    tuned = write_files(tmp_path / "tuned", expected)
    for fmt in ("oasst", "xorweights"):
        out = tmpfs(4) / "payload"
        with pytest.raises(NoSpaceError, match=r"needed for \d+ outputs, .* free$"):
            raw = ["*.bin"] if fmt == "xorweights" else []  # the bases are 64 bytes short
            xorweights.encode(tuned, base=base, out=out, format=fmt, allow_raw=raw)  # type: ignore[arg-type]
        assert finals(out) == {} and temporaries(out) == []


def test_full_disk_midway_names_the_file_and_rerun_keeps_finished(release, tmpfs, monkeypatch) -> None:
    payload, base, manifest, expected = release
    disk = tmpfs(16)
    out = disk / "out"
    monkeypatch.setenv(_space.ENV_SKIP_SPACE_CHECK, "1")  # as if something else took the room meanwhile
    with pytest.raises(IOFailure) as e:
        xorweights.decode(payload, base=base, out=out, checksums=manifest, jobs=1)
    assert e.value.errno == errno.ENOSPC
    assert str(e.value).startswith(("writing ", "saving ")) and str(out) in str(e.value)
    assert str(e.value).endswith(": No space left on device")
    assert temporaries(out) == []
    done = finals(out)
    assert done and all(data == expected[n] for n, data in done.items())
    # Room again: the same command finishes, keeping what was made.
    monkeypatch.delenv(_space.ENV_SKIP_SPACE_CHECK)
    resize(disk, 64)
    report = xorweights.decode(payload, base=base, out=out, checksums=manifest, jobs=1)
    assert finals(out) == expected and temporaries(out) == []
    assert {f.name for f in report.files if f.kept} == set(done)


def test_rerun_counts_only_what_is_left(release, tmpfs, tmp_path: Path) -> None:
    """Outputs kept from an earlier run need no room: 14 MiB free holds the two still to make."""
    payload, base, manifest, expected = release
    first = tmp_path / "first"
    xorweights.decode(payload, base=base, out=first, checksums=manifest)
    out = tmpfs(20) / "out"
    out.mkdir()
    name = "pytorch_model-00001-of-00003.bin"
    (out / name).write_bytes(expected[name])
    report = xorweights.decode(payload, base=base, out=out, checksums=manifest)
    assert finals(out) == expected and [f.name for f in report.files if f.kept] == [name]


def test_checksum_output_on_a_full_disk(tmpfs, tmp_path: Path, capsys) -> None:
    folder = write_files(tmp_path / "files", {f"file-{i:04d}.bin": bytes([i % 256]) * 10 for i in range(400)})
    disk = tmpfs(1)
    fill(disk)
    output = disk / "sums.md5"
    assert main(["checksum", str(folder), "--output", str(output), "-q"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"Error: writing {output}: No space left on device", err
    assert not output.exists() and temporaries(disk) == []


def test_state_file_write_fails_no_part_and_rerun_keeps_output(release, tmp_path: Path, monkeypatch) -> None:
    """The state file cannot be saved (full disk): no `.part` of it stays, the error names it, and
    a rerun recognises the finished output by its published digest."""
    payload, base, manifest, expected = release
    out = tmp_path / "out"
    commit = AtomicFile.commit

    def failing(self: AtomicFile, **kw: object) -> Path:
        if self.final.name == STATE_FILE:
            self.file = _FailingClose(self.file.detach(), on_flush=True)  # type: ignore[attr-defined]
        return commit(self, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(AtomicFile, "commit", failing)
    try:
        xorweights.decode(payload, base=base, out=out, checksums=manifest, jobs=1)
    except IOFailure as e:  # or the record is kept elsewhere until it can be saved
        assert str(e) == f"writing {out / STATE_PATH}: No space left on device"
    assert temporaries(out) == []
    done = finals(out)
    assert done and all(data == expected[n] for n, data in done.items())
    monkeypatch.setattr(AtomicFile, "commit", commit)
    report = xorweights.decode(payload, base=base, out=out, checksums=manifest, jobs=1)
    assert finals(out) == expected and {f.name for f in report.files if f.kept} == set(done)


class _FailingClose(io.BufferedWriter):
    """A file whose close (or flush) fails as on a full disk."""

    def __init__(self, raw: io.RawIOBase, *, on_flush: bool = False) -> None:
        super().__init__(raw)
        self.on_flush = on_flush

    def flush(self) -> None:
        if self.on_flush and not self.closed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().flush()

    def close(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_close_fails_on_commit(tmp_path: Path) -> None:
    final = tmp_path / "x.bin"
    with AtomicFile(final) as f:
        f.write(b"data")
        f.file = _FailingClose(f.file.detach())  # type: ignore[attr-defined]
        with pytest.raises(IOFailure) as e:
            f.commit(durable=False)
    assert str(e.value) == f"writing {final}: No space left on device" and e.value.path == str(final)
    assert e.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_atomic_close_fails_on_error_keeps_the_first_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="first"), AtomicFile(tmp_path / "x.bin") as f:
        f.write(b"data")
        f.file = _FailingClose(f.file.detach(), on_flush=True)  # type: ignore[attr-defined]
        raise KeyError("first")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_fails_names_the_path(tmpfs) -> None:
    disk = tmpfs(1)
    fill(disk)
    final = disk / "big.bin"
    with (
        pytest.raises(IOFailure, match=f"^writing {final}: No space left on device$"),
        AtomicFile(final) as f,
    ):
        for _ in range(64):
            f.write(b"\1" * 65536)
        f.commit()
    assert temporaries(disk) == [] and not final.exists()


def test_check_free_message() -> None:
    _space.check_free("/", 0, "nothing")
    with pytest.raises(NoSpaceError, match=r"^not enough free space in /: .* needed for 5 outputs, .* free$"):
        _space.check_free("/", 1 << 62, "5 outputs")


def test_staged_outputs_count_the_files_they_replace(tmp_path: Path) -> None:
    from xorweights.outfolder.space import needed_bytes

    for name in ("a.bin", "b.bin"):
        (tmp_path / name).write_bytes(b"x" * 1_000_000)
    sizes = {"a.bin": 1_000_000, "b.bin": 1_000_000}
    in_place = needed_bytes(tmp_path, sizes)
    staged = needed_bytes(tmp_path, sizes, staged=True)
    # Renamed one by one, all but the largest old file are freed on the way; staged, old and new coexist.
    assert staged - in_place >= 1_000_000


# --- compressed outputs: their size is known only once written -----------------------------------


def compressible_pair(root: Path, mib: int) -> tuple[Path, Path]:
    """A base and a fine-tune of `mib` MiB of float16 whose XOR compresses to about an eighth."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(3)
    base = {f"t{i}": rng.standard_normal(mib * MiB // 4).astype(np.float16) for i in range(2)}
    tuned = {}
    for name, t in base.items():
        bits = t.view(np.uint16).copy()
        flip = rng.random(bits.size) < 0.2
        bits[flip] ^= rng.integers(1, 4, int(flip.sum()), dtype=np.uint16)
        tuned[name] = bits.view(np.float16)
    for folder, tensors in (("base", base), ("ft", tuned)):
        write_files(root / folder, {"config.json": b'{"hidden": 3}\n'})
        save_file(tensors, str(root / folder / "model.safetensors"))
    return root / "base", root / "ft"


def test_a_compressed_output_counts_nothing_up_front(tmp_path: Path) -> None:
    from xorweights.formats.native_encode import prepare_encode
    from xorweights.pipeline.run import size_bound
    from xorweights.pipeline.source import sized_as_written

    base, ft = compressible_pair(tmp_path, 1)
    weights = (ft / "model.safetensors").stat().st_size
    for compress, expected in (("zstd", 0), ("none", weights)):
        plan = prepare_encode(ft, base, jobs=1, progress=False, compress=compress)  # type: ignore[arg-type]
        steps = {s.name: s for s in plan.steps}
        assert sized_as_written(steps["model.safetensors"].data) is (compress == "zstd")
        assert size_bound(steps["model.safetensors"]) == expected
        assert size_bound(steps["config.json"]) == 14


def test_a_compressed_encode_is_refused_only_when_its_output_does_not_fit(
    tmpfs, tmp_path: Path, capsys
) -> None:
    base, ft = compressible_pair(tmp_path, 16)  # 32 MiB of weights, about 4 MiB once compressed
    out = tmpfs(8) / "payload"
    assert main(["encode", str(ft), "--base", str(base), "--out", str(out), "-q"]) == 0
    assert sorted(finals(out)) == ["config.json", "model.safetensors", "xorweights.json"]
    assert 1 * MiB < (out / "model.safetensors").stat().st_size < 8 * MiB
    capsys.readouterr()
    out = tmpfs(1) / "payload"
    assert main(["encode", str(ft), "--base", str(base), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"Error: not enough free space in {out}: the disk filled up while writing model.safetensors, "
    ), err
    assert err[0].endswith("free some space or choose another --out, and run again")
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []


def test_the_space_watch_stops_before_the_disk_is_full(tmpfs) -> None:
    disk = tmpfs(1)
    watch = _space.SpaceWatch(disk, "model.safetensors", disk)
    watch.wrote(4096)  # room enough
    fill(disk)
    watch = _space.SpaceWatch(disk, "model.safetensors", disk)
    with pytest.raises(NoSpaceError, match=f"^not enough free space in {disk}: the disk filled up while "):
        watch.wrote(4096)


def test_a_full_disk_while_the_base_downloads_is_one_line_naming_the_file(
    legacy_release, hub, tmpfs, tmp_path: Path
) -> None:
    """huggingface_hub warns that the cache has too little room, then the write fails: the run
    prints the one error line, naming the file and the folder (the warning is dropped with it)."""
    from tests.hubserver import TOKEN
    from tests.test_hub import _cli

    hub.state.add_folder("org/legacy-base", legacy_release["base"])
    cache = tmpfs(5)  # the 24 MB shard does not fit
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home")}
    args = ["decode", legacy_release["payload"], "--base", "org/legacy-base", "--out", tmp_path / "o"]
    args += ["--checksums", legacy_release["manifest"], "--cache-dir", cache]
    res = _cli(args, env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("Error: downloading org/legacy-base@main:pytorch_model-00001-of-00002.bin")
    assert f"into {cache}: No space left on device" in res.stderr
    as_json = _cli([*args, "--json"], env)
    assert as_json.returncode == 2 and as_json.stderr == "", as_json.stderr
    assert json.loads(as_json.stdout)["error"]["type"] == "IOFailure"
    assert not (tmp_path / "o").exists()
