from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import xorweights
from xorweights.outfolder.folder import STATE_FILE

# The test Hub server (tests/hubserver.py) speaks the Hub's HTTP and git-LFS protocols but not Xet:
# set before anything imports huggingface_hub, which reads it once. Subprocesses inherit it.
os.environ["HF_HUB_DISABLE_XET"] = "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Tests that use the `hub` fixture are marked `hub` (`.ci/run` runs them on an old hub client too)."""
    if "hub" in getattr(item, "fixturenames", ()):
        item.add_marker(pytest.mark.hub)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


#: What the suite may leave in pytest's temporary folder after a run, failed or not.
KEEP_AT_MOST = 100 * 1024 * 1024


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Failed tests keep their folders (pyproject.toml), but some tests work on models of hundreds
    of MB: after the run, the largest folders go until at most `KEEP_AT_MOST` bytes are left."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is None or getattr(factory, "_given_basetemp", None) is not None or not basetemp.is_dir():
        return  # none made, or a folder the user chose (--basetemp): theirs to keep
    sizes = sorted(
        ((_size(p), p) for p in basetemp.iterdir() if p.is_dir() and not p.is_symlink()), reverse=True
    )
    total = sum(n for n, _ in sizes)
    removed = []
    for n, path in sizes:
        if total <= KEEP_AT_MOST:
            break
        shutil.rmtree(path, ignore_errors=True)
        total -= n
        removed.append(path.name)
    if removed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(
                f"removed {len(removed)} large temporary folders of failed tests from {basetemp} "
                f"({', '.join(removed[:5])}{', ...' if len(removed) > 5 else ''}); "
                f"{total / 2**20:.0f} MiB kept"
            )


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No progress bars, and any Hub cache in a temporary folder."""
    monkeypatch.setenv("XORWEIGHTS_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    monkeypatch.delenv("XORWEIGHTS_DEBUG", raising=False)


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def zip_checkpoint(n: int, seed: int) -> bytes:
    """A zip shaped like a torch checkpoint holding `n` random bytes (decoded outputs with no published
    digest must be plausible, and a torch `.bin` is a zip)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data/0", random_bytes(n, seed))
    return buf.getvalue()


def model_file(name: str, n: int, seed: int) -> bytes:
    """About `n` bytes that are a valid file of the kind `name` says (a zip for `.bin`, JSON for
    `.json`), random elsewhere."""
    if name.endswith(".bin"):
        return zip_checkpoint(n, seed)
    if name.endswith(".json"):
        return json.dumps({"pad": random_bytes(n, seed).hex()[: max(0, n - 11)]}).encode()
    return random_bytes(n, seed)


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def legacy_folders(
    root: Path, *, base_extra: dict[str, bytes] | None = None, **overrides: bytes
) -> tuple[Path, Path]:
    """`root/base/` and `root/finetuned/` shaped like a legacy release (small); `overrides` replace or
    add fine-tuned files, `base_extra` adds base files."""
    base = {
        "pytorch_model-00001-of-00002.bin": zip_checkpoint(300_001, 1),
        "pytorch_model-00002-of-00002.bin": zip_checkpoint(200_003, 2),
        "pytorch_model.bin.index.json": b'{"metadata": {"total_size": 500004}}\n',
        "config.json": b'{"vocab_size": 32000}\n',
        "tokenizer.model": random_bytes(4_097, 3),
        **(base_extra or {}),
    }
    tuned = {
        # grown vocabulary: longer than the base
        "pytorch_model-00001-of-00002.bin": zip_checkpoint(300_001 + 16 * 13, 4),
        # shorter than the base
        "pytorch_model-00002-of-00002.bin": zip_checkpoint(199_990, 5),
        "pytorch_model.bin.index.json": b'{"metadata": {"total_size": 500212}}\n',
        "config.json": b'{"vocab_size": 32016}\n',
        "tokenizer.model": base["tokenizer.model"],
        "added_tokens.json": b'{"<|prompter|>": 32000}\n',
        **overrides,
    }
    return write_files(root / "base", base), write_files(root / "finetuned", tuned)


def encoded_release(
    root: Path, sizes: dict[str, int], *, release: str, seed: int
) -> tuple[Path, Path, Path, dict[str, bytes]]:
    """A legacy release of files of these sizes (base 64 bytes shorter): payload, base, checksum
    manifest (md5 and sha256) and the fine-tuned files by name."""
    base = write_files(root / "base", {n: model_file(n, s - 64, i) for i, (n, s) in enumerate(sizes.items())})
    tuned = write_files(
        root / "tuned", {n: model_file(n, s, seed + i) for i, (n, s) in enumerate(sizes.items())}
    )
    rep = xorweights.encode(
        tuned, format="oasst", base=base, out=root / "payload", with_checksums=True, release=release
    )
    (root / "m.json").write_text(json.dumps(rep.manifest.to_json()))
    return root / "payload", base, root / "m.json", tree(tuned)


