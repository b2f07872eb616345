"""A registry: entries by name, each name once, an unknown name refused in words that list the known."""

from __future__ import annotations

from typing import TypeVar

from .errors import InputError

T = TypeVar("T")


class Registry(dict[str, T]):
    """The `what`s by name (a dict, in the order they were added)."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def add(self, name: str, entry: T) -> T:
        """Add `entry` under `name`.

        Raises:
            `InputError`: `name` is taken.
        """
        if name in self:
            raise InputError(f"{self.what} {name!r} is registered already")
        self[name] = entry
        return entry

    def find(self, name: str) -> T:
        """The entry called `name`.

        Raises:
            `InputError`: no such entry (the known ones are listed).
        """
        if name not in self:
            raise InputError(f"unknown {self.what} {name!r}; expected one of {', '.join(self)}")
        return self[name]
