"""Additive-delta releases (Vicuna, LLaVA, Alpaca, Koala): recipes, base checks and the recovery.

`xorweights.decode(delta, base=..., out=..., recipe=...)` is the entry point; see `delta.decode`.
"""
