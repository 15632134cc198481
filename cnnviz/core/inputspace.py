"""The model's input space: normalised tensors x = (pixel - mean) / std, pixels in [0, 1].

Techniques that need the normalisation take ``input_mean`` / ``input_std``; the runner fills them
from ``model.preprocess``. Left at ``None`` (a notebook call), the input is taken to be pixels
already: mean 0, std 1.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def stats(x: torch.Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]):
    """``(1, C, 1, 1)`` mean and std tensors."""
    channels = x.shape[1]
    mean = [0.0] * channels if mean is None else list(mean)
    std = [1.0] * channels if std is None else list(std)
    shape = (1, -1, 1, 1)
    return (torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape),
            torch.tensor(std, dtype=x.dtype, device=x.device).view(shape))


def pixel_bounds(x: torch.Tensor, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised values of pixel 0 and pixel 1, per channel, broadcast like ``x``."""
    m, s = stats(x, mean, std)
    return ((0 - m) / s).expand_as(x), ((1 - m) / s).expand_as(x)
