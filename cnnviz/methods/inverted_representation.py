"""Inverted representation (Mahendran & Vedaldi 2015, "Understanding Deep Image Representations by
Inverting Them", arXiv:1412.0035).

    x* = argmin_x  ‖Φ(x) − Φ₀‖² / ‖Φ₀‖²  +  λ_α R_α(x)  +  λ_TV R_TV(x),     Φ₀ = Φ(x₀)

Φ is the output of ``layer``, x₀ the input image, x starts from seeded noise. This is the
``parametrization=pixel`` setting; the default optimises a decorrelated Fourier image instead (see
``SETTINGS``), where the priors are off unless given weights. The regularisers,
per image and averaged over the H·W pixel positions (the paper's normalisation, with its B and V
taken as 1 in the normalised input space):

    R_α(x)  = Σ_{c,i,j} |x_cij|^α / (H W)                                   (α-norm, abs() included)
    R_TV(x) = Σ_{c,i,j} ((x_c,i,j+1 − x_cij)² + (x_c,i+1,j − x_cij)²)^{β/2} / (H W)   (both axes)

the TV sum running over the positions where both differences exist. The learning rate is
multiplied by ``lr_decay`` every ``lr_decay_every`` steps, never at step 0. Metrics: the relative
feature distance ‖Φ(x*) − Φ₀‖ / ‖Φ₀‖ (not squared) at the start and at the end. With ``transforms``
(issue 26), x₀ gets the same random transform as x at every step, so Φ is compared position by
position between aligned images; the reported distances are those of the untransformed images.

Example::

    attr = get_method("inverted_representation")(input_mean=[.5] * 3, input_std=[.5] * 3)(model, x, layer="blocks.2")
    attr.metrics["relative_feature_distance"]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..core.constraints import param
from ..core.errors import ConfigError
from ..core.registry import register
from .optimization import OptimizationMethod, start_image


def alpha_norm(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Σ |x|^α over everything but the batch dimension: ``(B,)``."""
    return x.abs().pow(alpha).flatten(1).sum(1)


def total_variation(x: torch.Tensor, beta: float) -> torch.Tensor:
    """TV_β of ``(B, C, H, W)``: Σ_{c,i,j} ((x[c,i,j+1] − x[c,i,j])² + (x[c,i+1,j] − x[c,i,j])²)^{β/2}
    over i < H−1, j < W−1: ``(B,)``. Differences along rows and columns, never across channels."""
    d_col = x[..., :-1, 1:] - x[..., :-1, :-1]
    d_row = x[..., 1:, :-1] - x[..., :-1, :-1]
    squared = d_col.pow(2) + d_row.pow(2)
    # s^{β/2} has an infinite derivative at s = 0 for β < 2: a flat patch contributes 0 with gradient 0, not NaN
    flat = squared == 0
    powered = torch.where(flat, torch.ones_like(squared), squared).pow(beta / 2)
    return torch.where(flat, torch.zeros_like(squared), powered).flatten(1).sum(1)


@register("inverted_representation")
@dataclass
class InvertedRepresentation(OptimizationMethod):
    needs_layer = True
    uses_target = False
    parametrization: str = "fft"
    steps: Optional[int] = None
    lr: Optional[float] = None
    lr_decay: Optional[float] = param(None, gt=0, max=1)
    lr_decay_every: Optional[int] = param(None, min=0)
    snapshot_every: int = 10
    alpha: float = param(6.0, gt=0)
    alpha_weight: Optional[float] = param(None, min=0)
    beta: float = param(2.0, gt=0)
    tv_weight: Optional[float] = param(None, min=0)

    #: ``pixel``: the paper's setting (α-norm and TV priors, pixel steps with a decaying rate);
    #: ``fft`` (the default): the decorrelated Fourier image, input and image under the same standard
    #: transforms, no priors (the 1/f spectrum and the sigmoid take their place; both stay available):
    #: mid and late layers of the embedded model give a recognisable picture, at a larger distance
    #: on the untransformed image than the pixel loop reaches with its noise
    SETTINGS = {"pixel": {"steps": 200, "lr": 0.3, "lr_decay": 0.3, "lr_decay_every": 60,
                          "alpha_weight": 1e-5, "tv_weight": 0.3},
                "fft": {"steps": 200, "lr": 0.05, "lr_decay": 1.0, "lr_decay_every": 0,
                        "alpha_weight": 0.0, "tv_weight": 0.0}}

    def check_params(self):
        super().check_params()
        if self.alpha <= 0 or self.beta <= 0:
            raise ConfigError(f"{self.key('alpha')} and {self.key('beta')} must be > 0, got {self.alpha} and {self.beta}")
        if self.alpha_weight < 0 or self.tv_weight < 0:
            raise ConfigError(f"{self.key('alpha_weight')} and {self.key('tv_weight')} must be >= 0")

    def prepare(self, model, x, target, layer, logits, read):
        phi0 = read(x).detach()
        return {"phi0": phi0, "phi0_norm2": phi0.pow(2).flatten(1).sum(1).clamp(min=1e-12)}

    def start(self, x, generator):
        return start_image(x, "noise", self.input_mean, self.input_std, generator)

    def reference(self, seen, ctx):
        return self.prepare(None, seen, None, None, None, ctx["read"])

    def feature_distance(self, img, ctx) -> torch.Tensor:
        """‖Φ(img) − Φ₀‖² / ‖Φ₀‖² per image."""
        return (ctx["read"](img) - ctx["phi0"]).pow(2).flatten(1).sum(1) / ctx["phi0_norm2"]

    def losses(self, model, img, ctx, generator):
        pixels = img.shape[-2] * img.shape[-1]
        feature = self.feature_distance(img, ctx)
        a = alpha_norm(img, self.alpha) / pixels
        tv = total_variation(img, self.beta) / pixels
        return feature + self.alpha_weight * a + self.tv_weight * tv, {"feature_distance": feature, "alpha_norm": a, "tv": tv}

    def metrics(self, model, x, start, final, ctx):
        return {"relative_feature_distance": float(self.feature_distance(final, ctx)[0].sqrt()),
                "relative_feature_distance_start": float(self.feature_distance(start, ctx)[0].sqrt())}

    #: a final distance above this share of the start's: the image does not reproduce the features
    POOR = 0.75

    def advice(self, metrics, layer):
        # a lower loss under the transforms alone can hide an image whose own features are as far from
        # the input's as the start's were; the manifest row should say so, not only the picture
        start, end = metrics["relative_feature_distance_start"], metrics["relative_feature_distance"]
        if end <= self.POOR * start:
            return ()
        return (f"{self.name}: the relative feature distance at '{layer}' fell only from {start:.3g} to {end:.3g}, "
                f"so the image does not reproduce the input's features there; try an earlier layer, more "
                f"{self.key('steps')}, or {self.key('parametrization')}=pixel",)
