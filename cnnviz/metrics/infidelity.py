"""Infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, "On the (In)fidelity and Sensitivity
of Explanations", NeurIPS, arXiv:1901.09392).

How well the map predicts what the model does to random perturbations of its input:

    infidelity = E_I [ (β · Iᵀ Φ(x) − (f_c(x) − f_c(x − I)))² ],    I ~ N(0, σ² Id)

``f_c`` the target's logit (the score the gradient techniques explain), ``Φ(x)`` the raw signed
map (``values``; a CAM's upsampled map is shared by the channels: ``Iᵀ Φ = Σ_{c,h,w} I_chw Φ_hw``),
the expectation a Monte Carlo mean over ``n_perturbations`` draws from ``seed`` in the model's
normalised input space. ``normalize: true`` (the default) takes the scale β that minimises the
mean, β = E[Iᵀ Φ · Δf] / E[(Iᵀ Φ)²], so maps of any scale (CAMs, normalised maps) compare; it is
the paper's scale-invariant form and captum's ``infidelity(..., normalize=True)``. ``false`` uses
β = 1, the raw definition, meaningful for maps in the units of the logit (gradient × input,
integrated gradients). Lower is better; for a linear model f = w·x, Φ = w (the gradient) gives 0.

The perturbed copies of every map go through the model together, ``batch_size`` per pass, and
each map draws the same perturbations whatever is measured with it.

Example::

    infidelity(model, x, attr.values[0], target=3, n_perturbations=64, sigma=0.1)["infidelity"]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..core.constraints import param
from .base import Metric, MetricResult, Sample, register_metric


def raw_map(sample: Sample) -> np.ndarray:
    """The signed map Φ: a CAM's upsampled ``(H, W)`` map, else the technique's ``values``."""
    return np.nan_to_num(np.asarray(sample.values if sample.cam is None else sample.cam, dtype=np.float64))


def perturbations(x: torch.Tensor, n: int, sigma: float, seed: int) -> torch.Tensor:
    """``n`` draws of N(0, σ²) shaped like one image of ``x``, float64, from ``seed`` alone."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((n, *x.shape[1:]), generator=g, dtype=torch.float64) * sigma


def _check(phi: np.ndarray, x: torch.Tensor) -> None:
    if phi.shape not in (tuple(x.shape[1:]), tuple(x.shape[-2:])):
        raise ValueError(f"map of shape {phi.shape} matches neither the input {tuple(x.shape[1:])} nor its size "
                         f"{tuple(x.shape[-2:])}")


def infidelity_of(phi: np.ndarray, noise: torch.Tensor, delta: np.ndarray, normalize: bool = True) -> dict[str, float]:
    """Infidelity from the map, the perturbations ``(n, C, H, W)`` and ``Δf = f_c(x) − f_c(x − I)``."""
    proj = (noise.numpy() * phi).reshape(noise.shape[0], -1).sum(axis=1)  # Iᵀ Φ, a 2-D map broadcast over channels
    beta = 1.0
    if normalize:
        denom = float(np.mean(proj ** 2))
        beta = float(np.mean(proj * delta)) / denom if denom > 0 else 0.0
    return {"infidelity": float(np.mean((beta * proj - delta) ** 2)), "infidelity_beta": beta}


def infidelity(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, phi: np.ndarray, target: int,
               n_perturbations: int = 50, sigma: float = 0.1, seed: int = 0, batch_size: int = 16,
               normalize: bool = True) -> dict[str, float]:
    """``{"infidelity", "infidelity_beta"}`` of one map (see the module docstring)."""
    x = x[:1].detach()
    phi = np.asarray(phi, dtype=np.float64)
    _check(phi, x)
    noise = perturbations(x, n_perturbations, sigma, seed)
    scores = _logits(forward, torch.cat([x, x - noise.to(x)]), [int(target)] * (n_perturbations + 1), batch_size)
    return infidelity_of(phi, noise, scores[0] - scores[1:], normalize)


def _logits(forward, images: torch.Tensor, targets: list[int], batch_size: int) -> np.ndarray:
    """The logit of ``targets[k]`` on ``images[k]``, float64, ``batch_size`` images per pass."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        with torch.no_grad():
            logits = forward(images[start:start + batch_size]).double()
        t = torch.tensor(targets[start:start + batch_size], device=logits.device)
        if int(t.max()) >= logits.shape[-1] or int(t.min()) < 0:
            raise IndexError(f"target class {int(t.max())} is out of range for a model with {logits.shape[-1]} classes")
        out.append(logits[torch.arange(len(t), device=logits.device), t].cpu().numpy())
    return np.concatenate(out)


@register_metric("infidelity")
@dataclass
class Infidelity(Metric):
    columns = ("infidelity",)
    higher_is_better = {"infidelity": False}
    #: Monte Carlo draws of the perturbation I
    n_perturbations: int = param(50, min=1)
    #: standard deviation of I in the model's normalised input space
    sigma: float = param(0.1, gt=0)
    #: true: the optimal scale β of the map (scale-free); false: β = 1
    normalize: bool = True
    batch_size: int = param(16, min=1)
    seed: int = param(0, min=0)

    def _skipped(self) -> MetricResult:
        return MetricResult(warnings=("infidelity: needs a class target, skipped",))

    def __call__(self, sample: Sample) -> MetricResult:
        if sample.target is None:
            return self._skipped()
        return MetricResult(infidelity(sample.forward, sample.x, raw_map(sample), sample.target, self.n_perturbations,
                                       self.sigma, self.seed, self.batch_size, self.normalize))

    def batch(self, samples: list[Sample]) -> list[MetricResult]:
        """The perturbed copies of every sample with the same ``forward`` and input shape share
        the model's passes; if a shared pass fails, each of its samples is measured alone."""
        results: list[Optional[MetricResult]] = [None] * len(samples)
        groups: dict[tuple, list[int]] = {}
        for i, sample in enumerate(samples):
            if sample.target is None:
                results[i] = self._skipped()
                continue
            try:
                _check(raw_map(sample), sample.x[:1])
            except Exception as e:  # this sample's own failure
                results[i] = MetricResult(error=e)
                continue
            x = sample.x[:1]
            groups.setdefault((sample.forward, tuple(x.shape), x.device, x.dtype), []).append(i)
        per = self.n_perturbations + 1
        for (forward, shape, device, dtype), members in groups.items():
            try:
                noise = perturbations(samples[members[0]].x[:1], self.n_perturbations, self.sigma, self.seed)
                moved = noise.to(device=device, dtype=dtype)
                images = torch.cat([torch.cat([samples[i].x[:1].detach(), samples[i].x[:1].detach() - moved])
                                    for i in members])
                scores = _logits(forward, images, [int(samples[i].target) for i in members for _ in range(per)],
                                 self.batch_size)
                for k, i in enumerate(members):
                    s = scores[k * per:(k + 1) * per]
                    results[i] = MetricResult(infidelity_of(raw_map(samples[i]), noise, s[0] - s[1:], self.normalize))
            except Exception:
                # a shared pass has no single culprit: alone, each sample fails or succeeds on its own
                for i, res in zip(members, Metric.batch(self, [samples[i] for i in members])):
                    results[i] = res
        return results  # type: ignore[return-value]  (every index was filled above)
