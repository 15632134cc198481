"""Guided Grad-CAM (Selvaraju et al. 2017): upsampled Grad-CAM times guided backprop.

    G = upsample(ReLU(sum_k alpha_k A_k)) ⊙ guided_backprop(x)    shape (B, 3, H, W)

Example::

    attr = get_method("guided_gradcam")()(model, x, target=243, layer="bn2")
"""
from dataclasses import dataclass
from typing import Optional

from ..core.attribution import Attribution
from ..core.registry import register
from .base import Method
from .gradcam import GradCAM
from .guided_backprop import GuidedBackprop


@register("guided_gradcam")
@dataclass
class GuidedGradCAM(Method):
    needs_layer = True
    shares_passes = True
    only_under: Optional[str] = None

    def check(self, model):
        GuidedBackprop(only_under=self.only_under).check(model)

    def pass_requests(self, layers):
        # every layer's Grad-CAM from one plain pass, the guided gradient from one guided pass
        return GradCAM().pass_requests(layers) + GuidedBackprop(only_under=self.only_under).pass_requests([])

    def from_passes(self, model, x, target, layers, passes):
        cams = GradCAM().from_passes(model, x, target, layers, passes)
        guided = GuidedBackprop(only_under=self.only_under).from_passes(model, x, target, [], passes)[0]
        return [
            Attribution(
                method=self.name,
                values=guided.values * cam.upsampled[:, None].astype(guided.values.dtype),
                logits=cam.logits,
                target=cam.target,
                layer=cam.layer,
                params=self.params(),
                warnings=cam.warnings,
                per_row=cam.per_row,
            )
            for cam in cams
        ]
