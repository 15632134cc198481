"""Deletion and insertion curves (Petsiuk, Das & Saenko 2018, "RISE", BMVC, arXiv:1806.07421).

Pixels are ranked by the map's value (ties broken by a seeded permutation), then changed in
``steps`` equal chunks, most salient first. Deletion replaces the pixels of x by a substrate, so
image k keeps x where rank >= n·k/steps; insertion starts from the substrate and puts x's pixels
back. The curve is the softmax probability of the target class after each step (steps + 1 points,
fraction of changed pixels 0 … 1); the metric is its area (trapezoid rule on [0, 1]). A faithful
map has a low deletion AUC (the class dies fast) and a high insertion AUC.

Substrates, in the model's normalised input space: ``black`` (pixel value 0), ``mean`` (the image's
mean colour), ``blur`` (Gaussian blur of x, σ = ``blur_sigma`` input pixels; RISE's insertion
substrate).

Example::

    fraction, prob = perturbation_curve(model, x, cam, target=243, mode="deletion", steps=50,
                                        substrate=make_substrate(x, "blur"))
    auc(fraction, prob)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import numpy as np
import torch
import torchvision.transforms.functional as TF

from ..core.constraints import param
from ..core.errors import ConfigError, unknown
from ..core.inputspace import pixel_bounds
from .base import Metric, MetricResult, Sample, saliency

SUBSTRATES = ("blur", "black", "mean")
REDUCE = ("abs", "signed")


def make_substrate(x: torch.Tensor, kind: str, blur_sigma: float = 5.0, mean=None, std=None) -> torch.Tensor:
    """The image that deleted pixels take (and insertion starts from), like ``x``."""
    if kind == "black":
        return pixel_bounds(x, mean, std)[0].clone()
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if kind == "blur":
        # 3 sigma, but reflect padding needs the kernel radius below the image size
        radius = max(1, min(int(round(3 * blur_sigma)), min(x.shape[-2:]) - 1))
        return TF.gaussian_blur(x, [2 * radius + 1] * 2, [float(blur_sigma)] * 2)
    raise unknown("substrate", "metrics.<deletion|insertion>.substrate", kind, SUBSTRATES)


def ranking(saliency_map: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat pixel indices, most salient first; equal values in a seeded random order."""
    s = np.nan_to_num(np.asarray(saliency_map, dtype=np.float64).ravel(), nan=-np.inf)
    tie = np.random.default_rng(seed).permutation(s.size)
    return np.lexsort((tie, -s))


def perturbation_curve(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, saliency_map: np.ndarray,
                       target: int, mode: str, steps: int = 50, substrate: Optional[torch.Tensor] = None,
                       batch_size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(fraction of pixels changed, target probability)``, ``steps + 1`` points each, for
    ``mode`` = ``deletion`` or ``insertion``; ``batch_size`` perturbed images per forward pass."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, got {mode!r}")
    h, w = x.shape[-2:]
    if saliency_map.shape != (h, w):
        raise ValueError(f"map of shape {saliency_map.shape} does not match the input's {(h, w)}")
    substrate = make_substrate(x, "black") if substrate is None else substrate
    n = h * w
    rank = np.empty(n, dtype=np.int64)
    rank[ranking(saliency_map, seed)] = np.arange(n)
    bounds = np.round(np.linspace(0, n, steps + 1)).astype(np.int64)
    rank_t = torch.from_numpy(rank).to(x.device).view(1, 1, h, w)
    probs = []
    for start in range(0, steps + 1, batch_size):
        k = torch.from_numpy(bounds[start:start + batch_size]).to(x.device).view(-1, 1, 1, 1)
        changed = rank_t < k  # (b, 1, H, W)
        batch = torch.where(changed, substrate, x) if mode == "deletion" else torch.where(changed, x, substrate)
        with torch.no_grad():
            logits = forward(batch)
        probs.append(torch.softmax(logits.double(), dim=-1)[:, target].cpu().numpy())
    return bounds / n, np.concatenate(probs)


def auc(fraction: np.ndarray, values: np.ndarray) -> float:
    """Trapezoid-rule area under ``values`` over ``fraction`` (which runs from 0 to 1)."""
    f, v = np.asarray(fraction, dtype=np.float64), np.asarray(values, dtype=np.float64)
    return float(np.sum((v[1:] + v[:-1]) * np.diff(f)) / 2)


@dataclass
class PerturbationMetric(Metric):
    """Shared options of deletion and insertion."""

    mode: ClassVar[str] = ""
    steps: int = param(50, min=1)
    substrate: str = param("blur", choices=SUBSTRATES)
    blur_sigma: float = param(5.0, gt=0)
    batch_size: int = param(16, min=1)
    #: how an input-space map (C, H, W) becomes one value per pixel, see ``base.saliency``
    reduce: str = param("abs", choices=REDUCE, kind="reduction")
    seed: int = param(0, min=0)
    input_mean: Optional[list[float]] = None
    input_std: Optional[list[float]] = param(None, gt=0)

    def check(self) -> None:
        if self.substrate not in SUBSTRATES:
            raise unknown("substrate", f"metrics.{self.name}.substrate", self.substrate, SUBSTRATES)
        if self.reduce not in REDUCE:
            raise unknown("reduction", f"metrics.{self.name}.reduce", self.reduce, REDUCE)
        if self.steps < 1 or self.batch_size < 1 or self.blur_sigma <= 0:
            raise ConfigError(f"metrics.{self.name}: steps and batch_size must be >= 1 and blur_sigma > 0")

    def __call__(self, sample: Sample) -> MetricResult:
        if sample.target is None:
            return MetricResult(warnings=(f"{self.name}: needs a class target, skipped",))
        x = sample.x[:1].detach()
        sub = make_substrate(x, self.substrate, self.blur_sigma, self.input_mean, self.input_std)
        fraction, prob = perturbation_curve(sample.forward, x, saliency(sample, self.reduce), sample.target,
                                            self.mode, self.steps, sub, self.batch_size, self.seed)
        return MetricResult({f"{self.name}_auc": auc(fraction, prob)},
                            {f"{self.name}_curve": {"fraction": fraction, "probability": prob}})
