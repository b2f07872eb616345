"""Beside a training stack: transformers 4.57 (which caps huggingface_hub below 1.0) and xorweights
install together and import in one process.

Runs where transformers is installed: the old-huggingface_hub stage of `.ci/run`.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytestmark = pytest.mark.hub


def test_pip_check_passes_beside_transformers() -> None:
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_transformers_and_xorweights_import_together() -> None:
    code = (
        "import huggingface_hub, transformers, transformers.utils.hub, xorweights, xorweights.cli, "
        "xorweights.hub, xorweights.hub.publishing\n"
        "from importlib.metadata import requires\n"
        "from packaging.requirements import Requirement\n"
        "wanted = next(r for r in map(Requirement, requires('xorweights')) if r.name == 'huggingface-hub')\n"
        "assert huggingface_hub.__version__ in wanted.specifier, (huggingface_hub.__version__, wanted)\n"
        "print(transformers.__version__, huggingface_hub.__version__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    transformers_version, hub_version = done.stdout.split()
    if transformers_version.startswith("4."):  # the install kept huggingface_hub below 1.0
        assert hub_version.startswith("0."), hub_version


def test_from_pretrained_loads_a_decoded_folder_and_ignores_its_records(tmp_path) -> None:
    """The output folder's records (`.cache/huggingface/xorweights/`) are invisible to transformers:
    a decoded folder loads as the fine-tune itself, every weight equal."""
    import torch
    from transformers import LlamaForCausalLM

    import xorweights
    from tests.delta_models import VOCAB, llama_state, perturbed, save_model

    base_sd = llama_state(inv_freq=False)
    ft_sd = perturbed(base_sd, VOCAB, 3)
    base = save_model(tmp_path / "base", base_sd, container="safetensors")
    ft = save_model(tmp_path / "ft", ft_sd, container="safetensors")
    xorweights.encode(ft, base=base, out=tmp_path / "payload")
    out = tmp_path / "out"
    xorweights.decode(tmp_path / "payload", base=base, out=out)
    assert any((out / ".cache" / "huggingface" / "xorweights").iterdir())  # the records are there
    model = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float16)
    loaded = model.state_dict()
    for name, want in ft_sd.items():
        assert torch.equal(loaded[name], want.half()), name
