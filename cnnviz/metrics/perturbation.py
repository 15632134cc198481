"""Deletion and insertion curves (Petsiuk, Das & Saenko 2018, "RISE", BMVC, arXiv:1806.07421).

Pixels are ranked by the map's value (ties broken by a seeded permutation), then changed in
``steps`` equal chunks, most salient first. Deletion replaces the pixels of x by a substrate, so
image k keeps x where rank >= n·k/steps; insertion starts from the substrate and puts x's pixels
back. The curve is the softmax probability of the target class after each step (steps + 1 points,
fraction of changed pixels 0 … 1); the metric is its area (trapezoid rule on [0, 1]). A faithful
map has a low deletion AUC (the class dies fast) and a high insertion AUC.

Substrates, in the model's normalised input space: ``black`` (pixel value 0), ``mean`` (the image's
mean colour), ``blur`` (Gaussian blur of x, σ = ``blur_sigma`` input pixels, a 6σ + 1 kernel — 31 px
at σ = 5 — with reflected borders), ``zeros`` (0 in the normalised space: the dataset's mean colour),
``rise_blur`` (RISE's own blur, below).

The ``rise`` preset (``substrate: rise``) is the protocol of RISE's evaluation code, so AUCs can be set
beside the paper's: deletion to ``zeros``, insertion from ``rise_blur`` — ``conv2d`` of the normalised
image with ``gkern(11, 5)`` and zero padding. ``gkern(11, 5)`` is scipy's ``gaussian_filter`` (σ = 5)
of a centred delta on an 11 × 11 grid with reflected borders: the Gaussian's tails beyond ±5 px fold
back into the window, so the kernel sums to 1 but is nearly flat (its corner weighs 0.88 of its
centre; a truncated σ = 5 Gaussian's corner weighs 0.37), close to an 11-px box filter: a weaker
blur than ``blur``'s 31-px Gaussian (a spread of 3.1 px against 5), and zero padding darkens the
borders towards the mean colour. The AUCs of the two protocols are not interchangeable (deletion
moves most: zeros and a blur are different substrates). RISE also took 224 · 8 pixels per step
(``steps: 28`` at 224 px) and its model's top-1 class as the target; the preset sets the substrates
only, ``steps`` and ``target`` stay as configured.

``perturbation_curves`` computes the curves of several images at once, their perturbed copies
sharing the model's forward passes (``batch_size`` perturbed images each); the deletion and
insertion metrics use it for ``Metric.batch``.

Example::

    fraction, prob = perturbation_curve(model, x, cam, target=243, mode="deletion", steps=50,
                                        substrate=make_substrate(x, "blur"))
    auc(fraction, prob)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF

from ..core.constraints import param
from ..core.errors import ConfigError, unknown
from ..core.inputspace import pixel_bounds
from .base import Metric, MetricResult, Sample, saliency

SUBSTRATES = ("blur", "black", "mean", "zeros", "rise_blur")
#: presets: one substrate per mode, the protocol of a paper
PRESETS = {"rise": {"deletion": "zeros", "insertion": "rise_blur"}}
REDUCE = ("abs", "signed")
#: RISE's blur kernel, ``gkern(klen=11, nsig=5)`` in its evaluation code
RISE_KERNEL, RISE_SIGMA = 11, 5.0


def rise_kernel(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RISE's ``gkern(11, 5)``: ``scipy.ndimage.gaussian_filter`` (σ = 5, reflected borders) of a
    centred delta on an 11 × 11 grid, ``(11, 11)``; it sums to 1. Computed in float64 from the
    separable 1-D filter, then cast."""
    from scipy.ndimage import gaussian_filter1d

    delta = np.zeros(RISE_KERNEL)
    delta[RISE_KERNEL // 2] = 1.0
    k1 = gaussian_filter1d(delta, RISE_SIGMA, mode="reflect")
    return torch.from_numpy(np.outer(k1, k1)).to(dtype)


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
    if kind == "zeros":
        return torch.zeros_like(x)
    if kind == "rise_blur":
        # each channel by itself (RISE's kernel is diagonal across channels), zero padding as its conv2d
        c = x.shape[1]
        weight = rise_kernel(x.dtype).to(x.device).expand(c, 1, RISE_KERNEL, RISE_KERNEL)
        return torch.nn.functional.conv2d(x, weight, padding=RISE_KERNEL // 2, groups=c)
    raise unknown("substrate", "metrics.<deletion|insertion>.substrate", kind, SUBSTRATES)


def ranking(saliency_map: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat pixel indices, most salient first; equal values in a seeded random order."""
    s = np.nan_to_num(np.asarray(saliency_map, dtype=np.float64).ravel(), nan=-np.inf)
    tie = np.random.default_rng(seed).permutation(s.size)
    return np.lexsort((tie, -s))


def _check_map(saliency_map: np.ndarray, x: torch.Tensor) -> None:
    if saliency_map.shape != tuple(x.shape[-2:]):
        raise ValueError(f"map of shape {saliency_map.shape} does not match the input's {tuple(x.shape[-2:])}")


def perturbation_curve(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, saliency_map: np.ndarray,
                       target: int, mode: str, steps: int = 50, substrate: Optional[torch.Tensor] = None,
                       batch_size: int = 16, seed: int = 0, scores: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(fraction of pixels changed, target probability)``, ``steps + 1`` points each, for
    ``mode`` = ``deletion`` or ``insertion``; ``batch_size`` perturbed images per forward pass.
    ``scores``: the model's outputs are scores already (a detection's), taken without softmax."""
    fraction, probs = perturbation_curves(forward, [x], [saliency_map], [target], mode, steps,
                                          None if substrate is None else [substrate], batch_size, seed, scores)
    return fraction, probs[0]


def perturbation_curves(forward: Callable[[torch.Tensor], torch.Tensor], xs: Sequence[torch.Tensor],
                        saliency_maps: Sequence[np.ndarray], targets: Sequence[int], mode: str, steps: int = 50,
                        substrates: Optional[Sequence[torch.Tensor]] = None, batch_size: int = 16,
                        seed: int = 0, scores: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """``perturbation_curve`` of several images ``(1, C, H, W)`` of one size at once:
    ``(fraction, [probability curve of each image])``. The perturbed copies of all images go
    through ``forward`` together, image after image, ``batch_size`` per forward pass, so a pass
    may end one image's curve and start the next one's: ``ceil(n (steps + 1) / batch_size)`` passes
    instead of ``n · ceil((steps + 1) / batch_size)``. Each image's curve is the one it has alone."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, got {mode!r}")
    if not (len(xs) == len(saliency_maps) == len(targets)) or (substrates is not None and len(substrates) != len(xs)):
        raise ValueError(f"{len(xs)} inputs, {len(saliency_maps)} maps, {len(targets)} targets"
                         f"{'' if substrates is None else f', {len(substrates)} substrates'}: one of each per image")
    if not xs:
        return np.linspace(0, 1, steps + 1), []
    shape = tuple(xs[0].shape)
    for x, m in zip(xs, saliency_maps):
        if tuple(x.shape) != shape or x.shape[0] != 1:
            raise ValueError(f"inputs of shapes {tuple(x.shape)} and {shape}: one image each, all of one size")
        _check_map(m, x)
    h, w = shape[-2:]
    n = h * w
    device = xs[0].device
    subs = [make_substrate(x, "black") for x in xs] if substrates is None else list(substrates)
    ranks = []
    for m in saliency_maps:
        rank = np.empty(n, dtype=np.int64)
        rank[ranking(m, seed)] = np.arange(n)
        ranks.append(torch.from_numpy(rank).to(device).view(1, 1, h, w))
    bounds = np.round(np.linspace(0, n, steps + 1)).astype(np.int64)
    bounds_t = torch.from_numpy(bounds).to(device).view(-1, 1, 1, 1)
    per = steps + 1
    probs = np.empty((len(xs), per))
    flat = probs.reshape(-1)  # image-major: image j's step s is entry j · per + s
    for start in range(0, len(xs) * per, batch_size):
        stop = min(start + batch_size, len(xs) * per)
        parts, rows = [], []
        for j in range(start // per, (stop - 1) // per + 1):
            a, b = max(start - j * per, 0), min(stop - j * per, per)
            changed = ranks[j] < bounds_t[a:b]  # (b - a, 1, H, W)
            parts.append(torch.where(changed, subs[j], xs[j]) if mode == "deletion" else torch.where(changed, xs[j], subs[j]))
            rows += [j] * (b - a)
        with torch.no_grad():
            logits = forward(parts[0] if len(parts) == 1 else torch.cat(parts))
        classes = logits.shape[-1]
        for j in set(rows):
            if not 0 <= int(targets[j]) < classes:
                raise IndexError(f"target class {targets[j]} is out of range for a model with {classes} classes")
        index = torch.tensor([int(targets[j]) for j in rows], device=logits.device)
        p = logits.double() if scores else torch.softmax(logits.double(), dim=-1)
        flat[start:stop] = p[torch.arange(len(rows), device=logits.device), index].cpu().numpy()
    return bounds / n, list(probs)


def _direct(sample: Sample) -> bool:
    """Whether the sample's model outputs scores already (``output_is_score``, e.g. a detection
    wrapper's per-detection scores): a softmax across them would mean nothing."""
    return bool(getattr(sample.model, "output_is_score", False))


def auc(fraction: np.ndarray, values: np.ndarray) -> float:
    """Trapezoid-rule area under ``values`` over ``fraction`` (which runs from 0 to 1)."""
    f, v = np.asarray(fraction, dtype=np.float64), np.asarray(values, dtype=np.float64)
    return float(np.sum((v[1:] + v[:-1]) * np.diff(f)) / 2)


@dataclass
class PerturbationMetric(Metric):
    """Shared options of deletion and insertion."""

    mode: ClassVar[str] = ""
    steps: int = param(50, min=1)
    #: a substrate, or a preset naming one per mode (``rise``)
    substrate: str = param("blur", choices=SUBSTRATES + tuple(PRESETS))
    blur_sigma: float = param(5.0, gt=0)
    batch_size: int = param(16, min=1)
    #: how an input-space map (C, H, W) becomes one value per pixel, see ``base.saliency``
    reduce: str = param("abs", choices=REDUCE, kind="reduction")
    seed: int = param(0, min=0)
    input_mean: Optional[list[float]] = None
    input_std: Optional[list[float]] = param(None, gt=0)

    def check(self) -> None:
        if self.substrate not in SUBSTRATES + tuple(PRESETS):
            raise unknown("substrate", f"metrics.{self.name}.substrate", self.substrate, SUBSTRATES + tuple(PRESETS))
        if self.substrate in ("rise", "rise_blur") and self.blur_sigma != RISE_SIGMA:
            raise ConfigError(f"metrics.{self.name}.blur_sigma={self.blur_sigma}: substrate={self.substrate} is RISE's blur, "
                              f"σ = {RISE_SIGMA:g} with an {RISE_KERNEL}-px kernel; leave blur_sigma at {RISE_SIGMA:g}, "
                              "or use substrate=blur for another σ")
        if self.reduce not in REDUCE:
            raise unknown("reduction", f"metrics.{self.name}.reduce", self.reduce, REDUCE)
        if self.steps < 1 or self.batch_size < 1 or self.blur_sigma <= 0:
            raise ConfigError(f"metrics.{self.name}: steps and batch_size must be >= 1 and blur_sigma > 0")

    def _inputs(self, sample: Sample) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """``(x, map, substrate)`` of one sample, the map checked against the input's size."""
        x = sample.x[:1].detach()
        saliency_map = saliency(sample, self.reduce)
        _check_map(saliency_map, x)
        kind = PRESETS[self.substrate][self.mode] if self.substrate in PRESETS else self.substrate
        return x, saliency_map, make_substrate(x, kind, self.blur_sigma, self.input_mean, self.input_std)

    def _result(self, fraction: np.ndarray, prob: np.ndarray) -> MetricResult:
        return MetricResult({f"{self.name}_auc": auc(fraction, prob)},
                            {f"{self.name}_curve": {"fraction": fraction, "probability": prob}})

    def _skipped(self) -> MetricResult:
        return MetricResult(warnings=(f"{self.name}: needs a class target, skipped",))

    def __call__(self, sample: Sample) -> MetricResult:
        if sample.target is None:
            return self._skipped()
        x, saliency_map, sub = self._inputs(sample)
        fraction, prob = perturbation_curve(sample.forward, x, saliency_map, sample.target, self.mode, self.steps, sub,
                                            self.batch_size, self.seed, _direct(sample))
        return self._result(fraction, prob)

    def batch(self, samples: list[Sample]) -> list[MetricResult]:
        """The samples' curves from shared forward passes (``perturbation_curves``): samples with the
        same ``forward`` and input size go together, ``batch_size`` perturbed images per pass. A
        sample that cannot be prepared (no target, a map of the wrong size) is left out of the
        shared passes; if a shared pass fails, its samples are measured one by one, so the error
        lands on the sample that caused it and the others keep their numbers."""
        results: list[Optional[MetricResult]] = [None] * len(samples)
        groups: dict[tuple, list[tuple[int, tuple]]] = {}
        for i, sample in enumerate(samples):
            if sample.target is None:
                results[i] = self._skipped()
                continue
            try:
                inputs = self._inputs(sample)
            except Exception as e:  # this sample's own failure
                results[i] = MetricResult(error=e)
                continue
            x = inputs[0]
            groups.setdefault((sample.forward, tuple(x.shape), x.device, x.dtype, _direct(sample)), []).append((i, inputs))
        for (forward, *_, direct), members in groups.items():
            try:
                fraction, probs = perturbation_curves(
                    forward, [m[1][0] for m in members], [m[1][1] for m in members],
                    [samples[i].target for i, _ in members], self.mode, self.steps, [m[1][2] for m in members],
                    self.batch_size, self.seed, direct)
            except Exception:
                # a shared pass has no single culprit: alone, each sample fails or succeeds on its own
                for i, res in zip((i for i, _ in members), Metric.batch(self, [samples[i] for i, _ in members])):
                    results[i] = res
                continue
            for (i, _), prob in zip(members, probs):
                results[i] = self._result(fraction.copy(), prob.copy())  # each row's tables its own, as alone
        return results  # type: ignore[return-value]  (every index was filled above)
