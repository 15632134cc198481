"""Metrics on a batch of maps at once: ``evaluate_rows`` equals ``evaluate`` row by row for every
registered metric, ``Metric.batch`` defaults to one call per sample, deletion / insertion put the
perturbed copies of every image into shared model batches of ``batch_size`` (same curves), and a
metric that fails on one row is that row's warning only."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cnnviz.metrics import Metric, MetricResult, Sample, evaluate, evaluate_rows, get_metric, list_metrics, saliency
from cnnviz.metrics.perturbation import make_substrate, perturbation_curve, perturbation_curves
from cnnviz.metrics.pointing_game import box_mask
from conftest import TinyCNN, tiny_method
from test_metrics import SIGMOID, RegionModel, region_maps

TARGETS = (0, 2, 4)
#: options that keep every metric fast on the tiny model; deletion / insertion chunks of 4 perturbed
#: images do not divide steps + 1 = 7, so chunks hold the end of one image and the start of the next
OPTIONS = {"deletion": {"steps": 6, "batch_size": 4, "substrate": "mean"},
           "insertion": {"steps": 6, "batch_size": 4, "substrate": "blur", "blur_sigma": 1.0},
           "sanity_model_randomization": {"curve": True, "steps": 2},
           "pointing_game": {"tolerance": 0.0}}
#: a CAM (upsampled map) and an input-space map whose technique has a completeness claim and a baseline
METHODS = {"gradcam": dict(relu=False), "integrated_gradients": {}}


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 10, 12, generator=torch.Generator().manual_seed(7))


def one_image_rows(method, model, x, targets=TARGETS):
    """The maps of each image on its own: what the runner's ``attr.row(i)`` hands over."""
    layer = "features.2" if method.needs_layer else None
    return [method(model, x[i:i + 1], t, layer=layer) for i, t in enumerate(targets)]


def pointing_masks(rows):
    """Row 0: the pixel at its map's maximum (a hit at tolerance 0); row 1: the pixel at its minimum
    (a miss); row 2: no object (empty column). So a mix-up of rows and masks changes the numbers."""
    out = []
    for i, a in enumerate(rows):
        s = saliency(Sample(a.method, a.values[0], None if a.upsampled is None else a.upsampled[0], torch.empty(0), None,
                            lambda b: b))
        if i == 2:
            out.append(None)
            continue
        mask = np.zeros(s.shape, bool)
        mask[np.unravel_index(int(np.argmax(s) if i == 0 else np.argmin(s)), s.shape)] = True
        out.append(mask)
    return out


def assert_same_row(batched, single, rtol=1e-6):
    """Same columns, extras and warnings; numbers equal to ``rtol`` (the shared model batches mix
    images, which may round float32 logits differently in the last bits; metrics built on logit
    differences, like infidelity, magnify that rounding, so the every-metric test runs in float64)."""
    got = {k: v for k, v in batched.metrics.items() if k != "metrics_ms"}
    want = {k: v for k, v in single.metrics.items() if k != "metrics_ms"}
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=rtol, abs=rtol * 1e-3, nan_ok=True), k
    assert set(batched.extras) == set(single.extras)
    for name, table in single.extras.items():
        assert list(batched.extras[name]) == list(table), name
        for col, values in table.items():
            np.testing.assert_allclose(batched.extras[name][col], values, rtol=rtol, atol=rtol * 1e-3, err_msg=f"{name}.{col}")
    assert batched.warnings == single.warnings
    np.testing.assert_array_equal(batched.values, single.values)


# --- evaluate_rows == evaluate, row by row ----------------------------------------------------------


