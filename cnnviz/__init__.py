"""cnnviz: configuration-driven CNN visualization experiments.

The public API: ``explain``, ``get_method``, ``list_methods``, ``register``, ``Attribution``,
``ConfigError``. Each is imported on first access (PEP 562), so ``import cnnviz`` — and the command
line's configuration checks — need neither torch nor the techniques; importing changes nothing in
the process.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> (module, attribute)
_API = {
    "Attribution": ("cnnviz.core.attribution", "Attribution"),
    "ConfigError": ("cnnviz.core.errors", "ConfigError"),
    "explain": ("cnnviz.api", "explain"),
    "get_method": ("cnnviz.methods", "get_method"),
    "list_methods": ("cnnviz.methods", "list_methods"),
    "register": ("cnnviz.core.registry", "register"),
}

__all__ = sorted(_API)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'cnnviz' has no attribute '{name}'") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
