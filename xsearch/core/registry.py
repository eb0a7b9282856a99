"""A small typed registry: ``@REG.register("name")`` on a class or function, ``REG.get(name)``.

Shared by every component kind (spaces, strategies, evaluators, datasets); imports nothing else of
the project.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to implementations of one component kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}."
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


def accepted_arguments(factory: Any) -> set[str]:
    """Keyword arguments ``factory`` accepts; for a class whose ``__init__`` forwards ``**kwargs`` to
    its bases, those of the whole chain."""
    params = inspect.signature(factory).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return set(params)
    names: set[str] = set()
    for klass in getattr(factory, "__mro__", [factory]):
        if "__init__" in vars(klass):
            names |= set(inspect.signature(klass.__init__).parameters) - {"self", "kwargs"}
    return names - unused_settings(factory)


def unused_settings(factory: Any) -> frozenset[str]:
    """Settings a class inherits through ``**kwargs`` but never reads (its ``unused_settings``): not its settings."""
    return frozenset(getattr(factory, "unused_settings", frozenset()))


def call_with_accepted(factory: Any, knobs: dict[str, Any]) -> Any:
    """``factory(**knobs)`` with the knobs it does not accept left out."""
    names = accepted_arguments(factory)
    return factory(**{k: v for k, v in knobs.items() if k in names})
