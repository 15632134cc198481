"""Batches of images: every registered technique on a batch of 3 images with 3 different targets
gives, image by image, what three single calls give — maps, logits, targets, warnings, metrics and
extras (``engine.compute_batch``, the runner's path)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnviz import get_method, list_methods
from cnnviz.core.attribution import Attribution
from cnnviz.core.targets import class_indices
from cnnviz.engine import compute, compute_batch
from conftest import TinyCNN, any_model, tiny_method

TARGETS = [0, 3, 1]


def _layers(name: str) -> list[str]:
    if not get_method(name).needs_layer:
        return []
    return ["features.1", "features.3"] if name == "layercam" else ["features.3"]  # LayerCAM also fuses layers


def _images(n: int = 3) -> torch.Tensor:
    x = torch.randn(n, 3, 9, 11, generator=torch.Generator().manual_seed(23))
    x[1] *= 3.0  # another scale per image: a per-batch normalisation would show
    return x


def _same(batch_row: Attribution, single: Attribution) -> None:
    assert batch_row.values.shape == single.values.shape
    scale = float(np.abs(single.values).max()) or 1.0
    np.testing.assert_allclose(batch_row.values, single.values, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(batch_row.logits, single.logits, rtol=1e-5, atol=1e-6)
    assert batch_row.target == single.target
    assert batch_row.layer == single.layer
    if single.upsampled is None:
        assert batch_row.upsampled is None
    else:
        np.testing.assert_allclose(batch_row.upsampled, single.upsampled, rtol=1e-5, atol=1e-6 * scale)
    assert batch_row.warnings == single.warnings
    assert set(batch_row.metrics) == set(single.metrics)
    for k, v in single.metrics.items():
        # gaps are differences of nearly equal float32 sums: their absolute error is the sums' rounding
        assert batch_row.metrics[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    assert set(batch_row.extras) == set(single.extras)


@pytest.mark.parametrize("name", [n for n in list_methods() if any_model(n)])
def test_a_batch_of_three_equals_three_single_calls(name):
    model, x = TinyCNN(), _images()
    method = tiny_method(name)
    torch.manual_seed(0)
    batch = compute_batch({name: method}, model, x, TARGETS, {name: _layers(name)})[name]
    assert len(batch) == 3
    for i, t in enumerate(TARGETS):
        torch.manual_seed(0)
        single = compute(tiny_method(name), model, x[i:i + 1], t, _layers(name))
        row = batch[i]
        assert row.error is None, row.error
        assert len(row.attributions) == len(single)
        for a, b in zip(row.attributions, single):
            _same(a, b)


def test_a_group_of_techniques_on_a_batch_equals_each_alone():
    names = ["vanilla_backprop", "guided_backprop", "gradcam", "guided_gradcam", "scorecam", "integrated_gradients"]
    model, x = TinyCNN(), _images()
    methods = {n: tiny_method(n) for n in names}
    out = compute_batch(methods, model, x, TARGETS, {n: _layers(n) for n in names})
    for n in names:
        for i, t in enumerate(TARGETS):
            single = compute(tiny_method(n), model, x[i:i + 1], t, _layers(n))
            for a, b in zip(out[n][i].attributions, single):
                _same(a, b)


def test_a_failing_row_target_is_that_rows_error_only():
    model, x = TinyCNN(classes=5), _images()
    out = compute_batch({"gradcam": tiny_method("gradcam")}, model, x, [0, 7, 1], {"gradcam": ["features.3"]})["gradcam"]
    assert out[0].error is None and out[2].error is None
    assert "out of range" in str(out[1].error)
    single = compute(tiny_method("gradcam"), model, x[2:3], 1, ["features.3"])
    _same(out[2].attributions[0], single[0])


def test_none_in_a_target_list_is_that_rows_top1():
    model, x = TinyCNN(), _images()
    logits = model(x)
    idx = class_indices([2, None, None], logits)
    assert idx.tolist() == [2, int(logits[1].argmax()), int(logits[2].argmax())]


def test_row_of_an_attribution_takes_its_own_warnings_and_metrics():
    a = Attribution("m", np.arange(12.0).reshape(3, 4), np.zeros((3, 2)), (0, 1, 0), warnings=("all",),
                    metrics={"shared": 1.0}, per_row=({}, {"warnings": ("mine",), "metrics": {"gap": 2.0}}, {}))
    r = a.row(1)
    assert r.values.tolist() == [[4.0, 5.0, 6.0, 7.0]] and r.target == (1,)
    assert r.warnings == ("mine",) and r.metrics == {"shared": 1.0, "gap": 2.0} and r.per_row == ()
    assert a.row(0).warnings == ("all",) and len(a.rows()) == 3  # the batch's, where a row has none of its own


@pytest.mark.parametrize("name", ["gradcam", "layercam", "guided_gradcam", "smoothgrad"])
def test_a_warning_about_one_image_stays_with_that_image(name):
    model = TinyCNN()
    with torch.no_grad():
        for m in model.features:
            if isinstance(m, torch.nn.Conv2d):
                m.bias.zero_()  # a black image then has all-zero activations: its map is all zero
    x = _images()
    x[1] = 0.0
    out = compute_batch({name: tiny_method(name)}, model, x, TARGETS, {name: _layers(name)})[name]
    for i, t in enumerate(TARGETS):
        single = compute(tiny_method(name), model, x[i:i + 1], t, _layers(name))
        for a, b in zip(out[i].attributions, single):
            assert a.warnings == b.warnings
    assert all(a.warnings for a in out[1].attributions)
    assert not any(a.warnings for a in out[0].attributions + out[2].attributions)
