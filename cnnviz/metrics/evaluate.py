"""Apply metrics to Attributions: build each metric's ``Sample`` from the map, the input and the
model, run the metrics one by one, each on every row at once (a failing metric becomes that row's
warning, the other rows and metrics still run), and merge their columns, extras and warnings into
new Attributions. ``evaluate`` measures one map (notebooks), ``evaluate_rows`` the rows of a batch
(the runner). ``bind_references`` hands the metrics that compare a second model (the data
randomization test) the model they name, before any map is measured.

Example::

    attr = evaluate({"deletion": get_metric("deletion")(steps=20)}, attr, model, x, method=gradcam)
    attr.metrics["deletion_auc"], attr.metrics["metrics_ms"]
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..core.attribution import Attribution
from ..core.errors import ConfigError
from ..speed.fastpath import forward_fn
from ..core.hooks import model_state_kept
from .base import Metric, MetricResult, Sample, saliency

log = logging.getLogger("cnnviz")


def writes_of(metrics: dict[str, Metric]) -> tuple[str, ...]:
    """The ``writes`` specs of the configured metrics, in order."""
    return tuple(spec for m in metrics.values() for spec in m.writes)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def bind_references(metrics: dict[str, Metric], load: Callable[[str], nn.Module],
                    model: Optional[nn.Module] = None) -> None:
    """Give each metric that compares a second model (``Metric.needs_reference_model``, e.g.
    ``sanity_data_randomization``) the model ``load(weights)`` returns for its ``reference_weights()``
    (the runner's ``load``: the same model loader with ``model.weights`` set to that value). A load
    that fails is a ConfigError naming ``metrics.<name>.weights``: the model has no such weights; so
    is a reference with the weights of ``model`` (a loader that ignores ``model.weights``, such as
    ``model=checkpoint``, or ``model.weights`` already that value), which would make every map pass."""
    for name, metric in metrics.items():
        if not metric.needs_reference_model:
            continue
        weights = metric.reference_weights()
        try:
            reference = load(weights)
        except Exception as e:
            raise ConfigError(
                f"metrics.{name}.weights={weights}: the model cannot be loaded with model.weights={weights} "
                f"({type(e).__name__}: {e}); the reference model is a copy of the architecture trained on "
                "shuffled labels: use a model that has one (model=benchmark_cnn has weights trained | shuffled) "
                f"or drop {name} from metrics") from e
        if model is not None and _same_weights(model, reference):
            raise ConfigError(
                f"metrics.{name}.weights={weights}: the reference model has the same weights as the model explained "
                f"(its loader ignores model.weights, or model.weights is already {weights}); the test compares the "
                "model with a copy trained on shuffled labels: explain the trained weights (model.weights=trained "
                "for model=benchmark_cnn) or drop it from metrics")
        metric.bind(reference)


def _map(attr: Attribution) -> np.ndarray:
    return saliency(Sample(attr.method, attr.values[0], None if attr.upsampled is None else attr.upsampled[0],
                           torch.empty(0), None, lambda b: b))


def _explainer(method: Any, attr: Attribution, x: torch.Tensor, layers: Sequence[str]):
    """The same technique, layer and class on another model -> its ``(H, W)`` map."""
    target = attr.target[0] if attr.target else None

    def explain(model: nn.Module) -> np.ndarray:
        # techniques that draw noise draw the same on every model; the caller's random state is kept
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if not method.needs_layer:
                return _map(method(model, x, target))
            wanted = [attr.layer] if attr.layer in {n for n, _ in model.named_modules()} else list(layers)
            found = [a for a in method.attribute_layers(model, x, target, wanted) if a.layer == attr.layer]
        if not found:
            raise ValueError(f"{attr.method} gave no map for layer {attr.layer} on the other model")
        return _map(found[0])

    return explain


def _input_explainer(method: Any, attr: Attribution, model: nn.Module):
    """The same technique, model, layer and class on other inputs ``(n, C, H, W)`` -> their raw
    maps, ``(n, C, H, W)`` or, for a CAM, ``(n, H, W)`` upsampled (as ``Sample.values`` / ``cam``)."""
    target = attr.target[0] if attr.target else None

    def explain_input(xs: torch.Tensor) -> np.ndarray:
        targets = None if target is None else [target] * xs.shape[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # techniques that draw noise draw the same on every input
            if not method.needs_layer:
                out = method(model, xs, targets)
            else:
                found = [a for a in method.attribute_layers(model, xs, targets, [attr.layer]) if a.layer == attr.layer]
                if not found:
                    raise ValueError(f"{attr.method} gave no map for layer {attr.layer} on the perturbed inputs")
                out = found[0]
        return out.values if out.upsampled is None else out.upsampled

    return explain_input


def _sample(attr: Attribution, x: torch.Tensor, model: nn.Module, forward, method: Any, layers: Sequence[str],
            mask: Optional[np.ndarray], warnings: list[str]) -> Sample:
    """The first image of ``attr`` measured on ``x`` (one image); a missing baseline is a warning."""
    baseline = None
    if method is not None and hasattr(method, "baseline_for"):
        try:
            baseline = method.baseline_for(x)
        except Exception as e:  # only completeness needs it, and says so
            warnings.append(f"metrics: no baseline from {attr.method}: {type(e).__name__}: {e}")
    return Sample(
        method=attr.method, values=attr.values[0], cam=None if attr.upsampled is None else attr.upsampled[0], x=x,
        target=attr.target[0] if attr.target else None, forward=forward, model=model,
        explain=_explainer(method, attr, x, layers) if method is not None else None, baseline=baseline, mask=mask,
        explain_input=_input_explainer(method, attr, model) if method is not None else None,
    )


def _measure(metrics: dict[str, Metric], rows: Sequence[Attribution], model: nn.Module, x: torch.Tensor,
             method: Any, layers: Sequence[str], masks: Sequence[Optional[np.ndarray]]) -> list[tuple[dict, dict, list]]:
    """``(columns, extras, warnings)`` of each row: the first image of ``rows[i]`` on ``x[i:i+1]``,
    each metric given every row at once (``Metric.batch``), ``metrics_ms`` the batch's time shared
    equally among the rows."""
    start = time.perf_counter()
    x = x.detach()
    out: list[tuple[dict, dict, list]] = [({}, {}, []) for _ in rows]
    with model_state_kept(model):
        # one forward for every row, so that the metrics can put the rows' inputs in one batch
        forward = forward_fn(model, x)[1]
        samples = [_sample(a, x[i:i + 1], model, forward, method, layers, masks[i], out[i][2])
                   for i, a in enumerate(rows)]
        for name, metric in metrics.items():
            try:
                results = metric.batch(samples)
                if len(results) != len(samples):
                    raise RuntimeError(f"{type(metric).__name__}.batch gave {len(results)} results for {len(samples)} maps")
            except Exception as e:  # a metric broken for the whole batch: a warning on every row, the other metrics still run
                results = [MetricResult(error=e)] * len(samples)
            for i, (a, result) in enumerate(zip(rows, results)):
                values, extras, warnings = out[i]
                if result.error is not None:  # recorded in the row's warnings; the other metrics still run
                    e = result.error
                    warnings.append(f"{name} failed: {type(e).__name__}: {e}")
                    log.warning("metric %s on %s%s failed%s: %s: %s", name, a.method, f" @ {a.layer}" if a.layer else "",
                                f" (row {i} of {len(rows)})" if len(rows) > 1 else "", type(e).__name__, e)
                    continue
                values.update(result.values)
                extras.update(result.extras)
                warnings.extend(result.warnings)
    ms = round((time.perf_counter() - start) * 1000.0 / max(len(rows), 1), 1)
    for values, _, _ in out:
        values["metrics_ms"] = ms
    return out


def _with(attr: Attribution, measured: tuple[dict, dict, list]) -> Attribution:
    values, extras, warnings = measured
    return dataclasses.replace(attr, metrics={**attr.metrics, **values}, extras={**attr.extras, **extras},
                               warnings=attr.warnings + tuple(warnings))


def evaluate_rows(metrics: dict[str, Metric], rows: Sequence[Attribution], model: nn.Module, x: torch.Tensor, *,
                  method: Any = None, layers: Sequence[str] = (),
                  masks: Sequence[Optional[np.ndarray]] = ()) -> list[Attribution]:
    """Every row with every metric's columns (plus ``metrics_ms``), extras and warnings added: row
    ``i`` is ``rows[i]``, the Attribution of one image (``attr.rows()`` of a batch), measured on
    ``x[i:i+1]`` with object mask ``masks[i]`` (``()``: none). Each row's result equals
    ``evaluate(metrics, rows[i], model, x[i:i+1], method=method, layers=layers, mask=masks[i])``;
    the metrics see all rows at once (``Metric.batch``), so deletion and insertion send the
    perturbed copies of every image through the model in shared batches. ``metrics_ms`` is the
    batch's time divided equally among the rows. A metric that fails on one row is that row's
    warning; the other rows and metrics are still measured.

    Example::

        attr = get_method("gradcam")()(model, x, [243, 281, 1], layer="bn2")   # x: (3, 3, H, W)
        rows = evaluate_rows({"deletion": get_metric("deletion")(steps=20)}, attr.rows(), model, x)
        [r.metrics["deletion_auc"] for r in rows]
    """
    rows = list(rows)
    if not metrics:
        return rows
    if x.shape[0] != len(rows):
        raise ValueError(f"evaluate_rows: {len(rows)} rows but x holds {x.shape[0]} images; row i is measured on x[i]")
    masks = list(masks) if len(masks) else [None] * len(rows)
    if len(masks) != len(rows):
        raise ValueError(f"evaluate_rows: {len(masks)} masks for {len(rows)} rows; give one per row (None: no object) or none")
    for i, a in enumerate(rows):
        if a.values.shape[0] != 1:
            raise ValueError(f"evaluate_rows: row {i} holds {a.values.shape[0]} images; split a batch's Attribution "
                             "into one per image with attr.rows()")
    return [_with(a, m) for a, m in zip(rows, _measure(metrics, rows, model, x, method, layers, masks))]


def evaluate(metrics: dict[str, Metric], attr: Attribution, model: nn.Module, x: torch.Tensor, *,
             method: Any = None, layers: Sequence[str] = (), mask: Optional[np.ndarray] = None) -> Attribution:
    """``attr`` with every metric's columns (plus ``metrics_ms``), extras and warnings added. Only
    the first image of a batch is measured (``evaluate_rows`` measures every image). ``method``
    (the technique object that made ``attr``) enables the randomisation test and the
    integrated-gradients baseline."""
    if not metrics:
        return attr
    return _with(attr, _measure(metrics, [attr], model, x[:1], method, layers, [mask])[0])
