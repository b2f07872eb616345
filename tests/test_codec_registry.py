"""The registries are the extension points: a new recipe is one entry, made in this test module,
with no change to any package file; the CLI takes its choices from the registries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import xorweights
from xorweights.cli import main
from xorweights.codecs import CODECS, encodable
from xorweights.delta.recipes import RECIPES, Recipe, register


def _double(base: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The toy recipe's arithmetic: `base + 2 * delta`, in float32, stored as float32."""
    return base.astype(np.float32) + 2 * delta.astype(np.float32)


@pytest.fixture
def double_recipe():
    entry = register(Recipe("double", "a test's own recipe", "F32", "F32", "refuse", combine=_double))
    yield entry
    del RECIPES[entry.name]


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a model folder (safetensors, or torch `.bin` files read with torch)."""
    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    for f in sorted(folder.glob("*.bin")):
        import torch

        out.update({k: v.numpy() for k, v in torch.load(f, weights_only=True).items() if "inv_freq" not in k})
    return out


def test_a_toy_recipe_is_one_registry_entry(double_recipe, delta_pair, tmp_path: Path) -> None:
    delta, base = delta_pair
    report = xorweights.decode(delta, base=base, out=tmp_path / "out", recipe="double")
    assert report.format == "delta:double"
    got, base_t, delta_t = _tensors(tmp_path / "out"), _tensors(base), _tensors(delta)
    assert set(got) == set(delta_t)
    for name, d in delta_t.items():
        want = base_t[name].astype(np.float32) + 2 * d.astype(np.float32)
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], want)
    # the recipe is not the fastchat one: the same pair recovers otherwise there
    plain = xorweights.decode(delta, base=base, out=tmp_path / "plain", recipe="fastchat")
    assert plain.format == "delta:fastchat"
    some = next(iter(delta_t))
    assert not np.array_equal(_tensors(tmp_path / "plain")[some].astype(np.float32), got[some])


def test_the_cli_takes_its_recipes_from_the_registry(
    double_recipe, delta_pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    delta, base = delta_pair
    code = main(
        ["decode", str(delta), "--base", str(base), "--out", str(tmp_path / "o"), "--recipe", "double", "-q"]
    )
    assert code == 0
    assert (tmp_path / "o" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["decode", "--help"]) == 0
    helped = capsys.readouterr().out
    for name in RECIPES:
        assert name in helped


def test_unregistered_recipe_is_refused_with_the_registered_ones(delta_pair, tmp_path: Path) -> None:
    delta, base = delta_pair
    with pytest.raises(xorweights.InputError, match="unknown recipe 'double'; expected one of fastchat"):
        xorweights.decode(delta, base=base, out=tmp_path / "o", recipe="double")


def test_the_registries_hold_every_format_and_recipe() -> None:
    assert set(CODECS) == {"oasst", "xorweights", "delta"}
    assert encodable() == tuple(n for n in CODECS if n != "delta")
    assert {"fastchat", "fastchat-v0", "llava", "alpaca", "koala"} <= set(RECIPES)
    assert RECIPES["koala"].open_delta is not None and RECIPES["alpaca"].sum_file == "model_sum.txt"
