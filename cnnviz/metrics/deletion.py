"""``deletion``: area under the target probability as the most salient pixels are removed first
(Petsiuk et al. 2018, RISE); lower is better. See ``cnnviz.metrics.perturbation``.

``substrate: rise`` deletes to zeros in the model's normalised space,
the paper's protocol (``perturbation`` says how it differs from ``blur``).

Example: ``python run.py metrics=deletion metrics.deletion.steps=20 metrics.deletion.substrate=black``
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import register_metric
from .perturbation import PerturbationMetric


@register_metric("deletion")
@dataclass
class Deletion(PerturbationMetric):
    mode = "deletion"
    columns = ("deletion_auc",)
    higher_is_better = {"deletion_auc": False}
    writes = ("csv:deletion_curve", "plot:deletion_curve")
