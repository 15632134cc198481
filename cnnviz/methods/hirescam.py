"""HiResCAM (Draelos & Carin 2020, arXiv:2011.08891): the element-wise product, summed over channels.

    map = ReLU(Σ_k dY/dA_k ⊙ A_k)

Equals Grad-CAM when the gradient is spatially constant (e.g. a GAP -> linear head): then
Σ_k g_k A_k summed element-wise and Σ_k mean(g_k) A_k are the same sum.

Example::

    attr = get_method("hirescam")()(model, x, target=243, layer="bn2")
"""
from dataclasses import dataclass

from ..core.registry import register
from .base import CAMMethod


@register("hirescam")
@dataclass
class HiResCAM(CAMMethod):
    def combine(self, activations, gradients):
        return (gradients * activations).sum(dim=1)
