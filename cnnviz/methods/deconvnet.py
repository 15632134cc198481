"""Deconvnet (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks",
arXiv:1311.2901), as a backward rule.

At every ReLU-family module the backward pass is max(grad_out, 0), whatever the sign of the forward
input; max-pool switches and transposed convolutions are autograd's own backward of the pooling and
convolution layers. ``only_under`` restricts the rule to one sub-module. On a network without
ReLU-family modules the rule changes nothing and deconvnet is the plain gradient (the row's
warnings say so).

Example::

    attr = get_method("deconvnet")()(model, x, target=56)
"""
import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..core.hooks import relu_modules
from ..core.passes import BackwardRule
from ..core.registry import register
from .base import GradientMethod


@register("deconvnet")
@dataclass
class Deconvnet(GradientMethod):
    renders = ("color", "gray", "pos_sal", "neg_sal")
    only_under: Optional[str] = None

    def rule(self):
        return BackwardRule("deconvnet", self.only_under)

    def from_passes(self, model, x, target, layers, passes):
        attrs = super().from_passes(model, x, target, layers, passes)
        if relu_modules(model, self.only_under):
            return attrs
        return [dataclasses.replace(a, warnings=a.warnings + ("no ReLU-family modules: deconvnet equals the gradient",))
                for a in attrs]
