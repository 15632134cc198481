"""Eigen-CAM (Muhammad & Yeasin 2020, arXiv:2008.00299): the first principal component of the
layer's activations, gradient-free and class-agnostic.

    X = A reshaped to (h·w, C), centred per channel;  X = U S Vᵀ (torch SVD)
    map = X v₁, with the sign of v₁ chosen so that the map correlates positively with Σ_k A_k

The projection is signed (no ReLU, as in the paper); ``relu: true`` keeps only its positive part.

Example::

    attr = get_method("eigencam")()(model, x, layer="bn2")
"""
from dataclasses import dataclass

import torch

from ..core.registry import register
from .base import CAMMethod


def first_component_map(a: torch.Tensor) -> torch.Tensor:
    """``(C, h, w)`` activations -> ``(h, w)`` projection on the first principal component."""
    c, h, w = a.shape
    X = a.reshape(c, h * w).T.double()
    X = X - X.mean(dim=0, keepdim=True)
    if not torch.any(X != 0):
        return torch.zeros(h, w, dtype=a.dtype, device=a.device)
    _, _, vh = torch.linalg.svd(X, full_matrices=False)
    projection = X @ vh[0]
    total = a.sum(dim=0).reshape(-1).double()
    if torch.dot(projection - projection.mean(), total - total.mean()) < 0:
        projection = -projection
    return projection.reshape(h, w).to(a.dtype)


@register("eigencam")
@dataclass
class EigenCAM(CAMMethod):
    uses_gradients = False
    relu: bool = False

    def layer_map(self, model, x, p, layer, target):
        return torch.stack([first_component_map(a) for a in p.activations[layer]])
