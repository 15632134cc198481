"""Grad-CAM++ (Chattopadhay et al. 2018, arXiv:1710.11063), the closed form of their Eq. 19.

With the exponential assumption Y_c = exp(S_c), the higher derivatives of Y are powers of the first
derivative g = dS_c/dA and the common factor exp(S_c) cancels:

    a_kij = g_kij² / (2 g_kij² + Σ_ab A_kab g_kij³)     (0 where g_kij = 0)
    w_k   = Σ_ij a_kij · ReLU(g_kij)                    map = ReLU(Σ_k w_k A_k)

The weights are ≥ 0 wherever the denominator is positive, so at a layer before its activation
function (a conv or BatchNorm output, whose activations may be negative) the map can be negative
everywhere, and the final ReLU blanks it. The row's warning then says so and suggests a layer after
the activation, or ``relu: false`` (``CAMMethod.finish``).

Example::

    attr = get_method("gradcam_plusplus")()(model, x, target=243, layer="bn2")
"""
from dataclasses import dataclass

import torch

from ..core.registry import register
from .base import CAMMethod


@register("gradcam_plusplus")
@dataclass
class GradCAMPlusPlus(CAMMethod):
    def channel_weights(self, activations, gradients):
        g2 = gradients.pow(2)
        denominator = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * gradients.pow(3)
        safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = torch.where(denominator != 0, g2 / safe, torch.zeros_like(g2))
        return (alpha * gradients.clamp(min=0)).sum(dim=(2, 3))
