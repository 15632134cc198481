"""Element-wise Grad-CAM, as pytorch-grad-cam's GradCAMElementWise:

    map = ReLU(Σ_k ReLU(dY/dA_k ⊙ A_k))

Example::

    attr = get_method("gradcam_elementwise")()(model, x, target=243, layer="bn2")
"""
from dataclasses import dataclass

from ..core.registry import register
from .base import CAMMethod


@register("gradcam_elementwise")
@dataclass
class GradCAMElementWise(CAMMethod):
    def combine(self, activations, gradients):
        return (gradients * activations).clamp(min=0).sum(dim=1)
