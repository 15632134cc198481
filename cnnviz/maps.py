"""Pure operations on attribution maps."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(B, h, w)`` float maps to exactly ``size = (H, W)``."""
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


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
