"""Check config-group choices and keys on the command line before Hydra composes, to suggest close
matches.

Hydra itself lists the available options of a group; this adds "did you mean" for typos. For an
unknown key Hydra only says "Key 'samples' is not in struct": ``method.<name>.<key>`` and
``metrics.<name>.<key>`` are checked against the keys of ``conf/<group>/<name>.yaml`` (plus ``layer``
for a method), and ``render.<key>``, ``model.<key>``, ``model.preprocess.<key>`` against the
structured-config schema. Only YAML is read, no technique is imported: this runs before Hydra and
must stay cheap. Keys appended with ``+`` are left to ``plan.build_methods`` / ``build_metrics``.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..core.errors import ConfigError, close_matches, unknown

GROUPS = ("model", "image", "method", "experiment", "metrics")


def _values(override) -> list[str]:
    from hydra.core.override_parser.types import ChoiceSweep, Glob, RangeSweep

    value = override.value()
    if isinstance(value, (ChoiceSweep,)):
        value = value.list
    if isinstance(value, (RangeSweep, Glob)) or value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _overrides(argv: Sequence[str]) -> list:
    """Hydra's parse of the ``key=value`` arguments; none when they are malformed (Hydra reports that itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-") and "=" in a])
    except Exception:
        return []


def unknown_choices(argv: Sequence[str], conf_dir: Path) -> list[str]:
    problems = []
    for o in _overrides(argv):
        group = o.key_or_group.lstrip("+~")
        if group not in GROUPS or o.package or o.is_delete():
            continue
        options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        for v in _values(o):
            if v not in options and v != "null":
                near = close_matches(v, options)
                hint = f"; close matches: {', '.join(near)}" if near else ""
                problems.append(f"unknown {group} '{v}' ({group}={v}){hint}; valid: {', '.join(options)}")
    return problems


#: group -> (what one option is called, what its keys are called, keys every option accepts besides its YAML's)
_OPTION_KEYS = {"method": ("method", "hyperparameter", ("layer",)), "metrics": ("metric", "option", ())}


def _schema_keys(parts: list[str]) -> Optional[tuple[str, list[str]]]:
    """The section a dotted key lies in (``render``, ``model``, ``model.preprocess``) and its valid
    keys, for keys the structured-config schema fixes; None for any other key."""
    from .schema import ModelConfig, PreprocessConfig, RenderConfig

    schemas = {("render",): RenderConfig, ("model",): ModelConfig, ("model", "preprocess"): PreprocessConfig}
    for depth in (2, 1):
        schema = schemas.get(tuple(parts[:depth]))
        if schema is not None and len(parts) > depth:
            return ".".join(parts[:depth]), [f.name for f in dataclasses.fields(schema)]
    return None


def unknown_keys(argv: Sequence[str], conf_dir: Path) -> list[str]:
    """Problems with the keys that ``argv``'s overrides change: a mistyped hyperparameter, metric
    option, render / model / preprocess key, or the name of a technique or metric that has no config."""
    from hydra.core.override_parser.types import OverrideType

    problems = []
    for o in _overrides(argv):
        if o.type != OverrideType.CHANGE or o.package:
            continue  # appended keys are checked when the plan is built; deletions are Hydra's
        key = o.key_or_group
        parts = key.split(".")
        if parts[0] in _OPTION_KEYS and len(parts) >= 3:
            group, name, word = parts[0], parts[1], parts[2]
            kind, what, extra = _OPTION_KEYS[group]
            path = conf_dir / group / f"{name}.yaml"
            if not path.is_file():
                options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
                problems.append(str(unknown(kind, key, name, options)))
                continue
            valid = sorted(set(_yaml_keys(path)) | set(extra))
            if word not in valid:
                problems.append(f"{group}.{name}.{word}: unknown {what} of {name}{_near(word, valid)}; "
                                f"valid: {', '.join(valid) or 'none'}")
            continue
        section = _schema_keys(parts)
        if section is not None:
            where, valid = section
            word = parts[len(where.split("."))]
            if word not in valid:
                problems.append(f"{where}.{word}: unknown key{_near(word, valid)}; valid: {', '.join(valid)}")
    return problems


def _yaml_keys(path: Path) -> list[str]:
    import yaml

    data = yaml.safe_load(path.read_text())
    return [str(k) for k in data] if isinstance(data, dict) else []


def _near(word: str, valid: Sequence[str]) -> str:
    near = close_matches(word, valid)
    return f"; close matches: {', '.join(near)}" if near else ""


def check_choices(argv: Sequence[str], conf_dir: Path) -> None:
    problems = unknown_choices(argv, conf_dir) + unknown_keys(argv, conf_dir)
    if problems:
        for p in problems:
            print(f"cnnviz: configuration error: {p}", file=sys.stderr)
        sys.exit(2)


__all__ = ["ConfigError", "check_choices", "unknown_choices", "unknown_keys"]
