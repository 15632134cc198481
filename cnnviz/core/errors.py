"""Errors a user can fix by changing the configuration."""
from __future__ import annotations

import difflib
from typing import Iterable


class ConfigError(ValueError):
    """A configuration problem, reported before (or instead of) doing any work.

    The message names the config key and says how to fix it.
    """


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(str(word), list(candidates), n=n, cutoff=0.5)


def unknown(kind: str, key: str, value: str, valid: Iterable[str]) -> ConfigError:
    """A ConfigError for an unknown name, listing close matches and the valid names."""
    valid = sorted(valid)
    near = close_matches(value, valid)
    msg = f"unknown {kind} '{value}' ({key})"
    if near:
        msg += f"; close matches: {', '.join(near)}"
    shown = ", ".join(valid[:40]) + (" ..." if len(valid) > 40 else "")
    return ConfigError(f"{msg}; valid: {shown}")
