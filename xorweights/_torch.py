"""torch, which is optional (`xorweights[torch]`): imported where a caller asked for torch tensors,
or a typed error naming the extra to install."""

from __future__ import annotations

from typing import Any

from .errors import InputError

#: What to install for torch tensors.
TORCH_EXTRA = 'pip install "xorweights[torch]"'


def require_torch(purpose: str) -> Any:
    """The torch module, for `purpose` (what the caller asked for, in the library's words).

    Raises:
        `InputError`: torch is not installed (or cannot be imported); the message names `purpose`
            and the extra to install.
    """
    try:
        import torch
    except ImportError as e:
        raise InputError(f"{purpose} needs torch, which is not installed: {TORCH_EXTRA}") from e
    return torch
