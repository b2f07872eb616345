"""Boolean environment switches, read when asked (not at import, so that tests can set them)."""

from __future__ import annotations

import os

ENV_VARS_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})


def is_true(value: str | None) -> bool:
    """Whether an environment value means "on" (`1`, `yes`, `true`, `on`, any case)."""
    return value is not None and value.strip().upper() in ENV_VARS_TRUE_VALUES


def env_flag(name: str) -> bool:
    """Read a boolean environment switch now (not at import, so tests can set it)."""
    return is_true(os.environ.get(name))
