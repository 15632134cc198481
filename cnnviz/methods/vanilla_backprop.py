"""Vanilla backpropagation saliency (Simonyan, Vedaldi & Zisserman 2013, arXiv:1312.6034).

    S = d y_c / d x

Example::

    from cnnviz import get_method
    attr = get_method("vanilla_backprop")()(model, x, target=243)
    attr.values.shape  # (B, 3, H, W)
"""
from dataclasses import dataclass

from ..core.registry import register
from .base import GradientMethod


@register("vanilla_backprop")
@dataclass
class VanillaBackprop(GradientMethod):
    concurrent_safe = True  # the plain backward: no hook on the model, none of its state changed
