"""Name -> implementation registries for the kinds of things a config can name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from peftbench.errors import closest

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A config named something that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A named collection filled by a decorator, so adding an entry is one line."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers the decorated object under ``name``."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Returns the entry, or raises an error naming the closest valid names."""
        if name not in self._entries:
            near = closest(name, self._entries)
            hint = f" Did you mean {near}?" if near else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
