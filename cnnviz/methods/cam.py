"""CAM (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization", arXiv:1512.04150).

For a network ending in global average pooling and one linear layer, the class activation map is

    M_c = Σ_k w_ck A_k          (w: the linear layer's weights; no ReLU, as in the paper)

The head is checked numerically: the logits must equal W · GAP(A) + b at the chosen layer, otherwise
a ConfigError names the head that was found (use Grad-CAM, which generalises CAM, for such models).

Example::

    attr = get_method("cam")()(model, x, target=243, layer="bn2")
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from ..core.layers import resolve_layer
from ..core.registry import register
from .base import CAMMethod


def final_linear(model: nn.Module, head: Optional[str]) -> tuple[str, nn.Linear]:
    if head:
        module = resolve_layer(model, head)
        if not isinstance(module, nn.Linear):
            raise ConfigError(f"method.cam.head: '{head}' is a {type(module).__name__}, not nn.Linear")
        return head, module
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("cam needs a GAP -> linear head, but the model has no nn.Linear; use gradcam")
    return linears[-1]


@register("cam")
@dataclass
class CAM(CAMMethod):
    uses_gradients = False
    relu: bool = False
    #: dotted name of the final linear layer; null = the model's last nn.Linear
    head: Optional[str] = None

    def layer_map(self, model, x, p, layer, target):
        if not p.target:
            raise ConfigError("cam explains class indices; a callable target has no weight row")
        name, linear = final_linear(model, self.head)
        acts = p.activations[layer]
        if linear.in_features != acts.shape[1]:
            raise ConfigError(
                f"cam needs layer '{layer}' to feed a GAP -> linear head, but the head found, '{name}' "
                f"({linear.in_features} -> {linear.out_features}), takes {linear.in_features} features and the "
                f"layer has {acts.shape[1]} channels; use gradcam, which generalises CAM"
            )
        weight = linear.weight.to(acts.dtype)
        bias = None if linear.bias is None else linear.bias.to(acts.dtype)
        predicted = F.linear(acts.mean(dim=(2, 3)), weight, bias)
        tolerance = 1e-3 * max(1.0, float(p.logits.abs().max()))
        if predicted.shape != p.logits.shape or float((predicted - p.logits).abs().max()) > tolerance:
            raise ConfigError(
                f"cam needs layer '{layer}' -> global average pooling -> '{name}' to produce the logits, but "
                f"'{name}'(GAP(layer)) does not reproduce them; use gradcam, which generalises CAM"
            )
        return torch.einsum("bc,bchw->bhw", weight[list(p.target)], acts)
