"""Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391).

    alpha_k = mean_ij d y_c / d A_k[i, j]        map = ReLU(sum_k alpha_k A_k)

The sum starts from zero (the classic scripts started from ones, which adds a constant).
``relu=False`` keeps the signed map.

Example::

    attr = get_method("gradcam")()(model, x, target=72, layer="bn2")
    attr.values.shape, attr.upsampled.shape  # (B, 7, 7), (B, 224, 224)
"""
from dataclasses import dataclass

from ..core.registry import register
from .base import CAMMethod


@register("gradcam")
@dataclass
class GradCAM(CAMMethod):
    def channel_weights(self, activations, gradients):
        return gradients.mean(dim=(2, 3))
