"""The one list of technique names: ``@register(name)``, ``get_method``, ``list_methods``."""
from __future__ import annotations

from typing import Callable, TypeVar

from .errors import unknown

_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator adding a technique under ``name``; a duplicate name raises."""

    def add(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(
                f"method name '{name}' is already registered by {_REGISTRY[name].__module__}."
                f"{_REGISTRY[name].__qualname__}"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def _load_builtin() -> None:
    from . import methods  # noqa: F401  (importing registers every technique)


def get_method(name: str) -> type:
    """The technique class registered as ``name``; an unknown name lists close matches."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown("method", "method", name, _REGISTRY) from None


def list_methods() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)
