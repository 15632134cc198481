"""What a hyperparameter accepts, declared on its dataclass field and checked in one place.

    @dataclass
    class SmoothGrad(Method):
        n_samples: int = param(50, min=1)
        noise_level: float = param(0.15, min=0)
        variant: str = param("mean", choices=("mean", "sq", "var"))

``param`` is ``dataclasses.field`` with a ``Constraint`` in its metadata: bounds (``min``/``max``
inclusive, ``gt``/``lt`` exclusive; a list value is checked entry by entry) or ``choices`` (a
sequence, or a function returning one, read only when needed). ``check_values(cls, values, prefix)``
checks a dict of values against a class's declarations, so the runner refuses a configuration before
anything is built and the message names the config key ``<prefix>.<field>``; ``check_fields(obj,
prefix)`` checks an object's own values (``Method`` and ``Metric`` call it from ``__post_init__``, so
the library API refuses the same values with the same key). A subclass that redeclares a field with a
plain default (``steps: int = 30``) keeps the constraint its base class declared.

A field's own default is accepted without a lookup (a test checks that every default passes), so a
list of choices that is costly to compute (matplotlib's colormaps) is only read for other values.
Nothing here imports torch: checking a configuration stays cheap.
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from .errors import ConfigError, unknown

_KEY = "cnnviz.constraint"


@dataclass(frozen=True)
class Constraint:
    """Bounds or choices of one field; ``kind`` names the choices in messages (default: the field)."""

    min: Optional[float] = None
    max: Optional[float] = None
    gt: Optional[float] = None
    lt: Optional[float] = None
    choices: Union[Sequence[str], Callable[[], Iterable[str]], None] = None
    kind: Optional[str] = None

    def bounds(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 1]``, ``in [0, 1)`` ..."""
        low = (f"[{_num(self.min)}" if self.min is not None else f"({_num(self.gt)}" if self.gt is not None else None)
        high = (f"{_num(self.max)}]" if self.max is not None else f"{_num(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]

    def valid(self) -> list[str]:
        return [str(c) for c in (self.choices() if callable(self.choices) else self.choices)]

    def accepts(self, v: float) -> bool:
        return ((self.min is None or v >= self.min) and (self.max is None or v <= self.max)
                and (self.gt is None or v > self.gt) and (self.lt is None or v < self.lt))


@dataclass(frozen=True)
class Spec:
    """A field's constraint with what the messages and the checks need from its declaration."""

    constraint: Constraint
    default: Any
    optional: bool
    #: the field holds a list whose every entry the bounds apply to
    each: bool
    #: the field holds integers (bounds messages and generated test values)
    integral: bool

    def problem(self, key: str, value: Any, trust_default: bool = True) -> Optional[ConfigError]:
        """The ConfigError for ``value`` at config key ``key``, or None when it is accepted."""
        c = self.constraint
        if value is None:
            return None if self.optional else ConfigError(f"{key} is null; it must be {self.wanted()}")
        if (trust_default and isinstance(value, (str, int, float)) and type(value) is type(self.default)
                and value == self.default):
            return None
        if c.choices is not None:
            valid = c.valid()
            return None if str(value) in valid else unknown(c.kind or key.rsplit(".", 1)[-1], key, str(value), valid)
        entries = list(value) if self.each and _is_list(value) else [value]
        if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in entries):
            return ConfigError(f"{key}={_show(value)}: it must be {self.wanted()}")
        if not all(c.accepts(float(v)) for v in entries):
            known = self.default is not dataclasses.MISSING and self.default is not None
            default = f" (default {_show(self.default)})" if known else ""
            return ConfigError(f"{key}={_show(value)} is out of range: {'every entry' if self.each else 'it'} must be "
                               f"{c.bounds()}{default}")
        return None

    def wanted(self) -> str:
        what = "an integer" if self.integral else "a number"
        return f"a list of numbers {self.constraint.bounds()}" if self.each else f"{what} {self.constraint.bounds()}"


def param(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
          min: Optional[float] = None, max: Optional[float] = None, gt: Optional[float] = None,
          lt: Optional[float] = None, choices: Union[Sequence[str], Callable[[], Iterable[str]], None] = None,
          kind: Optional[str] = None) -> Any:
    """A dataclass field that declares what it accepts (see the module docstring)."""
    if min is None and max is None and gt is None and lt is None and choices is None:
        raise TypeError("param() declares no bound and no choices; use dataclasses.field")
    if choices is not None and not callable(choices):
        choices = tuple(choices)
    metadata = {_KEY: Constraint(min, max, gt, lt, choices, kind)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@functools.lru_cache(maxsize=None)
def constraints(cls: type) -> dict[str, Spec]:
    """Every constrained field of the dataclass ``cls``, including those declared by its bases."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be evaluated: fall back on the defaults below
        hints = {}
    out = {}
    for f in dataclasses.fields(cls):
        declared = (getattr(k, "__dataclass_fields__", {}).get(f.name) for k in cls.__mro__)
        found = next((d.metadata[_KEY] for d in declared if d is not None and _KEY in d.metadata), None)
        if found is None:
            continue
        hint = hints.get(f.name, Any)
        args = typing.get_args(hint)
        optional = f.default is None or type(None) in args
        inner = next((a for a in args if a is not type(None)), hint) if type(None) in args else hint
        each = typing.get_origin(inner) in (list, tuple) or inner in (list, tuple)
        item = (typing.get_args(inner) or (float,))[0] if each else inner
        out[f.name] = Spec(found, f.default, optional, each, item is int)
    return out


def check_values(cls: type, values: Mapping[str, Any], prefix: str, trust_defaults: bool = True) -> None:
    """A ConfigError naming ``<prefix>.<key>`` for the first value ``cls`` does not accept; keys
    without a declaration are the caller's (or the class's) to check. ``trust_defaults=False``
    checks the defaults too (the test that every default is valid)."""
    specs = constraints(cls)
    for key, value in values.items():
        spec = specs.get(str(key))
        error = spec.problem(f"{prefix}.{key}" if prefix else str(key), value, trust_defaults) if spec is not None else None
        if error is not None:
            raise error


def check_fields(obj: Any, prefix: str) -> None:
    """``check_values`` on the dataclass instance ``obj``'s own field values."""
    check_values(type(obj), {name: getattr(obj, name) for name in constraints(type(obj))}, prefix)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _show(value: Any) -> str:
    if _is_list(value):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


__all__ = ["Constraint", "Spec", "check_fields", "check_values", "constraints", "param"]
