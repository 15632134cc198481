"""Check config-group choices on the command line before Hydra composes, to suggest close matches.

Hydra itself lists the available options of a group; this adds "did you mean" for typos.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from .errors import ConfigError, close_matches

GROUPS = ("model", "image", "method", "experiment", "metrics")


def _values(override) -> list[str]:
    from hydra.core.override_parser.types import ChoiceSweep, Glob, RangeSweep

    value = override.value()
    if isinstance(value, (ChoiceSweep,)):
        value = value.list
    if isinstance(value, (RangeSweep, Glob)) or value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def unknown_choices(argv: Sequence[str], conf_dir: Path) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in argv if not a.startswith("-") and "=" in a]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:
        return []  # Hydra reports malformed overrides itself
    problems = []
    for o in overrides:
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


def check_choices(argv: Sequence[str], conf_dir: Path) -> None:
    problems = unknown_choices(argv, conf_dir)
    if problems:
        for p in problems:
            print(f"cnnviz: configuration error: {p}", file=sys.stderr)
        sys.exit(2)


__all__ = ["ConfigError", "check_choices", "unknown_choices"]
