"""Class model with Yosinski et al.'s regularisation (Yosinski, Clune, Nguyen, Fuchs & Lipson 2015,
"Understanding Neural Networks Through Deep Visualization", arXiv:1506.06579, §3).

Gradient ascent on the class logit, ``I ← r_θ(I + η ∇_I S_c(I))``, where after each step r_θ acts
on the *image* (in the normalised space, where 0 is the mean colour):

- L2 decay: ``I ← (1 − decay) · I``;
- Gaussian blur of width ``blur_sigma`` every ``blur_every`` steps;
- clipping of pixels with small norm: pixels whose norm over the colour channels lies below the
  ``norm_percentile``-th percentile are set to 0;
- clipping of pixels with small contribution: pixels whose |Σ_channels I ⊙ ∇_I S_c| (the linear
  estimate of how much the logit changes if the pixel is set to 0) lies below the
  ``contribution_percentile``-th percentile are set to 0.

The image is also rolled by a random offset of up to ``jitter`` pixels before each forward pass.
Starts from the mean colour (``init`` as in ``class_model``).

Example::

    attr = get_method("class_model_regularized")(input_mean=[.5] * 3, input_std=[.5] * 3)(model, x, 130)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.constraints import param
from ..core.errors import ConfigError, unknown
from ..core.registry import register
from .class_model import INITS, ClassScoreMethod
from .optimization import gaussian_blur, jitter, start_image, zero_below_percentile


@register("class_model_regularized")
@dataclass
class ClassModelRegularized(ClassScoreMethod):
    steps: int = 40
    lr: float = 0.1
    snapshot_every: int = 4
    decay: float = param(0.01, min=0, lt=1)
    blur_every: int = param(4, min=0)
    blur_sigma: float = param(1.0, min=0)
    norm_percentile: float = param(10.0, min=0, lt=100)
    contribution_percentile: float = param(10.0, min=0, lt=100)
    jitter: int = param(8, min=0)
    init: str = param("mean", choices=INITS, kind="start image")

    def check_params(self):
        super().check_params()
        if self.init not in INITS:
            raise unknown("start image", self.key("init"), self.init, INITS)
        if not 0 <= self.decay < 1:
            raise ConfigError(f"{self.key('decay')} must be in [0, 1), got {self.decay}")
        for name in ("norm_percentile", "contribution_percentile"):
            if not 0 <= getattr(self, name) < 100:
                raise ConfigError(f"{self.key(name)} must be in [0, 100), got {getattr(self, name)}")
        if self.blur_every < 0 or self.blur_sigma < 0 or self.jitter < 0:
            raise ConfigError(f"{self.key('blur_every')}, {self.key('blur_sigma')} and {self.key('jitter')} must be >= 0")

    def start(self, x, generator):
        return start_image(x, self.init, self.input_mean, self.input_std, generator)

    def losses(self, model, img, ctx, generator):
        score, _ = self.scores(model, img if generator is None else jitter(img, self.jitter, generator), ctx)
        return -score, {"score": score}

    def regularize(self, img, grad, step):
        if self.decay:
            img = img * (1 - self.decay)
        if self.blur_every and (step + 1) % self.blur_every == 0:
            img = gaussian_blur(img, self.blur_sigma)
        img = zero_below_percentile(img, img.norm(dim=1), self.norm_percentile)
        # grad is that of the loss −S_c; the absolute value makes its sign irrelevant
        return zero_below_percentile(img, (img * grad).sum(dim=1).abs(), self.contribution_percentile)
