"""Guided Grad-CAM (Selvaraju et al. 2017): upsampled Grad-CAM times guided backprop.

    G = upsample(ReLU(sum_k alpha_k A_k)) ⊙ guided_backprop(x)    shape (B, 3, H, W)

Example::

    attr = get_method("guided_gradcam")()(model, x, target=243, layer="bn2")
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..attribution import Attribution
from ..registry import register
from .base import Method
from .gradcam import GradCAM
from .guided_backprop import GuidedBackprop


@register("guided_gradcam")
@dataclass
class GuidedGradCAM(Method):
    needs_layer = True
    only_under: Optional[str] = None

    def check(self, model):
        GuidedBackprop(only_under=self.only_under).check(model)

    def attribute(self, model, x, target, layer):
        return self.attribute_layers(model, x, target, [layer])[0]

    def attribute_layers(self, model, x, target, layers):
        cams = GradCAM().attribute_layers(model, x, target, layers)  # every layer from one pass
        guided = GuidedBackprop(only_under=self.only_under)(model, x, list(cams[0].target) or target)
        return [
            Attribution(
                method=self.name,
                values=guided.values * cam.upsampled[:, None].astype(np.float32),
                logits=cam.logits,
                target=cam.target,
                layer=cam.layer,
                params=self.params(),
                warnings=cam.warnings,
            )
            for cam in cams
        ]
