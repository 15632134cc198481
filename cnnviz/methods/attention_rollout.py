"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", ACL 2020,
arXiv:2005.00928): how much each patch token flows into the class token through every block of a
vision transformer, following attention and the residual connection.

Per block l, with A_l the attention probabilities (heads, N, N) of the token sequence:

    F_l  = fuse_h A_l                       (``head_fusion``: mean | max | min over the heads)
    F_l  ← F_l with its lowest ``discard_ratio`` share of entries set to 0, F_l[cls, cls] kept
    Â_l  = (F_l + I) / rowsum(F_l + I)     (the residual as an identity, rows renormalised)
    rollout = Â_L · … · Â_1,      map = rollout[cls, patches] on the token grid

The paper writes Â = 0.5·A + 0.5·I for head-averaged attention, whose rows already sum to 1; with
max/min fusion or discarded entries the rows do not, and renormalising (F + I) is the same matrix as
renormalising 0.5·F + 0.5·I, so the paper's form is the special case. Discarding is not in the paper:
it is the filter of the widely used ViT implementation (jacobgil/vit-explain), which drops the weakest
entries of each fused matrix as noise and never the class token's attention to itself, so the path
by which the class token keeps its own information is never cut (the map reads that token's row).
The entries are ranked per image, so a batch gives each image what it gets alone.

The map is not class-specific (``uses_target`` False: no target is recorded; the logits are, so
the manifest still has the prediction). Values are kept raw (each in [0, 1]), not min-max scaled.

Example::

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    attr = get_method("attention_rollout")(head_fusion="max", discard_ratio=0.9)(model, x)
    attr.values.shape   # (B, 14, 14): the token grid; attr.upsampled is (B, 224, 224)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.constraints import param
from ..core.registry import register
from ._attention import AttentionMethod

FUSIONS = ("mean", "max", "min")


def fused(p: torch.Tensor, how: str) -> torch.Tensor:
    """``(B, heads, N, N)`` -> ``(B, N, N)``."""
    if how == "mean":
        return p.mean(dim=1)
    return p.amax(dim=1) if how == "max" else p.amin(dim=1)


def discarded(a: torch.Tensor, ratio: float) -> torch.Tensor:
    """``a`` ``(B, N, N)`` with the ``int(ratio·N²)`` smallest entries of each image set to 0, the
    [cls, cls] entry (flat index 0) excepted; a stable sort ranks equal entries by position."""
    b, n, _ = a.shape
    k = int(ratio * n * n)
    if k == 0:
        return a
    flat = a.reshape(b, n * n).clone()
    lowest = torch.argsort(flat, dim=1, stable=True)[:, :k]
    keep_cls = lowest != 0
    rows = torch.arange(b, device=a.device)[:, None].expand_as(lowest)
    flat[rows[keep_cls], lowest[keep_cls]] = 0
    return flat.reshape(b, n, n)


def rollout(probs: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """``(B, N, N)`` rollout of the blocks' probabilities, in float64."""
    out = None
    for p in probs:
        a = discarded(fused(p.double(), head_fusion), discard_ratio)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        out = a if out is None else a @ out
    return out


@register("attention_rollout")
@dataclass
class AttentionRollout(AttentionMethod):
    main_hyperparameter = ("discard_ratio", (0.0, 0.5, 0.9))
    uses_target = False
    head_fusion: str = param("mean", choices=FUSIONS)
    #: share of the weakest fused attention entries of each block set to zero (0 keeps all)
    discard_ratio: float = param(0.0, min=0, lt=1)

    def token_map(self, probs, grads):
        return rollout(probs, self.head_fusion, self.discard_ratio)[:, 0].to(probs[0].dtype)