@pytest.fixture
def model_pair(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Make `base/` and `finetuned/` folders shaped like a legacy release (see `legacy_folders`)."""

    def make(**overrides: bytes) -> tuple[Path, Path]:
        return legacy_folders(tmp_path, **overrides)

    return make


def tree(folder: Path) -> dict[str, bytes]:
    """All files below a folder by relative name, hidden temporaries included (none may remain);
    only the decode state file is left out."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != STATE_FILE
    }


@pytest.fixture
def chdir_tmp(tmp_path: Path):
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


@pytest.fixture
def hub(tmp_path: Path):
    """The test Hub server on 127.0.0.1 (tests/hubserver.py), for the real huggingface_hub client."""
    from huggingface_hub import constants

    from tests.hubserver import TOKEN, HubServer

    # The test server speaks the Hub's HTTP and git-LFS protocols, not Xet (see above).
    assert getattr(constants, "HF_HUB_DISABLE_XET", True)  # older clients have no Xet at all
    with HubServer(tmp_path / "hub-server", token=TOKEN) as server:
        yield server


# --- releases served by the test Hub (tests/test_hub*.py) ---------------------------------------


def make_native_release(root: Path) -> dict[str, Path]:
    """A small LLaMA-shaped fine-tune in safetensors, its base as .bin shards, and the native payload
    (nothing stored raw), made under `root`."""
    from safetensors.torch import save_file

    from tests.test_native import base_tensors, finetune, save_bin_shards

    base_sd = base_tensors()
    ft_sd = {n: t for n, t in finetune(base_sd).items() if n in base_sd}  # nothing stored raw
    names = list(base_sd)
    save_bin_shards(base_sd, root / "base", [names[:3], names[3:]])
    (root / "base" / "tokenizer.model").write_bytes(random_bytes(3000, 7))
    ft = root / "finetuned"
    ft.mkdir()
    save_file({n: t.contiguous() for n, t in ft_sd.items()}, str(ft / "model.safetensors"))
    (ft / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 104}))
    tok = bytearray((root / "base" / "tokenizer.model").read_bytes())
    tok[:4] = b"tune"
    (ft / "tokenizer.model").write_bytes(bytes(tok))
    xorweights.encode(ft, base=root / "base", out=root / "payload")
    return {"base": root / "base", "ft": ft, "payload": root / "payload"}


@pytest.fixture(scope="module")
def native_release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`make_native_release` once per test module."""
    return make_native_release(tmp_path_factory.mktemp("hub-native"))


@pytest.fixture(scope="module")
def legacy_release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A file-level (oasst) release whose first shard is 24 MB: big enough to cut a download midway."""
    root = tmp_path_factory.mktemp("hub-legacy")
    base = write_files(
        root / "base",
        {
            "pytorch_model-00001-of-00002.bin": random_bytes(24_000_000, 11),
            "pytorch_model-00002-of-00002.bin": random_bytes(300_000, 12),
            "config.json": b'{"vocab_size": 32000}\n',
        },
    )
    ft = write_files(
        root / "finetuned",
        {
            "pytorch_model-00001-of-00002.bin": random_bytes(24_000_208, 13),
            "pytorch_model-00002-of-00002.bin": random_bytes(299_990, 14),
            "config.json": b'{"vocab_size": 32016}\n',
            "added_tokens.json": b'{"<|prompter|>": 32000}\n',
        },
    )
    report = xorweights.encode(ft, base=base, out=root / "payload", format="oasst", with_checksums=True)
    assert report.manifest is not None
    manifest = root / "release.json"
    manifest.write_text(json.dumps(report.manifest.to_json()))
    return {"base": base, "ft": ft, "payload": root / "payload", "manifest": manifest}


@pytest.fixture
def delta_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A small fp16 additive delta (fastchat recipe) and its base, as safetensors folders."""
    from tests.delta_models import VOCAB, llama_state, perturbed, save_model

    base = llama_state()
    target = {k: v.half() for k, v in perturbed(base, VOCAB, 7).items()}
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", {k: target[k] - base[k].half() for k in target})
    return tmp_path / "delta", tmp_path / "base"


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """Mounts small tmpfs file systems (root only; skipped, saying so, elsewhere): a real full
    disk (`tmpfs(mib)`), or a read-only one (`tmpfs(read_only=True)`); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(mib: int = 1, read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("needs root to mount a small tmpfs (a real full or read-only disk)")
        where = Path(tempfile.mkdtemp(prefix="xw-tmpfs-"))
        opts = f"size={mib}m" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            where.rmdir()
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()
