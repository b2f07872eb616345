"""Without torch installed: `framework="pt"` is refused with a typed error naming the extra to
install, before the payload is located or downloaded; `framework="numpy"` works as everywhere.

Each test runs a Python where `import torch` fails (`sys.modules["torch"] = None`, as in an
install without the `torch` extra), against a real payload: a folder, and a repo served by the
test Hub (tests/hubserver.py), whose request log shows whether anything was asked of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import xorweights
from tests.conftest import write_files
from tests.hubserver import TOKEN

#: Run first in each child: `import torch` then raises ImportError, as where torch is not installed.
NO_TORCH = "import sys; sys.modules['torch'] = None\n"
MESSAGE = '`framework="pt"` needs torch, which is not installed: pip install "xorweights[torch]"'

#: In the child: call `xorweights.<fn>(*args, **kw)` and print what it raised, or the tensors' names.
CALL = """
import json, xorweights
fn, args, kw = json.loads(sys.argv[1])
try:
    got = dict(getattr(xorweights, fn)(*args, **kw))
    out = {"names": sorted(got), "types": sorted({type(t).__module__ for t in got.values()})}
except Exception as e:
    typed = isinstance(e, xorweights.XorWeightsError)
    out = {"type": type(e).__name__, "message": str(e), "typed": typed, "cause": type(e.__cause__).__name__}
try:
    import torch
    out["torch"] = "imported"
except ImportError:
    out["torch"] = "blocked"
print(json.dumps(out))
"""


def child(fn: str, *args: object, **kw: object) -> dict[str, object]:
    """What `xorweights.<fn>(*args, **kw)` gives in a Python without torch."""
    call = json.dumps(
        [fn, [str(a) for a in args], {k: str(v) if isinstance(v, Path) else v for k, v in kw.items()}]
    )
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH + CALL, call], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    out = json.loads(done.stdout)
    assert out.pop("torch") == "blocked"
    return out


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A small native payload and its base (numpy float32), and the fine-tuned tensors."""
    root = tmp_path_factory.mktemp("no-torch")
    rng = np.random.default_rng(3)
    base = {f"w{i}": rng.standard_normal((16, 8)).astype(np.float32) for i in range(2)}
    tuned = {n: t + np.float32(0.5) for n, t in base.items()}
    save_file(base, str(write_files(root / "base", {}) / "model.safetensors"))
    save_file(tuned, str(write_files(root / "ft", {}) / "model.safetensors"))
    xorweights.encode(root / "ft", base=root / "base", out=root / "payload")
    return {"root": root, "base": root / "base", "payload": root / "payload", "tuned": tuned}


@pytest.mark.parametrize("fn", ["load_state_dict", "iter_tensors"])
def test_pt_without_torch_is_a_typed_error_naming_the_extra(payload, fn: str) -> None:
    got = child(fn, payload["payload"], payload["base"], framework="pt")
    assert got == {"type": "InputError", "message": MESSAGE, "typed": True, "cause": "ModuleNotFoundError"}


def test_load_state_dict_defaults_to_pt(payload) -> None:
    assert child("load_state_dict", payload["payload"], payload["base"])["message"] == MESSAGE


@pytest.mark.parametrize("fn", ["load_state_dict", "iter_tensors"])
def test_the_framework_is_checked_before_the_payload_is_located(payload, tmp_path: Path, fn: str) -> None:
    missing = tmp_path / "no-such-payload"
    # The same call with numpy locates the payload, and fails on it: it is not there.
    assert child(fn, missing, payload["base"], framework="numpy")["type"] == "MissingFileError"
    assert child(fn, missing, payload["base"], framework="pt")["message"] == MESSAGE


@pytest.mark.hub
def test_a_repo_id_is_not_downloaded_when_torch_is_missing(payload, hub, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(payload["payload"], repo)
    hub.state.add_folder("me/tensors", repo)
    kw = {"endpoint": hub.url, "token": TOKEN, "cache_dir": tmp_path / "hf-cache"}
    for fn in ("load_state_dict", "iter_tensors"):
        assert child(fn, "me/tensors", payload["base"], framework="pt", **kw)["message"] == MESSAGE
    assert hub.state.requests == [] and not (tmp_path / "hf-cache").exists()
    # numpy downloads it, rebuilds every tensor and proves it (in the same Python without torch).
    got = child("load_state_dict", "me/tensors", payload["base"], framework="numpy", **kw)
    assert got == {"names": ["w0", "w1"], "types": ["numpy"]}
    assert hub.state.requests


def test_numpy_works_without_torch(payload) -> None:
    for fn in ("load_state_dict", "iter_tensors"):
        got = child(fn, payload["payload"], payload["base"], framework="numpy")
        assert got == {"names": ["w0", "w1"], "types": ["numpy"]}
    values = xorweights.load_state_dict(payload["payload"], payload["base"], framework="numpy")
    assert all(np.array_equal(values[n], t) for n, t in payload["tuned"].items())


def test_an_unknown_framework_is_refused_when_called(payload) -> None:
    with pytest.raises(xorweights.InputError, match="unknown framework 'jax'; expected numpy or pt"):
        xorweights.iter_tensors(payload["payload"] / "missing", payload["base"], framework="jax")  # type: ignore[arg-type]
