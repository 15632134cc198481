"""Layers are dotted module names, as ``model.named_modules()`` spells them."""
from __future__ import annotations

from torch import nn

from .errors import ConfigError, close_matches


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str, model_name: str | None = None) -> nn.Module:
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = layer_names(model)
    near = close_matches(name, names, n=5)
    model_name = model_name or type(model).__name__
    hint = f"; close matches: {', '.join(near)}" if near else ""
    raise ConfigError(
        f"layer '{name}' not found in {model_name}{hint}. "
        f"Set layer=<dotted module name>; `python scripts/list_layers.py` prints them all"
    )
