"""Filter visualisation by activation maximisation (Erhan, Bengio, Courville & Vincent 2009,
"Visualizing Higher-Layer Features of a Deep Network"; with the regularisers of Yosinski et al.
2015).

    I* = argmax_I  mean_{i,j} A_f(I)[i, j]

``A_f`` is channel ``filter`` of ``layer`` (a dense layer's unit works too). Adam (by default) from
seeded noise around the mean colour, regularised (each switched off by 0): the image is rolled
by up to ``jitter`` pixels before each forward, multiplied by ``1 − decay`` after each step and
blurred (``blur_sigma``) every ``blur_every`` steps. One hook serves the whole optimisation (the
classic registered a new one on every call and never removed it) and the forward pass stops at
the layer. Metrics: the filter's mean activation at the start image and at the result.

Example::

    attr = get_method("filter_visualization")(filter=5, input_mean=[.5] * 3, input_std=[.5] * 3)(model, x, layer="blocks.4")
    attr.metrics["filter_activation_after"]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..core.constraints import param
from ..core.errors import ConfigError
from ..core.registry import register
from .optimization import OptimizationMethod, filter_of, gaussian_blur, jitter, start_image


@register("filter_visualization")
@dataclass
class FilterVisualization(OptimizationMethod):
    needs_layer = True
    uses_target = False
    parametrization: str = "fft"
    steps: Optional[int] = None
    lr: Optional[float] = None
    snapshot_every: Optional[int] = None
    filter: int = param(0, min=0)
    jitter: Optional[int] = param(None, min=0)
    decay: float = param(0.0, min=0, lt=1)
    blur_every: Optional[int] = param(None, min=0)
    blur_sigma: float = param(1.0, min=0)

    #: ``pixel``: the classic loop (jitter, periodic blur); ``fft`` (the default): the decorrelated
    #: Fourier image under the standard transforms, which take the place of jitter and blur
    SETTINGS = {"pixel": {"steps": 30, "lr": 0.1, "snapshot_every": 3, "jitter": 4, "blur_every": 4},
                "fft": {"steps": 256, "lr": 0.05, "snapshot_every": 16, "jitter": 0, "blur_every": 0}}

    def check_params(self):
        super().check_params()
        if self.filter < 0:
            raise ConfigError(f"{self.key('filter')} must be >= 0, got {self.filter}")
        if not 0 <= self.decay < 1:
            raise ConfigError(f"{self.key('decay')} must be in [0, 1), got {self.decay}")
        if self.blur_every < 0 or self.blur_sigma < 0 or self.jitter < 0:
            raise ConfigError(f"{self.key('blur_every')}, {self.key('blur_sigma')} and {self.key('jitter')} must be >= 0")

    def prepare(self, model, x, target, layer, logits, read):
        filter_of(read(x[:1]), self.filter, self.name, layer)  # a wrong index fails before any step
        return {"layer": layer}

    def start(self, x, generator):
        return start_image(x, "noise", self.input_mean, self.input_std, generator)

    def activation(self, img, ctx):
        return filter_of(ctx["read"](img), self.filter, self.name, ctx["layer"]).flatten(1).mean(1)

    def losses(self, model, img, ctx, generator):
        act = self.activation(img if generator is None else jitter(img, self.jitter, generator), ctx)
        return -act, {"activation": act}

    def regularizes(self):
        return bool(self.decay) or bool(self.blur_every and self.blur_sigma)

    def regularize(self, img, grad, step):
        if self.decay:
            img = img * (1 - self.decay)
        if self.blur_every and (step + 1) % self.blur_every == 0:
            img = gaussian_blur(img, self.blur_sigma)
        return img

    def metrics(self, model, x, start, final, ctx):
        return {"filter_activation_before": float(self.activation(start, ctx)[0]),
                "filter_activation_after": float(self.activation(final, ctx)[0])}
