"""Additive-delta releases (Vicuna, LLaVA, Alpaca, Koala): recipes, base checks and the recovery.

`xorweights.decode(delta, base=..., out=..., recipe=...)` is the entry point; see `delta.decode`.
The recipes are a registry (`delta.recipes`): the table's entries there, Koala's in `delta.koala`
(its delta is read by a function of its own), both registered when this package is imported.
"""

from . import koala, recipes

__all__ = ["koala", "recipes"]