@pytest.mark.parametrize("method_name", list(METHODS))
@pytest.mark.parametrize("metric_name", list_metrics())
def test_rows_equal_one_evaluate_per_row_for_every_metric(metric_name, method_name):
    # float64: batched and one-by-one differ only by the order of the rows, so the numbers must agree
    # to double rounding; in float32 a last-bit difference in the logits grows ~50x through
    # infidelity's f(x) - f(x - I) and depends on which kernels the CPU picks
    model = TinyCNN().double()
    x = images().double()
    method = tiny_method(method_name, **METHODS[method_name])
    rows = one_image_rows(method, model, x)
    masks = pointing_masks(rows)
    metrics = {metric_name: get_metric(metric_name)(**OPTIONS.get(metric_name, {}))}
    if metrics[metric_name].needs_reference_model:  # the data randomization test's second model
        metrics[metric_name].bind(TinyCNN(seed=1).double())
    layers = ["features.2"] if method.needs_layer else []
    batched = evaluate_rows(metrics, rows, model, x, method=method, layers=layers, masks=masks)
    single = [evaluate(metrics, r, model, x[i:i + 1], method=method, layers=layers, mask=masks[i])
              for i, r in enumerate(rows)]
    assert len(batched) == 3
    for b, s in zip(batched, single):
        assert_same_row(b, s, rtol=1e-12)
        # a time, shared by the rows: rounded to 0.1 ms, so a metric with little to do may show 0.0
        assert isinstance(b.metrics["metrics_ms"], float) and b.metrics["metrics_ms"] >= 0
        assert b.metrics["metrics_ms"] == batched[0].metrics["metrics_ms"]
    # the metric measured something, and something that tells the rows apart
    cls = get_metric(metric_name)
    applies = not (metric_name == "completeness" and method_name == "gradcam")  # Grad-CAM claims no completeness
    if applies:
        measured = [set(cls.columns) <= set(b.metrics) for b in batched]
        masked = metric_name in ("pointing_game", "relevance_mass", "relevance_rank")  # row 2 has no object
        assert measured == ([True, True, False] if masked else [True] * 3)
        first = cls.columns[0]
        values = [b.metrics[first] for b in batched if first in b.metrics]
        assert len(set(np.round(values, 9))) == len(values), values
    else:
        assert all(set(b.metrics) == {"metrics_ms"} for b in batched)


def test_rows_of_a_batch_attribution_and_several_metrics_at_once(tiny_cnn):
    """The runner's path: one technique call on the batch, split with ``row(i)``; several metrics."""
    x = images()
    method = tiny_method("gradcam", relu=False)
    attr = method(tiny_cnn, x, list(TARGETS), layer="features.2")
    rows = attr.rows()
    assert [r.target for r in rows] == [(t,) for t in TARGETS]
    metrics = {n: get_metric(n)(**OPTIONS.get(n, {})) for n in ("deletion", "insertion", "pointing_game")}
    masks = pointing_masks(rows)
    batched = evaluate_rows(metrics, rows, tiny_cnn, x, method=method, layers=["features.2"], masks=masks)
    for i, (b, r) in enumerate(zip(batched, rows)):
        assert_same_row(b, evaluate(metrics, r, tiny_cnn, x[i:i + 1], method=method, mask=masks[i]))
        assert b.target == r.target and b.values.shape[0] == 1
    # the batch's time is shared among its rows
    assert len({b.metrics["metrics_ms"] for b in batched}) == 1


def test_evaluate_rows_refuses_mismatched_inputs(tiny_cnn):
    x = images()
    method = tiny_method("vanilla_backprop")
    rows = one_image_rows(method, tiny_cnn, x)
    metrics = {"deletion": get_metric("deletion")(steps=2)}
    with pytest.raises(ValueError, match="3 rows but x holds 2 images"):
        evaluate_rows(metrics, rows, tiny_cnn, x[:2])
    with pytest.raises(ValueError, match="2 masks for 3 rows"):
        evaluate_rows(metrics, rows, tiny_cnn, x, masks=[None, None])
    batch = method(tiny_cnn, x, list(TARGETS))
    with pytest.raises(ValueError, match=r"row 0 holds 3 images.*rows\(\)"):
        evaluate_rows(metrics, [batch, *rows[1:]], tiny_cnn, x)
    assert evaluate_rows({}, rows, tiny_cnn, x) == rows  # no metrics: the rows as they are


