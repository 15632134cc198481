"""Deep dream (Mordvintsev, Olah & Tyka 2015, "Inceptionism: Going Deeper into Neural Networks").

Gradient ascent on a layer's activation, starting from the input image:

    objective(I) = mean A(I)²        (the whole layer: the "L2" objective)
                   mean A_f(I)       (one channel, when ``filter`` is set)

over ``octaves`` scales, smallest first: the input is resized by ``octave_scale^-k``, ``steps``
steps (one optimiser per scale) ascend from that base plus the detail found so far, and the
detail (result − base) is carried, upsampled, to the next scale; the last scale is the input's
own size. Before every forward the image is rolled by up to ``jitter`` pixels, and after every
step it is clamped to valid pixels. Metrics: the objective at the input and at the result.

Example::

    attr = get_method("deep_dream")(input_mean=[.5] * 3, input_std=[.5] * 3)(model, x, layer="blocks.4")
    attr.extras["final"]   # uint8 picture
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..core.constraints import param
from ..core.errors import ConfigError
from ..core.registry import register
from .optimization import OptimizationMethod, filter_of, jitter


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (antialiased when shrinking); the identity at the same size."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    shrink = size[0] < img.shape[-2] or size[1] < img.shape[-1]
    return F.interpolate(img, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)


@register("deep_dream")
@dataclass
class DeepDream(OptimizationMethod):
    needs_layer = True
    uses_target = False
    steps: int = 10
    lr: float = 0.04
    snapshot_every: int = 2
    octaves: int = param(4, min=1)
    octave_scale: float = param(1.4, gt=1)
    jitter: int = param(16, min=0)
    filter: Optional[int] = param(None, min=0)

    def check_params(self):
        super().check_params()
        if self.octaves < 1 or self.octave_scale <= 1:
            raise ConfigError(f"{self.key('octaves')} must be >= 1 and {self.key('octave_scale')} > 1, "
                              f"got {self.octaves} and {self.octave_scale}")
        if self.jitter < 0 or (self.filter is not None and self.filter < 0):
            raise ConfigError(f"{self.key('jitter')} and {self.key('filter')} must be >= 0 (filter: null for the whole layer)")

    def prepare(self, model, x, target, layer, logits, read):
        if self.filter is not None:
            filter_of(read(x[:1]), self.filter, self.name, layer)  # a wrong index fails before any step
        return {"layer": layer}

    def start(self, x, generator):
        return x.clone()

    def layer_objective(self, img, ctx) -> torch.Tensor:
        act = ctx["read"](img)
        if self.filter is not None:
            return filter_of(act, self.filter, self.name, ctx["layer"]).flatten(1).mean(1)
        return act.pow(2).flatten(1).mean(1)

    def losses(self, model, img, ctx, generator):
        value = self.layer_objective(img if generator is None else jitter(img, self.jitter, generator), ctx)
        return -value, {"objective": value}

    def optimize(self, model, start, ctx, generator, trace):
        h, w = start.shape[-2:]
        sizes = [(max(1, round(h / self.octave_scale ** k)), max(1, round(w / self.octave_scale ** k)))
                 for k in reversed(range(self.octaves))]
        low, high = self.bounds(start)
        detail, img = None, start
        for size in sizes:
            base = resize(start, size)
            detail = torch.zeros_like(base) if detail is None else resize(detail, size)
            img = self.descend(model, torch.clamp(base + detail, low, high), ctx, generator, trace, self.steps)
            detail = img - base
        return img

    def metrics(self, model, x, start, final, ctx):
        return {"layer_objective_before": float(self.layer_objective(x, ctx)[0]),
                "layer_objective_after": float(self.layer_objective(final, ctx)[0])}
