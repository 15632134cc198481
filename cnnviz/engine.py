"""The engine: techniques computed on one model, input and target, sharing their passes.

``compute`` runs one technique (one Attribution per layer); ``compute_group`` runs several on the
same input and target, one shared gradient pass per backward rule. The runner and ``explain`` both
call these, so a notebook result and a runner result come from one code path.
"""
from __future__ import annotations

import time
from typing import Any, Sequence, Union

import torch
from torch import nn

from .core.attribution import Attribution
from .core.passes import shared_passes
from .core.targets import Target
from .methods.base import Method


def compute(method: Method, model: nn.Module, x: torch.Tensor, target: Target, layers: Sequence[str]) -> list[Attribution]:
    """Every Attribution of one call: one per layer for layer techniques (one shared pass), else one."""
    if method.needs_layer:
        return method.attribute_layers(model, x, target, list(layers))
    return [method(model, x, target)]


def compute_group(methods: dict[str, Method], model: nn.Module, x: torch.Tensor, target: Target,
                  layers: dict[str, Sequence[str]]) -> dict[str, tuple[Union[list[Attribution], Exception], float]]:
    """Several techniques on one image and target, sharing their gradient passes: one pass per
    backward rule serves every technique that asks for it (vanilla, input x gradient and every
    gradient CAM at every layer from one plain pass; guided backprop and guided Grad-CAM from one
    guided pass). Per technique: its Attributions (or the exception) and its share of the time in
    milliseconds. The results equal those of calling each technique on its own."""
    requests = {name: m.pass_requests(layers[name]) for name, m in methods.items()}
    by_rule: dict[tuple, list] = {}
    for reqs in requests.values():
        for r in reqs:
            by_rule.setdefault(r.rule, []).append(r)
    passes: dict[tuple, Any] = {}
    pass_ms: dict[tuple, float] = {}
    for rule, reqs in by_rule.items():
        start = time.perf_counter()
        try:
            passes.update(shared_passes(model, x, target, reqs))
        except Exception as e:  # every technique that needs this pass reports it
            passes[rule] = e
        pass_ms[rule] = (time.perf_counter() - start) * 1000.0
    users = {rule: sum(any(r.rule == rule for r in reqs) for reqs in requests.values()) for rule in by_rule}
    out: dict[str, tuple[Union[list[Attribution], Exception], float]] = {}
    for name, m in methods.items():
        start = time.perf_counter()
        rules = list(dict.fromkeys(r.rule for r in requests[name]))
        shared_ms = sum(pass_ms[rule] / users[rule] for rule in rules)
        try:
            failed = [passes[rule] for rule in rules if isinstance(passes[rule], Exception)]
            if failed:
                raise failed[0]
            result = m.from_passes(model, x, target, layers[name], passes) if rules else compute(m, model, x, target, layers[name])
        except Exception as e:
            result = e
        out[name] = (result, shared_ms + (time.perf_counter() - start) * 1000.0)
    return out
