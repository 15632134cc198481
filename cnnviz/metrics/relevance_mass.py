"""Relevance mass accuracy (Arras, Osman & Samek 2022, "CLEVR-XAI: A benchmark dataset for the ground
truth evaluation of neural network explanations", Information Fusion 81, arXiv:2003.07258): the share
of the map's positive relevance that falls on the object.

    relevance_mass = Σ_{p ∈ mask} R⁺_p / Σ_p R⁺_p,   R⁺ = max(R, 0)

Only positive relevance counts, as in the paper: negative values are evidence against the class, and
letting them cancel positive values would reward a map for the evidence it puts against the object.
R is the map as ``base.saliency`` gives it (a CAM's upsampled map; an input-space map reduced over
channels, ``abs`` or ``signed``). 1 = all positive relevance on the object; a map with no positive
relevance has no mass to share, and its column stays empty with a warning. The object is the image's
mask: a list's ``mask`` column or the benchmark's planted object, else ``image.<key>.box``, mapped to
input pixels as the pointing game uses it.

Example::

    relevance_mass(cam, box_mask((224, 224), (40, 60, 120, 200)))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..core.constraints import param
from .base import Metric, MetricResult, Sample, register_metric, saliency
from .pointing_game import checked_mask


def relevance_mass(saliency_map: np.ndarray, mask: np.ndarray) -> Optional[float]:
    """Σ of positive relevance inside ``mask`` over Σ of all positive relevance, in float64;
    ``None`` when the map has no positive value."""
    r = np.nan_to_num(np.asarray(saliency_map, dtype=np.float64))
    mask = checked_mask(r, mask)
    positive = np.maximum(r, 0.0)
    total = positive.sum()
    if total <= 0:
        return None
    return float(positive[mask].sum() / total)


@register_metric("relevance_mass")
@dataclass
class RelevanceMass(Metric):
    columns = ("relevance_mass",)
    higher_is_better = {"relevance_mass": True}
    #: how an input-space map (C, H, W) becomes one value per pixel, see ``base.saliency``
    reduce: str = param("abs", choices=("abs", "signed"), kind="reduction")

    def __call__(self, sample: Sample) -> MetricResult:
        if sample.mask is None:
            return MetricResult()
        value = relevance_mass(saliency(sample, self.reduce), sample.mask)
        if value is None:
            return MetricResult(warnings=("relevance_mass: the map has no positive relevance, no mass to share",))
        return MetricResult({"relevance_mass": value})
