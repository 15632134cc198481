"""Run an archived configuration again, from its YAML alone.

    python -m cnnviz.rerun RUN_DIR [--out NEW_DIR] [key=value ...]

Hydra's ``--experimental-rerun`` unpickles ``.hydra/config.pickle``, and a replaced pickle runs any
code the moment it is loaded. This rerun never opens a pickle: it reads the archived
``.hydra/config.yaml`` as data (``cnnviz.app.trust``: ``model._target_`` must name a registered model
loader and no other ``_target_`` may appear), applies the ``key=value`` overrides given after the
folder, and runs the result as ``run.py`` does (``cnnviz.app.cli.run_job``: the same checks, the new
folder's own ``.hydra/``, manifest and exit status). The archived ``.hydra/overrides.yaml`` is read
for information and checked the same way; the new folder records it followed by the extra
overrides, so ``python run.py <those overrides>`` composes the same configuration while ``conf/``
is unchanged.

The output folder is ``--out``, or by default ``<RUN_DIR>-rerun-<YYYY-MM-DD_HH-MM-SS>`` beside the
run; for a job of a multirun sweep (a folder under one holding Hydra's ``multirun.yaml``) it is
``<SWEEP_DIR>-rerun-<time>/<job>``, outside the sweep, whose merge and verify would otherwise take
it for one of its jobs. ``-2``, ``-3`` … are appended when that folder exists. ``--out RUN_DIR
resume=true`` completes an interrupted run in place.

Overrides change values of the archived configuration: ``device=cuda``, ``layer=bn2``,
``method.gradcam.relu=false``; ``+key=value`` adds a key, ``~key`` removes one. Choosing another
preset of a config group (``model=vgg19``) or a sweep (``seed=1,2``) is a new composition:
``python run.py …``.

Exit status as ``run.py``: 0 every item ok, 2 a configuration error (a refused archive included,
nothing computed), 3 some items failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from ..core.errors import ConfigError, close_matches
from .trust import OVERRIDES, check_targets, read_archived_config

EXIT_CONFIG = 2
_ABSENT = object()


def default_out(run: Path, stamp: str) -> Path:
    """The folder a rerun of ``run`` writes into when ``--out`` is not given (see the module docstring)."""
    run = Path(run).absolute()
    sweep = next((p for p in run.parents if (p / "multirun.yaml").is_file()), None)
    base = run.with_name(f"{run.name}-rerun-{stamp}") if sweep is None else \
        sweep.with_name(f"{sweep.name}-rerun-{stamp}") / run.relative_to(sweep)
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _parse(overrides: list[str], source: str) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise ConfigError(f"{source}: {str(e).splitlines()[0]}") from None


def archived_overrides(run: Path) -> list[str]:
    """The run's recorded overrides (``[]`` when it has none), refused when one sets a ``_target_``
    (as its key or inside its value) that is not a registered model loader: they are copied into the
    new archive, where ``python run.py`` would apply them."""
    from ..models.registry import get_loader
    from .trust import targets_in

    path = Path(run) / OVERRIDES
    if not path.is_file():
        return []
    try:
        recorded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:
        raise ConfigError(f"{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(recorded, list) or not all(isinstance(o, str) for o in recorded):
        raise ConfigError(f"{path}: is not a list of overrides")
    for o in _parse(recorded, str(path)):
        value = None if o.is_sweep_override() or o.is_delete() else o.value()
        found = list(targets_in(value, o.key_or_group))
        if o.key_or_group.split(".")[-1] == "_target_" and not o.is_delete():
            found.append((o.key_or_group, value))
        for key, target in found:
            try:
                get_loader(target, key)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
    return recorded


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``cfg`` with ``overrides`` applied as values, validated against the configuration schema
    (a wrong type or an unknown key is a ``ConfigError`` naming the override)."""
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    from .cli import CONF_DIR
    from .schema import Config

    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"the archived configuration does not fit this version of cnnviz "
                          f"({str(e).splitlines()[0]}); run it with the cnnviz that made it") from None
    OmegaConf.set_struct(cfg, True)
    for o in _parse(overrides, "override"):
        key, line = o.key_or_group, o.input_line
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            raise ConfigError(f"{line}: a rerun is one job in this process and takes no Hydra options; "
                              "choose its output folder with --out")
        if o.is_sweep_override():
            raise ConfigError(f"{line}: a rerun runs one configuration, not a sweep; sweep with python run.py -m …")
        value = None if o.type == OverrideType.DEL else o.value()
        if o.package is not None or "/" in key or (key in groups and o.type != OverrideType.DEL
                                                      and not isinstance(value, dict)):
            raise ConfigError(f"{line}: selects a config group; a rerun changes values of the archived "
                              f"configuration ({key.split('/')[0]}.<key>=…); compose a new configuration "
                              "with python run.py …")
        present = OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT
        if o.type == OverrideType.CHANGE and not present:
            near = close_matches(key, _keys(cfg))
            hint = f"; close matches: {', '.join(near)}" if near else ""
            raise ConfigError(f"{line}: '{key}' is not a key of the archived configuration{hint}; "
                              f"add a new key with +{line}")
        if o.type == OverrideType.ADD and OmegaConf.select(cfg, key, default=None) is not None \
                and not isinstance(value, (dict, list)):
            raise ConfigError(f"{line}: '{key}' is already set; change it with {line.lstrip('+')}")
        try:
            if o.type == OverrideType.DEL:
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(cfg, parent) if parent else cfg
                if not present or not isinstance(node, DictConfig):
                    raise ConfigError(f"{line}: '{key}' is not a key of the archived configuration")
                if dataclasses.is_dataclass(OmegaConf.get_type(node)):
                    raise ConfigError(f"{line}: every configuration has '{key}'; set a value instead ({key}=…)")
                with open_dict(node):
                    del node[leaf]
            else:
                OmegaConf.update(cfg, key, value, merge=True, force_add=o.type != OverrideType.CHANGE)  # as Hydra does
        except OmegaConfBaseException as e:
            raise ConfigError(f"{line}: {str(e).splitlines()[0]}") from None
    return cfg


