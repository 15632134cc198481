"""Ablation-CAM (Desai & Ramaswamy 2020, WACV, "Gradient-free localization").

    w_k = (y_c − y_c^{A_k = 0}) / y_c          map = ReLU(Σ_k w_k A_k)

y is the target logit (a callable target's score). Channels are ablated ``batch_size`` at a time
under ``torch.inference_mode``. With ``mode: expand`` (default) the part of the network before the
layer runs once per batch on the single image and the layer's output is expanded into the batch of
ablated copies, so only the rest of the network sees the whole batch; where the model cannot
broadcast that (a later op mixes the expanded tensor with an earlier, un-expanded one in a way that
fails), it falls back to ``mode: full``, which feeds the image repeated and ablates in place.

Example::

    attr = get_method("ablationcam")(batch_size=64)(model, x, target=243, layer="bn2")
"""
from dataclasses import dataclass

import torch

from ..core.constraints import param
from ..core.errors import ConfigError
from ..core.hooks import model_state_kept, replaced_output
from ..core.layers import resolve_layer
from ..core.passes import target_scores
from ..speed.fastpath import forward_fn
from ..core.registry import register
from ..core.tokens import NCHW, Layout
from .base import CAMMethod

MODES = ("expand", "full")


def _ablate(out: torch.Tensor, channels: torch.Tensor, expand: bool, layout: Layout = NCHW) -> torch.Tensor:
    n = len(channels)
    out = out.expand(n, *out.shape[1:]).clone() if expand else out.clone()
    # through the (B, C, h, w) view, which writes into ``out``: A_k of a token layer is channel k of
    # the patch tokens (prefix tokens are not part of the map and are kept)
    layout.spatial(out)[torch.arange(n, device=out.device), channels.to(out.device)] = 0
    return out


@register("ablationcam")
@dataclass
class AblationCAM(CAMMethod):
    many_passes = True
    uses_gradients = False
    batch_size: int = param(64, min=1)
    mode: str = param("expand", choices=MODES)

    def ablated_scores(self, forward, x1, module, channels, target, index, expand: bool, layout: Layout = NCHW) -> torch.Tensor:
        with replaced_output(module, lambda out: _ablate(out, channels, expand, layout)):
            logits = forward(x1 if expand else x1.expand(len(channels), *x1.shape[1:]))
        return target_scores(target, logits, [index] if index is not None else [])

    def layer_map(self, model, x, p, layer, target):
        if self.mode not in MODES or self.batch_size < 1:
            raise ConfigError(f"method.ablationcam: mode must be one of {MODES} and batch_size >= 1")
        net, forward = forward_fn(model, x, [layer])
        module = resolve_layer(net, layer)
        acts = p.activations[layer]
        layout = p.layouts.get(layer, NCHW)
        maps = []
        with model_state_kept(net):
            for b in range(acts.shape[0]):
                index = p.target[b] if p.target else None
                x1 = x[b : b + 1]
                # the unablated score by the same single-image path as the ablated ones, so the
                # small difference y_c - y_c^k is not swamped by batch-dependent rounding
                base = target_scores(target, forward(x1), [index] if index is not None else [])[0]
                ablated = torch.empty(acts.shape[1], dtype=acts.dtype, device=acts.device)
                expand = self.mode == "expand"
                for chunk in torch.arange(acts.shape[1], device=acts.device).split(self.batch_size):
                    try:
                        scores = self.ablated_scores(forward, x1, module, chunk, target, index, expand, layout)
                    except RuntimeError:
                        if not expand:
                            raise
                        expand = False  # this model mixes batch sizes downstream of the layer
                        scores = self.ablated_scores(forward, x1, module, chunk, target, index, expand, layout)
                    ablated[chunk] = scores.to(ablated.dtype)
                weights = (base - ablated) / base if base != 0 else torch.zeros_like(ablated)
                maps.append(torch.einsum("c,chw->hw", weights, acts[b]))
        return torch.stack(maps)
