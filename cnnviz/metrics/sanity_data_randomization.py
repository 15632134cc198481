"""Data randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", NeurIPS, §5,
arXiv:1810.03292).

The same technique, layer and class explain the same input twice: on the model, and on a copy of its
architecture trained on the same images with *shuffled labels* (the reference model), which can only
have memorised them. A map that explains what the network learned from the labels must differ between
the two; a map that looks the same for both reflects the input or the architecture, not the learned
function. The manifest stores the Spearman rank correlation ρ and the SSIM of the two maps (lower is
better), computed as the model randomization test computes them
(``sanity_model_randomization.similarity``): on absolute maps |R| by default (``absolute: true``, as
Adebayo et al. rank them; a sign flip of a signed CAM is the same evidence), SSIM on the maps min-max
scaled to [0, 1].

The reference model is not something a metric can build from its options, since metrics see no
config: the runner loads it with the same model loader and ``model.weights`` set to this metric's
``weights`` option (``shuffled`` for ``model=benchmark_cnn``) and hands it over with ``bind``
(``cnnviz.metrics.evaluate.bind_references``); a model without such weights is a ConfigError naming
``metrics.sanity_data_randomization.weights``. In the library API, bind it yourself. The model's own
map is the row's map (``base.saliency``); the reference map is recomputed by ``Sample.explain``, with
techniques that draw noise drawing it from seed 0, as the runner's default ``seed: 0`` does.

Example::

    shuffled, _, _ = load_benchmark_cnn("shuffled")
    metric = get_metric("sanity_data_randomization")().bind(shuffled)
    attr = evaluate({"sanity_data_randomization": metric}, attr, model, x, method=gradcam, layers=["block4"])
    attr.metrics["data_sanity_spearman"], attr.metrics["data_sanity_ssim"]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
from torch import nn

from ..core.errors import ConfigError
from .base import Metric, MetricResult, Sample, register_metric, saliency
from .sanity_model_randomization import similarity


def data_randomization(explain: Callable[[Any], np.ndarray], model: Any, reference: Any, absolute: bool = True,
                       original: Optional[np.ndarray] = None) -> dict[str, float]:
    """``{"spearman", "ssim"}`` of ``explain(model)`` (or ``original``, the map already computed) and
    ``explain(reference)``; ``absolute``: compare |map| (Adebayo et al.), else the maps as they are."""
    def compared(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=np.float64)
        return np.abs(m) if absolute else m

    base = compared(explain(model) if original is None else original)
    rho, ssim = similarity(base, compared(explain(reference)))
    return {"spearman": rho, "ssim": ssim}


@register_metric("sanity_data_randomization")
@dataclass
class SanityDataRandomization(Metric):
    columns = ("data_sanity_spearman", "data_sanity_ssim")
    higher_is_better = {"data_sanity_spearman": False, "data_sanity_ssim": False}
    needs_reference_model = True
    #: the ``model.weights`` value of the reference model: the same architecture trained on shuffled labels
    weights: str = "shuffled"
    #: true: compare absolute maps |R| (Adebayo et al.); false: the maps as they are, signed
    absolute: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        # not a field: params() (the manifest's metric_params) records the options, not a model
        self.reference: Optional[nn.Module] = None

    def check(self) -> None:
        if not isinstance(self.weights, str) or not self.weights.strip():
            raise ConfigError("metrics.sanity_data_randomization.weights must name the reference model's weights "
                              f"(model.weights of a copy trained on shuffled labels, e.g. shuffled), got {self.weights!r}")

    def reference_weights(self) -> str:
        return self.weights

    def bind(self, reference: nn.Module) -> "SanityDataRandomization":
        """Use ``reference`` (in eval mode, on the input's device) as the model trained on shuffled labels."""
        self.reference = reference
        return self

    def __call__(self, sample: Sample) -> MetricResult:
        if self.reference is None:
            raise ValueError("sanity_data_randomization has no reference model: call metric.bind(model_on_shuffled_labels) "
                             "(the runner loads it from metrics.sanity_data_randomization.weights)")
        if sample.explain is None:
            return MetricResult(warnings=("sanity_data_randomization: needs the technique to recompute the map "
                                          "(evaluate(..., method=...)), skipped",))
        out = data_randomization(sample.explain, sample.model, self.reference, self.absolute, saliency(sample))
        warn = (() if np.isfinite(out["spearman"]) else
                ("sanity_data_randomization: both maps are constant, rank correlation undefined",))
        return MetricResult({"data_sanity_spearman": out["spearman"], "data_sanity_ssim": out["ssim"]}, {}, warn)
