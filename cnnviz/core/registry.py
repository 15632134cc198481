"""The one list of technique names: ``@register(name)`` and the strict ``Registry`` behind it; the
same class also holds the metrics (``cnnviz.metrics``) and the model loaders (``cnnviz.models``).

The registry imports no technique. The package that owns the entries declares them
(``Registry.declare(name, module)``, one module per name, nothing imported), and a name's module is
imported the first time the name is looked up, where its ``@register`` adds the class. So listing
names and checking a configuration need neither torch nor the techniques. Look names up through
the owning package: ``cnnviz.methods.get_method`` / ``list_methods`` (also ``cnnviz.get_method``).
"""
from __future__ import annotations

import importlib
from typing import Callable, Iterator, Mapping, Optional, TypeVar

from .errors import unknown

T = TypeVar("T", bound=type)


class Registry:
    """Classes by name: a duplicate name raises, an unknown one lists close matches.

    ``declare`` names a module that will register a name, without importing it; ``get`` imports it on
    first use. ``load`` (optional) is called before any lookup: it imports the package whose
    ``__init__`` declares (or registers) the entries."""

    def __init__(self, kind: str, key: str, load: Optional[Callable[[], None]] = None):
        self.kind, self.key, self.load = kind, key, load or (lambda: None)
        self.entries: dict[str, type] = {}  # classes registered (their modules imported)
        self.declared: dict[str, str] = {}  # name -> module that registers it, imported on first use

    def declare(self, name: str, module: str) -> None:
        """``module`` registers ``name`` when imported; a name declared twice by two modules raises."""
        owner = self.declared.get(name)
        if owner is not None and owner != module:
            raise ValueError(f"{self.kind} name '{name}' is already declared by {owner}")
        self.declared[name] = module

    def register(self, name: str) -> Callable[[T], T]:
        def add(cls: T) -> T:
            declared = self.declared.get(name)
            if name in self.entries or (declared is not None and declared != cls.__module__):
                by = (f"{self.entries[name].__module__}.{self.entries[name].__qualname__}" if name in self.entries
                      else declared)
                raise ValueError(f"{self.kind} name '{name}' is already registered by {by}")
            cls.name = name
            self.entries[name] = cls
            return cls

        return add

    def get(self, name: str) -> type:
        self.load()
        if name not in self.entries and name in self.declared:
            importlib.import_module(self.declared[name])
        try:
            return self.entries[name]
        except KeyError:
            raise unknown(self.kind, self.key, name, self.names()) from None

    def names(self) -> list[str]:
        """Every name, registered or declared (no module imported beyond ``load``'s)."""
        self.load()
        return sorted(set(self.entries) | set(self.declared))


class _Classes(Mapping):
    """Name -> class, importing a declared name's module on first access."""

    def __init__(self, registry: Registry):
        self._registry = registry

    def __getitem__(self, name: str) -> type:
        if name not in self._registry.entries and name not in self._registry.declared:
            raise KeyError(name)
        return self._registry.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(set(self._registry.entries) | set(self._registry.declared)))

    def __len__(self) -> int:
        return len(set(self._registry.entries) | set(self._registry.declared))


#: the techniques; ``cnnviz.methods`` declares one module per name
METHODS = Registry("method", "method")
_REGISTRY: Mapping[str, type] = _Classes(METHODS)


def register(name: str) -> Callable[[T], T]:
    """Class decorator adding a technique under ``name``; a duplicate name raises."""
    return METHODS.register(name)
