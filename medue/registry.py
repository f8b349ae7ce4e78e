"""A small generic registry with did-you-mean lookup (after MONAI ``look_up_option``)."""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from medue.errors import UnknownComponentError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lowercase keys to components of one family (protectors, readers, metrics…).

    Args:
        family: Human name of the family, used in error messages (e.g. ``"protector"``).
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, key: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        for name in (key, *aliases):
            if name != name.lower():
                raise ValueError(f"{self.family} keys must be lowercase, got {name!r}")
            if name in self._items or name in self._aliases:
                raise ValueError(f"{self.family} {name!r} is already registered")
        self._items[key] = obj
        for alias in aliases:
            self._aliases[alias] = key

    def get(self, key: str) -> T:
        """Return the component for ``key``; unknown keys raise with close matches and the full list."""
        name = self._aliases.get(key, key)
        if name in self._items:
            return self._items[name]
        known = sorted([*self._items, *self._aliases])
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownComponentError(f"unknown {self.family} {key!r}{hint} available: {', '.join(sorted(self._items))}")

    def canonical(self, key: str) -> str:
        self.get(key)
        return self._aliases.get(key, key)

    def keys(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())
