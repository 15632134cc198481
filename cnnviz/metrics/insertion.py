"""``insertion``: area under the target probability as the most salient pixels are put back first
onto the substrate (Petsiuk et al. 2018, RISE); higher is better. See
``cnnviz.metrics.perturbation``.

``substrate: rise`` inserts onto RISE's gkern(11, 5) blur,
the paper's protocol (``perturbation`` says how it differs from ``blur``).

Example: ``python run.py metrics=insertion metrics.insertion.steps=20``
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import register_metric
from .perturbation import PerturbationMetric


@register_metric("insertion")
@dataclass
class Insertion(PerturbationMetric):
    mode = "insertion"
    columns = ("insertion_auc",)
    higher_is_better = {"insertion_auc": True}
    writes = ("csv:insertion_curve", "plot:insertion_curve")
