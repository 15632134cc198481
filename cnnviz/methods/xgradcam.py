"""XGrad-CAM (Fu et al. 2020, "Axiom-based Grad-CAM", arXiv:2008.02312).

    w_k = Σ_ij (A_kij / Σ_ab A_kab) · dY/dA_kij          map = ReLU(Σ_k w_k A_k)

A channel whose activations sum to zero gets weight 0.

Example::

    attr = get_method("xgradcam")()(model, x, target=243, layer="bn2")
"""
from dataclasses import dataclass

import torch

from ..core.registry import register
from .base import CAMMethod


@register("xgradcam")
@dataclass
class XGradCAM(CAMMethod):
    def channel_weights(self, activations, gradients):
        total = activations.sum(dim=(2, 3), keepdim=True)
        share = torch.where(total != 0, activations / torch.where(total != 0, total, torch.ones_like(total)), torch.zeros_like(activations))
        return (share * gradients).sum(dim=(2, 3))
