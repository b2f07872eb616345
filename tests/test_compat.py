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
