"""Faithfulness and sanity metrics of attribution maps, one module per metric (``<name>.py``
registers the metric ``name``; ``base``, ``evaluate`` and ``perturbation`` are shared). A metric may
import the core and the opt-in accelerations of ``cnnviz.speed``, never the runner, a technique's
module, rendering or Hydra. Importing this package imports no metric module: each is declared under
its file name and imported when ``get_metric(name)`` first asks for it.

A metric is a dataclass whose fields are its options (``conf/metrics/<name>.yaml`` holds the same
keys); it is called on a ``Sample`` (the map, the input, a callable model) and returns a
``MetricResult`` whose ``values`` become manifest columns and whose ``extras`` become files through
its ``writes`` specs. ``Metric.batch`` measures several maps at once (by default one call each;
deletion and insertion share their model batches between maps), and ``evaluate_rows`` applies the
metrics to the rows of a batch. The pure functions behind each metric (``perturbation_curve(s)``,
``model_randomization``, ``completeness``, ``pointing_game``) take arrays, tensors and callables,
never a config.

Example::

    from cnnviz.metrics import get_metric, evaluate
    attr = get_method("gradcam")()(model, x, 243, layer="bn2")
    attr = evaluate({"deletion": get_metric("deletion")(steps=20)}, attr, model, x)
    attr.metrics["deletion_auc"]
"""
from __future__ import annotations

import pkgutil

from .base import METRICS, Metric, MetricResult, Sample, get_metric, list_metrics, metric_columns, register_metric, saliency

#: modules here that are not metrics
_SHARED = {"base", "evaluate", "perturbation"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _SHARED:
        METRICS.declare(_info.name, f"{__name__}.{_info.name}")

from .evaluate import evaluate, evaluate_rows, writes_of  # noqa: E402

__all__ = ["Metric", "MetricResult", "Sample", "evaluate", "evaluate_rows", "get_metric", "list_metrics", "metric_columns",
           "register_metric", "saliency", "writes_of"]
