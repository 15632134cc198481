"""An archive is data, never code: what a configuration may make cnnviz build.

A configuration names one thing to build by an import path, ``model._target_``. Resolving that
string with ``hydra.utils.get_method`` would call *any* importable callable with the model's keys as
arguments: ``_target_: shutil.rmtree`` with ``model.path`` on a folder deletes the folder. A run
folder's ``.hydra/config.yaml`` is read back by ``cnnviz.verify`` and ``cnnviz.rerun`` and can be
edited by anyone who can write to it, so:

- ``model._target_`` is looked up in ``LOADERS``, the strict registry of the functions
  ``conf/model/*.yaml`` name (``@model_loader`` registers a function under its import path, so the
  presets' strings keep working); anything else is a ``ConfigError`` naming the key, the value and
  the valid loaders. This holds for the configurations a user composes too (``cnnviz.app.plan``).
- Methods and metrics are built from their registered names (``cnnviz.core.registry``, ``cnnviz.metrics``);
  nothing else in a configuration is ever built, so ``read_archived_config`` refuses a ``_target_``
  key anywhere (any depth, in lists, after interpolation) unless it names a registered loader.

Example::

    from cnnviz.models.registry import get_loader
    get_loader("cnnviz.models.loaders.timm_model")   # the function
    get_loader("shutil.rmtree")              # ConfigError: model._target_: 'shutil.rmtree' is not a cnnviz model loader ...
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from ..core.errors import ConfigError
from ..models.registry import get_loader, loader_names

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"


def targets_in(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every ``_target_`` key in a plain container, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield path, value
            else:
                yield from targets_in(value, path)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from targets_in(value, f"{where}[{i}]")


def check_targets(cfg: DictConfig, source: str) -> None:
    """``ConfigError`` unless every ``_target_`` in ``cfg`` names a registered model loader.

    The configuration is walked as written and once more with its interpolations resolved
    (``${oc.create:...}`` can make a ``_target_`` that the text does not show); a configuration
    whose interpolations cannot be resolved is refused too. ``source`` starts the messages."""
    try:
        written = OmegaConf.to_container(cfg, resolve=False)
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # any OmegaConf error names the key it stopped at
        raise ConfigError(f"{source}: cannot be read as a configuration ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]})") from None
    for tree in (written, resolved):
        for key, value in targets_in(tree, ""):
            try:
                get_loader(value, key)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None


def read_archived_config(folder: Path) -> DictConfig:
    """A run folder's ``.hydra/config.yaml``, read as data (YAML's safe loader, no pickle) and
    checked by ``check_targets``; a missing or unreadable file is a ``ConfigError``."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise ConfigError(f"{folder}: no archived run here ({CONFIG} is missing); give a run folder that cnnviz wrote")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:
        raise ConfigError(f"{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: holds a {type(cfg).__name__}, not a configuration")
    check_targets(cfg, str(path))
    return cfg
