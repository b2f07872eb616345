"""The one dtype table agrees with numpy, torch and safetensors themselves."""

from __future__ import annotations

import numpy as np
import pytest

from xorweights.tensors.dtypes import DTYPES, FLOAT_DTYPES, STORAGE_DTYPES, STORAGE_TYPES


def test_sizes_and_numpy_types_agree_with_numpy() -> None:
    for d in DTYPES.values():
        assert np.dtype(d.numpy).itemsize == d.size, d.name
    assert FLOAT_DTYPES == ("F16", "BF16", "F32", "F64")
    assert {v: k for k, v in STORAGE_TYPES.items()} == {s: dt for s, (dt, _) in STORAGE_DTYPES.items()}


def test_names_agree_with_safetensors_and_torch() -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import _TYPES  # safetensors' own name -> torch dtype table

    for d in DTYPES.values():
        if d.torch is not None:
            t = getattr(torch, d.torch)
            assert t.itemsize == d.size, d.name
            if d.name in _TYPES:
                assert _TYPES[d.name] == t, d.name
        if d.storage is not None:
            assert getattr(torch, d.storage)().element_size() == d.size, d.storage
    assert set(DTYPES) <= set(_TYPES)  # every dtype we read is one safetensors defines
