"""Guided backpropagation (Springenberg et al. 2014, "Striving for Simplicity", arXiv:1412.6806).

At every ReLU-family module (ReLU, ReLU6) the backward pass keeps the module's own derivative and
drops negative gradients:  grad_in = f'(x) * max(grad_out, 0).  Classifier ReLUs are included, as in
the paper; ``only_under="features"`` restricts the rule to one sub-module, as the classic scripts did.

Example::

    attr = get_method("guided_backprop")()(model, x, target=56)
"""
from dataclasses import dataclass
from typing import Optional

from ..core.passes import BackwardRule
from ..core.registry import register
from .base import GradientMethod


@register("guided_backprop")
@dataclass
class GuidedBackprop(GradientMethod):
    renders = ("color", "gray", "pos_sal", "neg_sal")
    only_under: Optional[str] = None

    def rule(self):
        return BackwardRule("guided", self.only_under)
