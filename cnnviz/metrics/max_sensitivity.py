"""Max-sensitivity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, "On the (In)fidelity and
Sensitivity of Explanations", NeurIPS, arXiv:1901.09392).

How much the map changes when the input moves a little:

    max_sensitivity = max_{‖δ‖∞ ≤ r} ‖Φ(x + δ) − Φ(x)‖₂ / ‖Φ(x)‖₂

estimated, as in the paper, by Monte Carlo: ``n_samples`` draws of δ uniform in the L∞ ball of
radius ``radius`` (the model's normalised input space) from ``seed``. Φ is the technique's raw map
(``values``; a CAM's map upsampled to the input), recomputed by the same technique, model, layer
and class (``Sample.explain_input``) on ``x`` and on every ``x + δ``, ``batch_size`` inputs per
technique call. Dividing by ‖Φ(x)‖ makes maps of different scales comparable (Quantus's
``MaxSensitivity`` default ``normalise``; the paper and captum's ``sensitivity_max`` leave the
difference unscaled). Lower is better: a map that ignores the input entirely scores 0, so read it
beside a faithfulness metric.

A technique that draws noise (SmoothGrad) draws it again from seed 0 on every call, so its map of
``x`` and of ``x + δ`` differ by more than the perturbation; a map that is all zeros has no
relative change and is skipped with a warning.

Example::

    max_sensitivity(lambda xs: method(model, xs, [3] * len(xs)).values, x, n_samples=10, radius=0.02)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..core.constraints import param
from .base import Metric, MetricResult, Sample, register_metric


def uniform_ball(x: torch.Tensor, n: int, radius: float, seed: int) -> torch.Tensor:
    """``n`` draws of δ uniform in [−radius, radius]^(C·H·W), float64, from ``seed`` alone."""
    g = torch.Generator().manual_seed(int(seed))
    return (torch.rand((n, *x.shape[1:]), generator=g, dtype=torch.float64) * 2 - 1) * radius


def sensitivities(explain: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, deltas: torch.Tensor,
                  batch_size: int = 8) -> np.ndarray:
    """``‖Φ(x + δ_k) − Φ(x)‖₂ / ‖Φ(x)‖₂`` for each δ_k, with ``explain`` maps of a batch of inputs."""
    x = x[:1].detach()
    inputs = torch.cat([x, x + deltas.to(device=x.device, dtype=x.dtype)])
    maps = np.concatenate([np.asarray(explain(inputs[s:s + batch_size]), dtype=np.float64)
                           for s in range(0, inputs.shape[0], batch_size)])
    if maps.shape[0] != inputs.shape[0]:
        raise ValueError(f"the technique gave {maps.shape[0]} maps for {inputs.shape[0]} inputs")
    maps = np.nan_to_num(maps.reshape(maps.shape[0], -1))
    norm = float(np.linalg.norm(maps[0]))
    if norm == 0:
        raise ZeroDivisionError("the map of x is all zeros: no relative change to measure")
    return np.linalg.norm(maps[1:] - maps[0], axis=1) / norm


def max_sensitivity(explain: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, n_samples: int = 10,
                    radius: float = 0.02, seed: int = 0, batch_size: int = 8) -> float:
    """The largest relative change of the map over ``n_samples`` perturbations (module docstring)."""
    return float(sensitivities(explain, x, uniform_ball(x[:1], n_samples, radius, seed), batch_size).max())


@register_metric("max_sensitivity")
@dataclass
class MaxSensitivity(Metric):
    columns = ("max_sensitivity",)
    higher_is_better = {"max_sensitivity": False}
    #: Monte Carlo draws of δ
    n_samples: int = param(10, min=1)
    #: L∞ radius of δ in the model's normalised input space
    radius: float = param(0.02, gt=0)
    #: inputs per call of the technique
    batch_size: int = param(8, min=1)
    seed: int = param(0, min=0)

    def __call__(self, sample: Sample) -> MetricResult:
        if sample.explain_input is None:
            return MetricResult(warnings=("max_sensitivity: needs the technique to recompute the map "
                                          "(evaluate(..., method=...)), skipped",))
        try:
            value = max_sensitivity(sample.explain_input, sample.x, self.n_samples, self.radius, self.seed,
                                    self.batch_size)
        except ZeroDivisionError as e:
            return MetricResult(warnings=(f"max_sensitivity: {e}, skipped",))
        return MetricResult({"max_sensitivity": value})
