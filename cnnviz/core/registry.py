"""The one list of technique names: ``@register(name)``, ``get_method``, ``list_methods``; the same
strict ``Registry`` also holds the metrics (``cnnviz.metrics``)."""
from __future__ import annotations

from typing import Callable, TypeVar

from .errors import unknown

T = TypeVar("T", bound=type)


class Registry:
    """Classes by name: a duplicate name raises, an unknown one lists close matches; ``load``
    imports the package whose modules register themselves."""

    def __init__(self, kind: str, key: str, load: Callable[[], None]):
        self.kind, self.key, self.load = kind, key, load
        self.entries: dict[str, type] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(cls: T) -> T:
            if name in self.entries:
                raise ValueError(
                    f"{self.kind} name '{name}' is already registered by {self.entries[name].__module__}."
                    f"{self.entries[name].__qualname__}"
                )
            cls.name = name
            self.entries[name] = cls
            return cls

        return add

    def get(self, name: str) -> type:
        self.load()
        try:
            return self.entries[name]
        except KeyError:
            raise unknown(self.kind, self.key, name, self.entries) from None

    def names(self) -> list[str]:
        self.load()
        return sorted(self.entries)


def _load_builtin() -> None:
    from .. import methods  # noqa: F401  (importing registers every technique)


METHODS = Registry("method", "method", _load_builtin)
_REGISTRY = METHODS.entries


def register(name: str) -> Callable[[T], T]:
    """Class decorator adding a technique under ``name``; a duplicate name raises."""
    return METHODS.register(name)


def get_method(name: str) -> type:
    """The technique class registered as ``name``; an unknown name lists close matches."""
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()
