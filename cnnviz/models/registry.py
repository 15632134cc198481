"""The one list of model loaders: the functions ``model._target_`` may name.

``@model_loader`` registers a function under its import path (``cnnviz.models.loaders.timm_model``),
so the presets in ``conf/model/*.yaml`` name it as they always did; ``get_loader`` is the only way a
``_target_`` string becomes a function. Anything unregistered is a ``ConfigError`` naming the key:
a configuration (or an archive someone edited) can never make cnnviz call an arbitrary callable
such as ``shutil.rmtree``.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from ..core.errors import ConfigError, close_matches
from ..core.registry import Registry

F = TypeVar("F", bound=Callable[..., Any])


def _load_builtin() -> None:
    from . import benchmark_cnn, detection, loaders, segmentation  # noqa: F401  (importing registers every loader)


LOADERS = Registry("model loader", "model._target_", _load_builtin)


def model_loader(fn: F) -> F:
    """Function decorator: ``fn`` may be named by ``model._target_``, as ``<module>.<name>``.

    A loader takes the model keys it declares (``arch``, ``weights``, ``path``, ``library``,
    ``name``) and ``seed``, and returns a ``cnnviz.models.loaders.LoadedModel``; a duplicate name raises."""
    return LOADERS.register(f"{fn.__module__}.{fn.__qualname__}")(fn)


def loader_names() -> list[str]:
    return LOADERS.names()


#: Where the loaders lived before the package was grouped by role (``cnnviz.models.<fn>``,
#: ``cnnviz.segmentation_models.<fn>``): archives made then name them so, and still verify and rerun.
_FORMER_MODULES = {"cnnviz.models.loaders.": "cnnviz.models.", "cnnviz.models.segmentation.": "cnnviz.segmentation_models."}


def canonical_loader(target: Any) -> Any:
    """A loader's current registered name for ``target``, also when it is a former name; ``target``
    itself when it names no loader."""
    if not isinstance(target, str):
        return target
    LOADERS.load()
    if target in LOADERS.entries:
        return target
    for current, former in _FORMER_MODULES.items():
        if target.startswith(former) and current + target[len(former):] in LOADERS.entries:
            return current + target[len(former):]
    return target


def get_loader(target: Any, key: str = "model._target_") -> Callable[..., Any]:
    """The registered loader ``target`` names (a former name too, see ``canonical_loader``); a
    ``ConfigError`` naming ``key`` for anything else."""
    if not isinstance(target, str):
        raise ConfigError(f"{key} must name a model loader, got {target!r}; valid: {', '.join(loader_names())}")
    target = canonical_loader(target)
    if target not in LOADERS.entries:
        near = close_matches(target, LOADERS.entries)
        hint = f" (close matches: {', '.join(near)})" if near else ""
        raise ConfigError(f"{key}: '{target}' is not a cnnviz model loader{hint}, and cnnviz builds nothing else by "
                          f"name; choose a preset (model=<name>, conf/model/) or one of: {', '.join(loader_names())}")
    return LOADERS.entries[target]


