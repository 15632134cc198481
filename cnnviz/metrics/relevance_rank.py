"""Relevance rank accuracy (Arras, Osman & Samek 2022, "CLEVR-XAI: A benchmark dataset for the ground
truth evaluation of neural network explanations", Information Fusion 81, arXiv:2003.07258): how many
of the K most relevant pixels lie on the object, K being the object's size in pixels.

    relevance_rank = |top_K(R) ∩ mask| / K,   K = |mask|

R is the map as ``base.saliency`` gives it (a CAM's upsampled map; an input-space map reduced over
channels, ``abs`` or ``signed``), ranked as it is, largest first; when at least K pixels are positive
this is the ranking of the positive relevance R⁺ the paper uses. Equal values are ordered by a
seeded permutation (the same rule as deletion and insertion, ``perturbation.ranking``), so a map that
leaves many pixels at zero gets the chance share of them, repeatably. 1 = the top K pixels cover the
object exactly; a constant map ranks nothing, and its column stays empty with a warning.

Example::

    relevance_rank(cam, box_mask((224, 224), (40, 60, 120, 200)))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..core.constraints import param
from .base import Metric, MetricResult, Sample, register_metric, saliency
from .perturbation import ranking
from .pointing_game import checked_mask


def relevance_rank(saliency_map: np.ndarray, mask: np.ndarray, seed: int = 0) -> Optional[float]:
    """Share of the ``K = mask.sum()`` largest values of the map that lie in ``mask``; ``None`` when
    the map is constant."""
    r = np.nan_to_num(np.asarray(saliency_map, dtype=np.float64))
    mask = checked_mask(r, mask)
    if np.ptp(r) == 0:
        return None
    k = int(mask.sum())
    top = ranking(r, seed)[:k]
    return float(mask.ravel()[top].sum() / k)


@register_metric("relevance_rank")
@dataclass
class RelevanceRank(Metric):
    columns = ("relevance_rank",)
    higher_is_better = {"relevance_rank": True}
    #: how an input-space map (C, H, W) becomes one value per pixel, see ``base.saliency``
    reduce: str = param("abs", choices=("abs", "signed"), kind="reduction")
    #: order of pixels with equal map values
    seed: int = param(0, min=0)

    def __call__(self, sample: Sample) -> MetricResult:
        if sample.mask is None:
            return MetricResult()
        value = relevance_rank(saliency(sample, self.reduce), sample.mask, self.seed)
        if value is None:
            return MetricResult(warnings=("relevance_rank: the map is constant, no ranking",))
        return MetricResult({"relevance_rank": value})
