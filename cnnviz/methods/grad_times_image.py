"""Input × gradient (Shrikumar et al. 2016, arXiv:1605.01713), on the whole input (all channels).

    normalized space:  x ⊙ ∂y_c/∂x                         (x: the model's normalised input)
    pixel space:       p ⊙ ∂y_c/∂p,  p = x·std + mean ∈ [0, 1], ∂y/∂p = (∂y/∂x) / std

``base`` chooses the gradient: ``vanilla``, ``guided`` (guided backprop) or ``integrated``, which is
integrated gradients itself, (x − x') ⊙ the path-averaged gradient (black baseline); it is the same
in both spaces because the normalisation is affine.

Example::

    attr = get_method("grad_times_image")(base="guided", space="pixel", input_mean=[.5]*3, input_std=[.5]*3)(model, x, 56)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..core.attribution import Attribution
from ..core.constraints import param
from ..core.errors import unknown
from ..core.inputspace import stats
from ..core.maps import numpy_dtype, to_numpy
from ..core.passes import shared_passes
from ..core.registry import register
from .base import GradientMethod
from .guided_backprop import GuidedBackprop
from .integrated_gradients import IntegratedGradients
from .vanilla_backprop import VanillaBackprop

BASES = ("vanilla", "guided", "integrated")
SPACES = ("normalized", "pixel")


@register("grad_times_image")
@dataclass
class GradTimesImage(GradientMethod):
    renders = ("color", "gray", "pos_sal", "neg_sal")
    base: str = param("vanilla", choices=BASES)
    space: str = param("normalized", choices=SPACES)
    input_mean: Optional[list[float]] = None
    input_std: Optional[list[float]] = param(None, gt=0)

    def inner(self) -> GradientMethod:
        if self.base not in BASES:
            raise unknown("base", "method.grad_times_image.base", self.base, BASES)
        if self.space not in SPACES:
            raise unknown("space", "method.grad_times_image.space", self.space, SPACES)
        if self.base == "integrated":
            return IntegratedGradients(input_mean=self.input_mean, input_std=self.input_std)
        return GuidedBackprop() if self.base == "guided" else VanillaBackprop()

    def check(self, model):
        self.inner().check(model)

    def concurrent(self):
        return self.inner().concurrent()

    def pass_requests(self, layers):
        # integrated gradients runs a path of passes of its own (its attribute), the others share
        return [] if self.base == "integrated" else self.inner().pass_requests([])

    def attribute(self, model, x, target, layer):
        inner = self.inner()
        if self.base == "integrated":
            return self.finish(x, inner(model, x, target))
        return self.from_passes(model, x, target, [], shared_passes(model, x, target, self.pass_requests([])))[0]

    def from_passes(self, model, x, target, layers, passes):
        return [self.finish(x, self.inner().from_passes(model, x, target, [], passes)[0])]

    def finish(self, x, attr: Attribution) -> Attribution:
        if self.base == "integrated":
            values = attr.values
        elif self.space == "normalized":
            values = to_numpy(x) * attr.values
        else:
            mean, std = stats(x, self.input_mean, self.input_std)
            values = to_numpy(x * std + mean) * (attr.values / to_numpy(std))
        return Attribution(
            method=self.name, values=values.astype(numpy_dtype(x)), logits=attr.logits, target=attr.target,
            params=self.params(), metrics=attr.metrics, per_row=attr.per_row,
        )
