"""The one dtype table agrees with numpy, torch and safetensors themselves."""

from __future__ import annotations

import numpy as np
import pytest

from xorweights.tensors.dtypes import (
    DTYPE_SIZES,
    DTYPES,
    FLAX_DTYPES,
    FLOAT_DTYPES,
    SAFETENSORS_ORDER,
    STORAGE_DTYPES,
    STORAGE_TYPES,
)


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


def test_the_other_vocabularies_name_dtypes_of_the_table() -> None:
    """flax's names are numpy's (bfloat16 being ml_dtypes'), for the floats; the safetensors enum
    order ranks every dtype of the table."""
    assert set(FLAX_DTYPES.values()) == set(FLOAT_DTYPES)
    for name, dtype in FLAX_DTYPES.items():
        if name != "bfloat16":
            assert np.dtype(name).itemsize == DTYPE_SIZES[dtype], name
    assert set(DTYPES) <= set(SAFETENSORS_ORDER)
    assert len(set(SAFETENSORS_ORDER)) == len(SAFETENSORS_ORDER)
