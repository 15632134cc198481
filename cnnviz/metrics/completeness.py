"""Completeness: do the attributions add up to the score they explain?

Integrated gradients (Sundararajan et al. 2017) satisfy Σ_i IG_i(x) = f_c(x) − f_c(x'), x' the
baseline; LRP (Bach et al. 2015) conserves relevance, Σ_i R_i ≈ f_c(x) (biases and ε absorb some).
The metric recomputes the reference with the model and reports

    completeness_sum = Σ_i a_i,  completeness_reference = f_c(x) − f_c(x')  (or f_c(x)),
    completeness_error = |Σ_i a_i − reference| / |reference|

for the techniques in ``REFERENCE``; other techniques make no claim, so their columns stay empty.

Example::

    completeness(attr.values[0], reference=float(f(x)[0, c] - f(x0)[0, c]))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Metric, MetricResult, Sample, register_metric

#: technique -> what its attributions sum to: "baseline" (f(x) − f(x')) or "score" (f(x))
REFERENCE = {"integrated_gradients": "baseline", "lrp": "score"}


def completeness(values: np.ndarray, reference: float) -> dict[str, float]:
    total = float(np.asarray(values, dtype=np.float64).sum())
    return {"completeness_sum": total, "completeness_reference": float(reference),
            "completeness_error": abs(total - reference) / max(abs(reference), 1e-12)}


@register_metric("completeness")
@dataclass
class Completeness(Metric):
    columns = ("completeness_error",)
    higher_is_better = {"completeness_error": False}

    def __call__(self, sample: Sample) -> MetricResult:
        kind = REFERENCE.get(sample.method)
        if kind is None or sample.target is None:
            return MetricResult()
        if kind == "baseline" and sample.baseline is None:
            return MetricResult(warnings=(f"completeness: {sample.method} gave no baseline, skipped",))
        c = sample.target
        with torch.no_grad():
            score = sample.forward(sample.x[:1]).double()[0, c]
            if kind == "baseline":
                score = score - sample.forward(sample.baseline[:1]).double()[0, c]
        return MetricResult(completeness(sample.values, float(score)))
