"""Pure operations on attribution maps."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def result_dtype(t: torch.Tensor) -> torch.dtype:
    """The precision results computed from ``t`` keep: float64 for float64, float32 for anything
    else (half precision would lose what a map resolves, and numpy has no bfloat16)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(B, h, w)`` float maps to exactly ``size = (H, W)``, in ``result_dtype``."""
    return F.interpolate(maps[:, None].to(result_dtype(maps)), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """``t`` as a numpy array in ``result_dtype``: float64 stays float64, the rest becomes float32."""
    return t.detach().to(result_dtype(t)).cpu().numpy()


def numpy_dtype(t: torch.Tensor) -> np.dtype:
    """``result_dtype(t)`` as a numpy dtype, for results assembled in numpy."""
    return np.dtype(np.float64) if result_dtype(t) == torch.float64 else np.dtype(np.float32)


def fuse_layer_maps(maps: list[torch.Tensor], size: tuple[int, int], gamma: float = 2.0) -> torch.Tensor:
    """LayerCAM's hierarchical fusion: scale each ``(B, h, w)`` map by tanh(γ · M / max M), upsample
    to ``size`` and take the element-wise maximum. Maps whose maximum is not positive count as zero."""
    fused = None
    for m in maps:
        top = m.flatten(1).amax(dim=1).clamp(min=0).view(-1, 1, 1)
        scaled = torch.where(top > 0, torch.tanh(gamma * m / torch.where(top > 0, top, torch.ones_like(top))), torch.zeros_like(m))
        up = upsample(scaled, size)
        fused = up if fused is None else torch.maximum(fused, up)
    return fused
