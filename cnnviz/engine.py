"""The engine: techniques computed on one model, input and target, sharing their passes.

``compute`` runs one technique (one Attribution per layer); ``compute_group`` runs several on the
same input and target, one shared gradient pass per backward rule; ``compute_batch`` runs a group on
a batch of images with a target per image and gives each image its own results. The runner and
``explain`` call these, so a notebook result and a runner result come from one code path.

Both take a ``speed`` (``cnnviz.speed.Speed``): the accelerations applied around the call. None
keeps those of the enclosing scope (the runner applies its configuration's around a whole run, its
metrics included); the library's own default, outside any scope, is every acceleration off.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from .core.attribution import Attribution
from .core.passes import BackwardRule, shared_passes
from .core.targets import Target
from .methods.base import Method
from .speed import Speed, applied


@dataclass(frozen=True)
class ItemResult:
    """One technique's outcome on one input and target: its Attributions (one per layer), or the
    exception that stopped it (kept, so that the runner records it and the other items still run),
    and the milliseconds it took, its share of the shared passes included."""

    attributions: Optional[list[Attribution]]
    error: Optional[Exception] = None
    ms: float = 0.0

    @classmethod
    def failed(cls, error: Exception, ms: float = 0.0) -> "ItemResult":
        return cls(None, error, ms)


def _scope(speed: Optional[Speed]):
    return applied(speed) if speed is not None else nullcontext()


def compute(method: Method, model: nn.Module, x: torch.Tensor, target: Target, layers: Sequence[str],
            speed: Optional[Speed] = None) -> list[Attribution]:
    """Every Attribution of one call: one per layer for layer techniques (one shared pass), else one.
    ``speed``: the accelerations for this call (None: those of the enclosing scope)."""
    with _scope(speed):
        if method.needs_layer:
            return method.attribute_layers(model, x, target, list(layers))
        return [method(model, x, target)]


def compute_group(methods: dict[str, Method], model: nn.Module, x: torch.Tensor, target: Target,
                  layers: dict[str, Sequence[str]], speed: Optional[Speed] = None) -> dict[str, ItemResult]:
    """Several techniques on one image and target, sharing their gradient passes: one pass per
    backward rule serves every technique that asks for it (vanilla, input x gradient and every
    gradient CAM at every layer from one plain pass; guided backprop and guided Grad-CAM from one
    guided pass). Per technique: an ``ItemResult``, its Attributions (or the exception) and its share
    of the time in milliseconds. The results equal those of calling each technique on its own.
    ``speed``: the accelerations for this call (None: those of the enclosing scope)."""
    with _scope(speed):
        return _compute_group(methods, model, x, target, layers)


def _compute_group(methods: dict[str, Method], model: nn.Module, x: torch.Tensor, target: Target,
                   layers: dict[str, Sequence[str]]) -> dict[str, ItemResult]:
    requests = {name: m.pass_requests(layers[name]) if m.shares_passes else [] for name, m in methods.items()}
    by_rule: dict[BackwardRule, list] = {}
    for reqs in requests.values():
        for r in reqs:
            by_rule.setdefault(r.rule, []).append(r)
    passes: dict[BackwardRule, Any] = {}
    pass_ms: dict[BackwardRule, float] = {}
    for rule, reqs in by_rule.items():
        start = time.perf_counter()
        try:
            passes.update(shared_passes(model, x, target, reqs))
        except Exception as e:  # every technique that needs this pass reports it
            passes[rule] = e
        pass_ms[rule] = (time.perf_counter() - start) * 1000.0
    users = {rule: sum(any(r.rule == rule for r in reqs) for reqs in requests.values()) for rule in by_rule}
    out: dict[str, ItemResult] = {}
    for name, m in methods.items():
        start = time.perf_counter()
        rules = list(dict.fromkeys(r.rule for r in requests[name]))
        shared_ms = sum(pass_ms[rule] / users[rule] for rule in rules)
        try:
            failed = [passes[rule] for rule in rules if isinstance(passes[rule], Exception)]
            if failed:
                raise failed[0]
            result = m.from_passes(model, x, target, layers[name], passes) if rules else compute(m, model, x, target, layers[name])
            error = None
        except Exception as e:
            result, error = None, e
        out[name] = ItemResult(result, error, shared_ms + (time.perf_counter() - start) * 1000.0)
    return out


def compute_batch(methods: dict[str, Method], model: nn.Module, x: torch.Tensor, targets: Sequence[Target],
                  layers: dict[str, Sequence[str]], speed: Optional[Speed] = None,
                  seed: Optional[int] = None) -> dict[str, list[ItemResult]]:
    """A group of techniques on a batch of images ``x`` (B, C, H, W), ``targets[i]`` for image i
    (None: its top-1 class). Per technique, one ``ItemResult`` per image whose Attributions are
    that image's alone (``Attribution.row``): equal to ``compute_group`` on the image by itself.

    Techniques whose batch result splits by rows (``Method.batch_rows``) compute the whole batch in
    one call, sharing their passes; the others, and every technique whose batch call failed, run
    image by image, so a failure (a target out of range, a non-finite map) is that image's alone.
    ``seed``: torch's generator is seeded with it before every call, so that techniques drawing
    noise draw for each image what a call on that image alone draws."""
    if len(targets) != x.shape[0]:
        raise ValueError(f"{len(targets)} targets for a batch of {x.shape[0]} images")
    with _scope(speed):
        return _compute_batch(methods, model, x, list(targets), layers, seed)


def _compute_batch(methods, model, x, targets, layers, seed) -> dict[str, list[ItemResult]]:
    n = x.shape[0]
    together = {k: m for k, m in methods.items() if m.batch_rows} if n > 1 else {}
    out: dict[str, list[ItemResult]] = {}
    if together:
        if seed is not None:
            torch.manual_seed(seed)
        # one object for every row (a callable target, e.g. a similarity score) is passed as it is:
        # a list of callables is not a target the techniques take
        batch_target = (None if all(t is None for t in targets)
                        else targets[0] if all(t is targets[0] for t in targets) else targets)
        for name, result in _compute_group(together, model, x, batch_target, layers).items():
            if result.error is None:
                rows = [[a.row(i) for a in result.attributions] for i in range(n)]
                out[name] = [ItemResult(r, None, result.ms / n) for r in rows]
    alone = {k: m for k, m in methods.items() if k not in out}
    if alone:
        per_image = []
        for i in range(n):
            if seed is not None:
                torch.manual_seed(seed)
            per_image.append(_compute_group(alone, model, x[i:i + 1], targets[i], layers))
        for name in alone:
            out[name] = [results[name] for results in per_image]
    return {name: out[name] for name in methods}
