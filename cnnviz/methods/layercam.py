"""LayerCAM (Jiang et al. 2021, IEEE TIP 30:5875, "Exploring Hierarchical Class Activation Maps").

    map = ReLU(Σ_k ReLU(dY/dA_k) ⊙ A_k)

``fuse=True`` with several layers adds the paper's hierarchical fusion as one more result (layer
``fused``): each layer's map is scaled by tanh(γ · M / max M) (γ = ``gamma``, 2 in the paper),
upsampled to the input and combined by the element-wise maximum.

Example::

    maps = get_method("layercam")(fuse=True).attribute_layers(model, x, 243, ["blocks.4", "blocks.5", "bn2"])
"""
from dataclasses import dataclass

import torch

from ..core.attribution import Attribution
from ..core.constraints import param
from ..core.maps import fuse_layer_maps
from ..core.registry import register
from .base import CAMMethod

FUSED = "fused"


@register("layercam")
@dataclass
class LayerCAM(CAMMethod):
    fuse: bool = False
    gamma: float = param(2.0, gt=0)

    def combine(self, activations, gradients):
        return (gradients.clamp(min=0) * activations).sum(dim=1)

    def from_passes(self, model, x, target, layers, passes):
        maps = super().from_passes(model, x, target, layers, passes)
        if not self.fuse or len(maps) < 2:
            return maps
        size = tuple(x.shape[-2:])
        fused = fuse_layer_maps([torch.from_numpy(a.values) for a in maps], size, self.gamma).numpy()
        zero = (f"{self.name} fused map is all zero",)
        warnings = () if fused.any() else zero
        return maps + [
            Attribution(
                method=self.name, values=fused, logits=maps[0].logits, target=maps[0].target, layer=FUSED,
                upsampled=fused, params=self.params(), warnings=warnings,
                per_row=tuple({"warnings": () if row.any() else zero} for row in fused) if len(fused) > 1 else (),
            )
        ]
