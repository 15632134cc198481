"""Model randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", NeurIPS,
arXiv:1810.03292).

On a deep copy of the model (the caller's model is never touched) the parametrised modules are
re-initialised in cascade, from the top (the module registered last, the classifier) down to the
first, and the map is recomputed. The manifest stores the Spearman rank correlation ρ and the SSIM
between the original map and the map of the fully randomised model; a method that explains the
model drops towards 0, one that only reflects the input (an edge detector) stays at 1.

Both measures compare absolute maps |R| by default (``absolute: true``), as Adebayo et al. rank them:
the sign of a signed CAM (``relu: false``) or of Eigen-CAM's principal component may flip with a
re-initialisation while the same pixels stay salient, and a flipped map is the same evidence, not a
new map. Input-space maps reduced with ``abs`` and ReLU'd CAMs are non-negative, so for them the
option changes nothing; ``absolute: false`` ranks the maps as they are (before issue 25, the only
behaviour).

Re-initialisation calls each module's own ``reset_parameters`` (PyTorch's default init; BatchNorm
also resets its running statistics) under ``torch.manual_seed(seed)``, so a run is repeatable and
the global random state is left as it was. SSIM compares the two maps min-max scaled to [0, 1]
(``skimage.metrics.structural_similarity``, data_range 1). ``curve: true`` recomputes the map after
each of ``steps`` cascade steps (equal groups of modules) and writes the per-step ρ and SSIM.

Example::

    out = model_randomization(model, lambda m: saliency_of(m), seed=0)
    out["spearman"], out["ssim"]
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..core.constraints import param
from ..core.errors import ConfigError
from .base import Metric, MetricResult, Sample, register_metric, saliency


def cascade(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, top (last registered) first."""
    return [n for n, m in reversed(list(model.named_modules())) if any(True for _ in m.parameters(recurse=False))]


def reinitialise(module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:  # a custom module: a fresh draw of the same scale
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                p.normal_(0.0, float(p.detach().std()) if p.numel() > 1 else 1.0)


def _scaled(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(np.asarray(a, dtype=np.float64))
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Spearman ρ, SSIM) of two maps of the same shape. A constant map ranks no pixel above another,
    so it keeps none of the other map's ranking: ρ = 0 when exactly one map is constant (the usual case:
    a ReLU'd CAM that randomisation blanks), 1 when both are the same constant, NaN for two different
    constants."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps of shapes {a.shape} and {b.shape} differ")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        rho = 1.0 if np.array_equal(a, b) else float("nan")
    elif np.ptp(a) == 0 or np.ptp(b) == 0:
        rho = 0.0
    else:
        rho = float(spearmanr(a.ravel(), b.ravel()).statistic)
    win = min(7, *a.shape)
    win -= 1 - win % 2  # odd, at most the map's side
    ssim = float(structural_similarity(_scaled(a), _scaled(b), data_range=1.0, win_size=max(win, 3))) if win >= 3 else float("nan")
    return rho, ssim


def model_randomization(model: nn.Module, explain: Callable[[nn.Module], np.ndarray], seed: int = 0,
                        steps: Optional[int] = None, curve: bool = False,
                        original: Optional[np.ndarray] = None, absolute: bool = True) -> dict:
    """``{"spearman", "ssim", "layers"}`` for the fully randomised copy, and with ``curve`` a table
    ``{"step", "layers_randomised", "spearman", "ssim"}`` after each cascade step (step 0: none).
    ``absolute``: compare |map| (Adebayo et al.), else the maps as they are."""
    def compared(m: np.ndarray) -> np.ndarray:
        return np.abs(m) if absolute else m

    net = copy.deepcopy(model)
    names = cascade(net)
    if not names:
        raise ValueError("the model has no parameters to randomise")
    modules = dict(net.named_modules())
    base = compared(explain(net) if original is None else original)
    if curve:
        groups = np.array_split(np.arange(len(names)), min(steps or len(names), len(names)))
    else:
        groups = [np.arange(len(names))]
    rows = [(0, 0, 1.0, 1.0)] if curve else []
    done = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, group in enumerate(groups, start=1):
            for j in group:
                reinitialise(modules[names[j]])
            done += len(group)
            if curve or i == len(groups):
                rho, ssim = similarity(base, compared(explain(net)))
                rows.append((i, done, rho, ssim))
    out = {"spearman": rows[-1][2], "ssim": rows[-1][3], "layers": len(names)}
    if curve:
        out["curve"] = {k: np.array([r[c] for r in rows]) for c, k in enumerate(("step", "layers_randomised", "spearman", "ssim"))}
    return out


@register_metric("sanity_model_randomization")
@dataclass
class SanityModelRandomization(Metric):
    columns = ("sanity_spearman", "sanity_ssim")
    higher_is_better = {"sanity_spearman": False, "sanity_ssim": False}
    writes = ("csv:sanity_curve", "plot:sanity_curve")
    seed: int = param(0, min=0)
    #: false: one recompute, on the fully randomised model; true: one after each cascade step
    curve: bool = False
    #: cascade steps for the curve (equal groups of modules); null: one step per module
    steps: Optional[int] = param(None, min=1)
    #: true: compare absolute maps |R| (Adebayo et al.); false: the maps as they are, signed
    absolute: bool = True

    def check(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ConfigError("metrics.sanity_model_randomization.steps must be >= 1 or null (one step per module)")

    def __call__(self, sample: Sample) -> MetricResult:
        if sample.model is None or sample.explain is None:
            return MetricResult(warnings=("sanity_model_randomization: no model to randomise, skipped",))
        out = model_randomization(sample.model, sample.explain, self.seed, self.steps, self.curve, saliency(sample),
                                  self.absolute)
        extras = {}
        if "curve" in out:
            c = out["curve"]
            extras["sanity_curve"] = {"layers_randomised": c["layers_randomised"], "spearman": c["spearman"], "ssim": c["ssim"]}
        warn = () if np.isfinite(out["spearman"]) else ("sanity_model_randomization: both maps are constant, rank correlation undefined",)
        return MetricResult({"sanity_spearman": out["spearman"], "sanity_ssim": out["ssim"]}, extras, warn)
