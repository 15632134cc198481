"""Transformer attribution, the gradient-weighted attention rule of Chefer, Gur & Wolf 2021b
("Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers", ICCV 2021, arXiv:2103.15679, eq. 5-6 for self-attention): attention rollout in which
each block's attention is weighted by the gradient of the target class score, so the map is
class-specific.

    Ā_l = E_h[(∇A_l ⊙ A_l)⁺]       (∇A_l = ∂y_c/∂A_l; ⊙ elementwise; ⁺ = max(·, 0); mean over heads)
    R_0 = I,   R_l = R_{l-1} + Ā_l · R_{l-1}      for the blocks l = 1 … L in forward order
    map = R_L[cls, patches] on the token grid

Why not the LRP variant of the CVPR paper (Chefer, Gur & Wolf 2021a, "Transformer Interpretability
Beyond Attention Visualization", arXiv:2012.09838): it replaces ∇A by LRP relevances, which need a
relevance rule for every layer of the network (custom LayerNorm, GELU, softmax and matmul rules,
i.e. a re-implementation of the model), while the ICCV rule reads only the attention probabilities
and their plain gradients, so it runs unchanged on any timm ViT; the authors present it as the
generic successor and report comparable or better results on ViTs.

The gradient is taken with ``torch.autograd.grad`` on the recorded probabilities (never
``param.grad``); a batch is one backward of the summed target scores, whose images are independent
in eval mode, so row b equals image b alone. Values are non-negative and kept raw.

Example::

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    attr = get_method("transformer_attribution")()(model, x, target=243)   # (B, 14, 14)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.registry import register
from ._attention import AttentionMethod


def relevance(probs: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """``(B, N, N)`` relevance R_L of the blocks' probabilities and gradients, in float64."""
    R = None
    for p, g in zip(probs, grads):
        cam = (g.double() * p.double()).clamp(min=0).mean(dim=1)
        if R is None:
            R = torch.eye(cam.shape[-1], dtype=cam.dtype, device=cam.device).expand_as(cam)
        R = R + cam @ R
    return R


@register("transformer_attribution")
@dataclass
class TransformerAttribution(AttentionMethod):
    needs_gradients = True

    def token_map(self, probs, grads):
        return relevance(probs, grads)[:, 0].to(probs[0].dtype)