def test_evaluate_still_measures_the_first_image_of_a_batch(tiny_cnn):
    x = images()
    method = tiny_method("vanilla_backprop")
    batch = method(tiny_cnn, x, list(TARGETS))
    metrics = {"deletion": get_metric("deletion")(steps=4)}
    out = evaluate(metrics, batch, tiny_cnn, x)
    assert out.values.shape[0] == 3  # the Attribution handed in, with the first image's columns
    first = evaluate(metrics, batch.row(0), tiny_cnn, x[:1])
    assert out.metrics["deletion_auc"] == pytest.approx(first.metrics["deletion_auc"], rel=1e-6)


# --- failures stay on their row ---------------------------------------------------------------------


def test_a_row_whose_metric_fails_gets_the_warning_and_the_other_rows_their_numbers(tiny_cnn, caplog):
    x = images()
    method = tiny_method("vanilla_backprop")
    rows = one_image_rows(method, tiny_cnn, x)
    # row 1: a map of the wrong size (fails before any model call); row 2: a class the model does not
    # have (fails on the model's output, inside the shared batches)
    rows[1] = dataclasses.replace(rows[1], values=rows[1].values[:, :, :5, :5])
    rows[2] = dataclasses.replace(rows[2], target=(9,))
    metrics = {"deletion": get_metric("deletion")(steps=5, batch_size=4),
               "insertion": get_metric("insertion")(steps=5, batch_size=32)}
    out = evaluate_rows(metrics, rows, tiny_cnn, x)
    assert "deletion_auc" in out[0].metrics and "insertion_auc" in out[0].metrics and out[0].warnings == ()
    assert_same_row(out[0], evaluate(metrics, rows[0], tiny_cnn, x[:1]))
    for i, error in ((1, "ValueError"), (2, "IndexError")):
        assert set(out[i].metrics) == {"metrics_ms"}
        assert [w.split(":")[0] for w in out[i].warnings] == ["deletion failed", "insertion failed"]
        assert all(f"failed: {error}" in w for w in out[i].warnings), out[i].warnings
        assert out[i].warnings == evaluate(metrics, rows[i], tiny_cnn, x[i:i + 1]).warnings
    assert "metric deletion on vanilla_backprop failed" in caplog.text


def test_a_metric_whose_batch_raises_is_a_warning_on_every_row(tiny_cnn):
    class Broken(Metric):
        name = "broken"

        def batch(self, samples):
            raise RuntimeError("no batch today")

    x = images()
    rows = one_image_rows(tiny_method("vanilla_backprop"), tiny_cnn, x)
    out = evaluate_rows({"broken": Broken(), "deletion": get_metric("deletion")(steps=2)}, rows, tiny_cnn, x)
    for r in out:
        assert r.warnings == ("broken failed: RuntimeError: no batch today",) and "deletion_auc" in r.metrics


# --- Metric.batch -----------------------------------------------------------------------------------


def region_samples(forward, maps, xs, targets=(0, 0, 0)):
    return [Sample("m", m, None, x, t, forward) for m, x, t in zip(maps, xs, targets)]


def test_default_batch_calls_the_metric_per_sample_and_keeps_errors_on_their_sample():
    class Peak(Metric):
        name = "peak"

        def __call__(self, sample):
            if sample.target is None:
                raise ValueError("needs a target")
            return MetricResult({"peak": float(np.max(sample.values))})

    maps = [np.full((2, 2), v) for v in (1.0, 2.0, 3.0)]
    out = Peak().batch(region_samples(lambda b: b, maps, [torch.zeros(1, 3, 2, 2)] * 3, targets=(0, None, 1)))
    assert [r.values for r in out] == [{"peak": 1.0}, {}, {"peak": 3.0}]
    assert out[0].error is None and isinstance(out[1].error, ValueError) and str(out[1].error) == "needs a target"