def _keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of ``cfg``, for close matches."""
    out = []
    for key, value in cfg.items_ex(resolve=False):
        out.append(f"{prefix}{key}")
        if isinstance(value, DictConfig) and not value._is_none():  # an unset optional section (select: null)
            out.extend(_keys(value, f"{prefix}{key}."))
    return out


def rerun(run: Path, out: Optional[Path], overrides: list[str]) -> int:
    """Rerun the archived ``run`` into ``out`` (None: ``default_out``); the exit status."""
    from .cli import run_job

    cfg = read_archived_config(run)
    recorded = archived_overrides(run)
    cfg = apply_overrides(cfg, overrides)
    check_targets(cfg, "the configuration after the overrides")
    out = Path(out) if out is not None else default_out(run, time.strftime("%Y-%m-%d_%H-%M-%S"))
    print(f"cnnviz.rerun: {run} -> {out}" + (f" (archived overrides: {' '.join(recorded)})" if recorded else ""),
          file=sys.stderr)
    return run_job(cfg, out, [*recorded, *overrides], key="--out")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cnnviz.rerun", description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="an archived run folder (one job of a sweep)")
    ap.add_argument("--out", type=Path, default=None, help="the new run folder (default: beside the archive)")
    ap.add_argument("overrides", nargs="*", help="key=value changes to the archived configuration")
    args = ap.parse_intermixed_args(argv)
    try:
        return rerun(args.folder, args.out, args.overrides)
    except ConfigError as e:
        print(f"cnnviz.rerun: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG


def command() -> None:
    """``python -m cnnviz.rerun``: log as run.py does, then the exit status of ``main``."""
    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    sys.exit(main())


if __name__ == "__main__":
    command()
