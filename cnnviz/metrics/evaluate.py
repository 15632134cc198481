"""Apply metrics to an Attribution: build each metric's ``Sample`` from the map, the input and the
model, run them one by one (a failing metric becomes a warning, the others still run), and merge
their columns, extras and warnings into a new Attribution. The runner and notebooks call this.

Example::

    attr = evaluate({"deletion": get_metric("deletion")(steps=20)}, attr, model, x, method=gradcam)
    attr.metrics["deletion_auc"], attr.metrics["metrics_ms"]
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..core.attribution import Attribution
from ..speed.fastpath import forward_fn
from ..core.hooks import model_state_kept
from .base import Metric, Sample, saliency

log = logging.getLogger("cnnviz")


def writes_of(metrics: dict[str, Metric]) -> tuple[str, ...]:
    """The ``writes`` specs of the configured metrics, in order."""
    return tuple(spec for m in metrics.values() for spec in m.writes)


def _map(attr: Attribution) -> np.ndarray:
    return saliency(Sample(attr.method, attr.values[0], None if attr.upsampled is None else attr.upsampled[0],
                           torch.empty(0), None, lambda b: b))


def _explainer(method: Any, attr: Attribution, x: torch.Tensor, layers: Sequence[str]):
    """The same technique, layer and class on another model -> its ``(H, W)`` map."""
    target = attr.target[0] if attr.target else None

    def explain(model: nn.Module) -> np.ndarray:
        torch.manual_seed(0)  # techniques that draw noise draw the same on every model
        if not method.needs_layer:
            return _map(method(model, x, target))
        wanted = [attr.layer] if attr.layer in {n for n, _ in model.named_modules()} else list(layers)
        found = [a for a in method.attribute_layers(model, x, target, wanted) if a.layer == attr.layer]
        if not found:
            raise ValueError(f"{attr.method} gave no map for layer {attr.layer} on the randomised model")
        return _map(found[0])

    return explain


def evaluate(metrics: dict[str, Metric], attr: Attribution, model: nn.Module, x: torch.Tensor, *,
             method: Any = None, layers: Sequence[str] = (), mask: Optional[np.ndarray] = None) -> Attribution:
    """``attr`` with every metric's columns (plus ``metrics_ms``), extras and warnings added. Only
    the first image of a batch is measured. ``method`` (the technique object that made ``attr``)
    enables the randomisation test and the integrated-gradients baseline."""
    if not metrics:
        return attr
    start = time.perf_counter()
    x = x[:1].detach()
    values: dict[str, float] = {}
    extras: dict[str, Any] = {}
    warnings: list[str] = []
    with model_state_kept(model):
        baseline = None
        if method is not None and hasattr(method, "baseline_for"):
            try:
                baseline = method.baseline_for(x)
            except Exception as e:  # only completeness needs it, and says so
                warnings.append(f"metrics: no baseline from {attr.method}: {type(e).__name__}: {e}")
        sample = Sample(
            method=attr.method, values=attr.values[0], cam=None if attr.upsampled is None else attr.upsampled[0], x=x,
            target=attr.target[0] if attr.target else None, forward=forward_fn(model, x)[1], model=model,
            explain=_explainer(method, attr, x, layers) if method is not None else None, baseline=baseline, mask=mask,
        )
        for name, metric in metrics.items():
            try:
                result = metric(sample)
            except Exception as e:  # recorded in the row's warnings; the other metrics still run
                warnings.append(f"{name} failed: {type(e).__name__}: {e}")
                log.warning("metric %s on %s%s failed: %s: %s", name, attr.method,
                            f" @ {attr.layer}" if attr.layer else "", type(e).__name__, e)
                continue
            values.update(result.values)
            extras.update(result.extras)
            warnings.extend(result.warnings)
    values["metrics_ms"] = round((time.perf_counter() - start) * 1000.0, 1)
    return dataclasses.replace(attr, metrics={**attr.metrics, **values}, extras={**attr.extras, **extras},
                               warnings=attr.warnings + tuple(warnings))
