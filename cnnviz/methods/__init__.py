"""The techniques, one module each (``<name>.py`` registers the technique ``name``), their shared
bases (``base.py``, ``optimization.py``) and private helpers used by one or two of them
(``_lrp_rules.py``, ``_occlusion_incremental.py``, ``_segmentation_ops.py``). A technique imports only
the core (hooks, targets, passes, the ``Attribution`` type, the registry) and the opt-in accelerations
of ``cnnviz.speed`` — never the runner, rendering or Hydra. Importing this package imports no
technique: it declares each module under its file name in the core registry, and ``get_method(name)``
imports that one module when first asked for it (``list_methods()`` reads file names only)."""
from __future__ import annotations

import pkgutil

from ..core.registry import METHODS

#: modules here that are not techniques: the shared bases
_BASES = {"base", "optimization"}

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name not in _BASES:
        METHODS.declare(_info.name, f"{__name__}.{_info.name}")


def get_method(name: str) -> type:
    """The technique class registered as ``name`` (its module imported now); an unknown name lists
    close matches."""
    return METHODS.get(name)


def list_methods() -> list[str]:
    """Every technique's name, without importing any technique."""
    return METHODS.names()


__all__ = ["get_method", "list_methods"]
