"""Integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution", arXiv:1703.01365).

    IG(x) = (x − x') ⊙ ∫₀¹ ∇f(x' + α (x − x')) dα

The integral is a quadrature with ``n_steps`` points: ``riemann_left`` / ``riemann_right`` /
``riemann_middle`` (weights 1/n), ``riemann_trapezoid`` (n points from 0 to 1, half weight at the
ends) or ``gausslegendre``. Baselines x': ``black`` (pixel 0), ``zero`` (0 in normalised space, the
mean colour), ``blur`` (Gaussian blur of x, σ = ``blur_sigma`` pixels) and ``uniform`` (uniform
pixel noise, seeded). Steps run ``internal_batch_size`` at a time. Completeness — Σ IG = f(x) − f(x')
— is measured and reported as ``completeness_gap`` = |Σ IG − Δf| / |Δf|.

Example::

    attr = get_method("integrated_gradients")(n_steps=50, input_mean=[.5]*3, input_std=[.5]*3)(model, x, 56)
    attr.metrics["completeness_gap"]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torchvision.transforms.functional as TF

from ..core.attribution import Attribution
from ..core.constraints import param
from ..core.errors import ConfigError, unknown
from ..core.hooks import model_state_kept
from ..core.inputspace import pixel_bounds
from ..speed.fastpath import forward_fn
from ..core.maps import to_numpy
from ..core.passes import gradient_pass, target_scores
from ..core.registry import register
from ..speed.streams import in_order, per_stream, stream_count
from ..core.targets import class_indices
from .base import GradientMethod

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
BASELINES = ("black", "zero", "blur", "uniform")


def quadrature(rule: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points α in [0, 1] and weights summing to 1."""
    if rule == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(n)
        return (t + 1) / 2, w / 2
    if rule == "riemann_trapezoid":
        if n < 2:
            raise ConfigError("method.integrated_gradients.n_steps must be >= 2 for riemann_trapezoid")
        w = np.full(n, 1.0 / (n - 1))
        w[[0, -1]] /= 2
        return np.linspace(0, 1, n), w
    k = np.arange(n, dtype=np.float64)
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return (k + offset) / n, np.full(n, 1.0 / n)


def integrated_gradient(model, x1, x0, target, alphas, weights, batch_size, rule=None, streams=1) -> torch.Tensor:
    """(x − x') ⊙ Σ_k w_k ∇f(x' + α_k (x − x')) for one image ``x1`` of shape (1, C, H, W), the
    steps ``batch_size`` at a time over ``streams`` streams (``cnnviz.speed.streams``)."""
    diff = x1 - x0
    a = torch.as_tensor(alphas, dtype=x1.dtype, device=x1.device)
    w = torch.as_tensor(weights, dtype=torch.float64, device=x1.device)
    size = per_stream(batch_size, streams)

    def weighted_sum(start: int) -> torch.Tensor:
        ak, wk = a[start:start + size], w[start:start + size]
        points = x0 + ak.view(-1, 1, 1, 1) * diff
        t = target if callable(target) else [target] * len(ak)
        g = gradient_pass(model, points, t, rule=rule).input_gradient
        return (wk.view(-1, 1, 1, 1) * g.double()).sum(dim=0, keepdim=True)

    total = torch.zeros_like(x1, dtype=torch.float64)
    for part in in_order(weighted_sum, range(0, len(a), size), streams):
        total += part
    return diff * total.to(x1.dtype)


@register("integrated_gradients")
@dataclass
class IntegratedGradients(GradientMethod):
    main_hyperparameter = ("baseline", ("black", "zero", "blur"))  # the reference the path starts from
    many_passes = True
    shares_passes = False  # a path of gradient passes of its own
    concurrent_safe = True  # plain gradients: no hook on the model, none of its state changed
    renders = ("color", "gray", "pos_sal", "neg_sal")
    n_steps: int = param(50, min=1)
    method: str = param("gausslegendre", choices=RULES, kind="integration rule")
    baseline: str = param("black", choices=BASELINES)
    blur_sigma: float = param(10.0, gt=0)
    internal_batch_size: int = param(10, min=1)
    seed: int = param(0, min=0)
    input_mean: Optional[list[float]] = None
    input_std: Optional[list[float]] = param(None, gt=0)

    def check_params(self) -> None:
        if self.method not in RULES:
            raise unknown("integration rule", f"method.{self.name}.method", self.method, RULES)
        if self.baseline not in BASELINES:
            raise unknown("baseline", f"method.{self.name}.baseline", self.baseline, BASELINES)
        if self.n_steps < 1 or self.internal_batch_size < 1:
            raise ConfigError(f"method.{self.name}: n_steps and internal_batch_size must be >= 1")
        if self.method == "riemann_trapezoid" and self.n_steps < 2:
            raise ConfigError(f"method.{self.name}.n_steps={self.n_steps}: riemann_trapezoid needs n_steps >= 2 "
                              "(both ends of the path)")

    def baseline_for(self, x: torch.Tensor) -> torch.Tensor:
        if self.baseline == "zero":
            return torch.zeros_like(x)
        if self.baseline == "blur":
            # 3 sigma, but reflect padding needs the kernel radius below the image size
            radius = max(1, min(int(round(3 * self.blur_sigma)), min(x.shape[-2:]) - 1))
            return TF.gaussian_blur(x, [2 * radius + 1] * 2, [float(self.blur_sigma)] * 2)
        low, high = pixel_bounds(x, self.input_mean, self.input_std)
        if self.baseline == "black":
            return low.clone()
        g = torch.Generator().manual_seed(self.seed)
        u = torch.rand(x.shape, generator=g, dtype=x.dtype).to(x.device)
        return low + u * (high - low)

    def attribute(self, model, x, target, layer):
        self.check_params()
        x = x.detach()
        alphas, weights = quadrature(self.method, self.n_steps)
        x0 = self.baseline_for(x)
        net, forward = forward_fn(model, x)
        with model_state_kept(net), torch.no_grad():
            logits, base_logits = forward(x), forward(x0)
        idx = class_indices(target, logits)
        values, gaps, deltas = [], [], []
        streams = stream_count(model, x) if self.concurrent() else 1
        for b in range(x.shape[0]):
            t = target if idx is None else int(idx[b])
            ig = integrated_gradient(model, x[b:b + 1], x0[b:b + 1], t, alphas, weights, self.internal_batch_size,
                                     self.backward_rule, streams)
            which = [] if idx is None else [t]
            delta = float(target_scores(target, logits[b:b + 1], which)[0] - target_scores(target, base_logits[b:b + 1], which)[0])
            total = float(ig.double().sum())
            gaps.append(abs(total - delta) / max(abs(delta), 1e-12))
            deltas.append(delta)
            values.append(ig)
        # each image's own gap and score change; a batch's rows carry theirs (Attribution.row)
        rows = [{"metrics": {"completeness_gap": g, "score_delta": d}} for g, d in zip(gaps, deltas)]
        metrics = rows[0]["metrics"] if len(rows) == 1 else {"completeness_gap": float(max(gaps))}
        return Attribution(
            method=self.name,
            values=to_numpy(torch.cat(values)),
            logits=to_numpy(logits),
            target=() if idx is None else tuple(int(i) for i in idx),
            params=self.params(),
            metrics=metrics,
            per_row=tuple(rows) if len(rows) > 1 else (),
        )