class Recorder:
    """A forward that records the size of every batch it is given."""

    def __init__(self, model):
        self.model, self.sizes = model, []

    def __call__(self, batch):
        self.sizes.append(batch.shape[0])
        return self.model(batch)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_perturbed_copies_of_all_images_share_model_batches_of_batch_size(mode):
    oracle, rand, inverse = region_maps()
    xs = [torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    metric = get_metric(mode)(steps=4, batch_size=4, substrate="black")
    forward = Recorder(RegionModel())
    batched = metric.batch(region_samples(forward, (oracle, rand, inverse), xs))
    assert forward.sizes == [4, 4, 4, 3]  # 3 images x 5 steps = 15 perturbed images in chunks of 4
    single = Recorder(RegionModel())
    for r, m, x in zip(batched, (oracle, rand, inverse), xs):
        want = metric(Sample("m", m, None, x, 0, single))
        assert r.values == pytest.approx(want.values, abs=1e-12) and r.error is None
        np.testing.assert_allclose(r.extras[f"{mode}_curve"]["probability"], want.extras[f"{mode}_curve"]["probability"],
                                   rtol=0, atol=1e-12)
    assert single.sizes == [4, 1] * 3


def test_batched_curves_are_the_analytic_probabilities():
    # x = 1, black substrate 0, 16 steps of 4 pixels: the oracle map removes the 16 region pixels
    # first, p = sigmoid(K (16 − min(4k, 16)) / 16); its negation removes them last
    oracle, _, inverse = region_maps()
    x = torch.ones(1, 3, 8, 8)
    sub = make_substrate(x, "black")
    fraction, probs = perturbation_curves(RegionModel(), [x, x], [oracle, inverse], [0, 0], "deletion", steps=16,
                                          substrates=[sub, sub], batch_size=5)
    k = np.arange(17)
    assert np.allclose(fraction, k / 16)
    assert np.allclose(probs[0], SIGMOID(RegionModel.K * (16 - np.minimum(4 * k, 16)) / 16), atol=1e-12)
    assert np.allclose(probs[1], SIGMOID(RegionModel.K * (16 - np.clip(4 * k - 48, 0, 16)) / 16), atol=1e-12)
    # the one-image function is the same computation
    single = perturbation_curve(RegionModel(), x, inverse, 0, "deletion", steps=16, substrate=sub, batch_size=5)[1]
    np.testing.assert_array_equal(single, probs[1])


def test_samples_with_different_forwards_are_batched_apart_and_rows_without_target_skipped():
    oracle, rand, _ = region_maps()
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    f1, f2 = Recorder(RegionModel()), Recorder(RegionModel())
    samples = [Sample("m", oracle, None, x, 0, f1), Sample("m", rand, None, x, None, f1),
               Sample("m", rand, None, x, 0, f2), Sample("m", rand, None, x, 0, f1)]
    out = get_metric("deletion")(steps=3, batch_size=16, substrate="black").batch(samples)
    assert f1.sizes == [8] and f2.sizes == [4]  # rows 0 and 3 together, row 2 alone, row 1 not at all
    assert out[1].warnings == ("deletion: needs a class target, skipped",) and out[1].values == {}
    assert out[2].values == pytest.approx(out[3].values, abs=1e-12)


# --- the embedded model -----------------------------------------------------------------------------


@pytest.mark.slow  # a real network: efficientnet_lite0
def test_rows_equal_single_calls_on_the_embedded_model():
    from cnnviz.models.loaders import efficientnet_lite0

    model = efficientnet_lite0().module
    # 128 px (4 x 4 maps at bn2): the same batched and single code paths at a third of the 224 px compute
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    method = tiny_method("gradcam")
    rows = [method(model, x[i:i + 1], t, layer="bn2") for i, t in enumerate((1, 281, 954))]
    metrics = {n: get_metric(n)(steps=8, batch_size=5) for n in ("deletion", "insertion")}
    batched = evaluate_rows(metrics, rows, model, x, method=method, layers=["bn2"])
    for i, (b, r) in enumerate(zip(batched, rows)):
        s = evaluate(metrics, r, model, x[i:i + 1], method=method, layers=["bn2"])
        for k in ("deletion_auc", "insertion_auc"):
            assert b.metrics[k] == pytest.approx(s.metrics[k], abs=1e-5), k
