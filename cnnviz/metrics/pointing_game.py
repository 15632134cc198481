"""Pointing game (Zhang et al. 2016 / IJCV 2018, "Top-down Neural Attention by Excitation Backprop",
arXiv:1608.00507): a hit when the map's maximum lies on the object, within ``tolerance`` pixels of
its mask. The default tolerance is the paper's 15 pixels (input pixels, between pixel centres), so
numbers compare with the published ones; ``tolerance: 0`` asks for the maximum on the mask itself.
The object comes from the image config (``image.<key>.box`` in original-image pixels, mapped through
the preprocessing); without one the column stays empty.

    pointing_game = 1 if min_{p ∈ mask} ‖argmax(map) − p‖₂ ≤ tolerance else 0

Example::

    pointing_game(cam, box_mask((224, 224), (40, 60, 120, 200)), tolerance=15)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..core.constraints import param
from ..core.errors import ConfigError
from .base import Metric, MetricResult, Sample, register_metric, saliency


def box_mask(shape: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the pixels whose centres lie in ``box = (x0, y0, x1, y1)``."""
    h, w = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def checked_mask(saliency_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask`` as booleans, refused when it does not match the map or is empty (the localisation
    metrics share these checks)."""
    mask = np.asarray(mask, dtype=bool)
    if np.shape(saliency_map) != mask.shape:
        raise ValueError(f"map of shape {np.shape(saliency_map)} does not match mask of shape {mask.shape}")
    if not mask.any():
        raise ValueError("the object mask is empty (the box lies outside the model's input)")
    return mask


def pointing_game(saliency_map: np.ndarray, mask: np.ndarray, tolerance: float = 15.0) -> Optional[float]:
    """1.0 (hit) or 0.0 (miss); ``None`` when the map is constant (no maximum to point with)."""
    s = np.nan_to_num(np.asarray(saliency_map, dtype=np.float64), nan=-np.inf)
    mask = checked_mask(s, mask)
    if np.ptp(s) == 0:
        return None
    py, px = np.unravel_index(int(np.argmax(s)), s.shape)
    ys, xs = np.nonzero(mask)
    return float(np.min(np.hypot(ys - py, xs - px)) <= tolerance)


@register_metric("pointing_game")
@dataclass
class PointingGame(Metric):
    columns = ("pointing_game",)
    higher_is_better = {"pointing_game": True}
    #: input pixels
    tolerance: float = param(15.0, min=0)
    #: how an input-space map (C, H, W) becomes one value per pixel, see ``base.saliency``
    reduce: str = param("abs", choices=("abs", "signed"), kind="reduction")

    def check(self) -> None:
        if self.tolerance < 0:
            raise ConfigError("metrics.pointing_game.tolerance must be >= 0 (input pixels)")
        if self.reduce not in ("abs", "signed"):
            raise ConfigError(f"metrics.pointing_game.reduce must be abs or signed, got '{self.reduce}'")

    def __call__(self, sample: Sample) -> MetricResult:
        if sample.mask is None:
            return MetricResult()
        hit = pointing_game(saliency(sample, self.reduce), sample.mask, self.tolerance)
        if hit is None:
            return MetricResult(warnings=("pointing_game: the map is constant, no hit or miss",))
        return MetricResult({"pointing_game": hit})
