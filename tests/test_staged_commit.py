"""Staged commits: an interrupt between a staged output's rename and its record, or a failure while
the sidecar files are written, leaves a folder the next run resumes; a finished recovery reruns
quietly; each codec refuses the options of another."""

from __future__ import annotations

import errno
import importlib
import logging
import os
from pathlib import Path

import pytest

import xorweights
from tests.conftest import make_native_release, tree
from xorweights.outfolder.atomic import BOOKKEEPING_DIR, STAGING_DIR
from xorweights.outfolder.folder import JOURNAL_PATH, STATE_FILE, STATE_JOURNAL


def _interrupt_after_staged_rename(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The Nth rename out of the staging folder completes, then Ctrl-C arrives (before its record)."""
    real, count = os.replace, [0]

    def replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        real(src, dst)
        if Path(src).parent.name == STAGING_DIR:
            count[0] += 1
            if count[0] == n:
                raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ctrl_c_between_a_staged_rename_and_its_record_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    release = make_native_release(tmp_path / "r")
    want = tree(release["payload"])
    out = tmp_path / "payload"
    with monkeypatch.context() as m:
        _interrupt_after_staged_rename(m, n)
        with pytest.raises(KeyboardInterrupt):
            xorweights.encode(release["ft"], base=release["base"], out=out)
    assert not (out / "xorweights.json").exists()  # nothing describes a half-moved payload
    again = xorweights.encode(release["ft"], base=release["base"], out=out)  # no force needed
    assert tree(out) == want
    assert any(f.kept for f in again.files)


def test_a_failed_manifest_write_leaves_a_payload_the_rerun_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = make_native_release(tmp_path / "r")
    want = tree(release["payload"])
    out = tmp_path / "payload"
    run_module = importlib.import_module("xorweights.pipeline.run")
    real = run_module.AtomicFile

    class FullDisk(real):  # type: ignore[misc, valid-type]
        def write(self, data: bytes) -> int:
            if self.final.name == "xorweights.json":
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    with monkeypatch.context() as m:
        m.setattr(run_module, "AtomicFile", FullDisk)
        with pytest.raises(xorweights.XorWeightsError, match="xorweights.json"):
            xorweights.encode(release["ft"], base=release["base"], out=out)
    assert not (out / "xorweights.json").exists()
    # The records of the files already in place stay (out of sight of an upload); nothing staged does.
    assert {p.name for p in (out / BOOKKEEPING_DIR).iterdir()} <= {STATE_FILE, STATE_JOURNAL}
    assert any((out / BOOKKEEPING_DIR).iterdir())
    xorweights.encode(release["ft"], base=release["base"], out=out)
    assert tree(out) == want
    assert not (out / ".cache").exists()  # a finished payload folder keeps no records


def test_a_finished_recovery_reruns_without_a_warning_and_folds_its_journal(
    delta_pair: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    delta, base = delta_pair
    out = tmp_path / "out"
    xorweights.decode(delta, base=base, out=out, recipe="fastchat")
    assert not (out / JOURNAL_PATH).exists()
    first = tree(out)
    with caplog.at_level(logging.WARNING, logger="xorweights"):
        report = xorweights.decode(delta, base=base, out=out, recipe="fastchat")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert all(f.kept for f in report.files)
    assert tree(out) == first


def test_each_codec_refuses_the_options_of_another(delta_pair: tuple[Path, Path], tmp_path: Path) -> None:
    release = make_native_release(tmp_path / "r")
    with pytest.raises(xorweights.InputError, match="`output_format` applies to an additive delta"):
        xorweights.decode(release["payload"], base=release["base"], out=tmp_path / "o", output_format="bin")
    with pytest.raises(xorweights.InputError, match="`max_shard_size` applies to an additive delta"):
        xorweights.decode(release["payload"], base=release["base"], out=tmp_path / "o", max_shard_size="1MB")
    delta, base = delta_pair
    with pytest.raises(xorweights.InputError, match="`payload_compression='gzip'` applies to XOR payloads"):
        xorweights.decode(delta, base=base, out=tmp_path / "d", recipe="fastchat", payload_compression="gzip")
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()
