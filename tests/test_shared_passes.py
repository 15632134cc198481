"""Techniques computed together share their gradient passes and give the same results as alone."""
import numpy as np
import pytest
import torch

from cnnviz import get_method, list_methods
from cnnviz.engine import compute, compute_group
from conftest import TinyCNN, any_model, hook_count, tiny_method

LAYERS = ["features.1", "features.3"]


def layers_for(name):
    if name == "cam":  # CAM needs the layer that feeds GAP -> linear
        return ["features.3"]
    return LAYERS if get_method(name).needs_layer else []


def count_forwards(model):
    calls = []
    handle = model.features[0].register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_every_technique_in_one_group_equals_each_alone():
    model, x = TinyCNN(), torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(3))
    names = [n for n in list_methods() if any_model(n)]
    methods = {n: tiny_method(n) for n in names}
    together = compute_group(methods, model, x, 2, {n: layers_for(n) for n in names})
    assert hook_count(model) == 0
    for name in names:
        result, ms = together[name].attributions, together[name].ms
        assert together[name].error is None, (name, together[name].error)
        alone = compute(tiny_method(name), model, x, 2, layers_for(name))
        assert ms >= 0 and len(result) == len(alone), name
        for a, b in zip(result, alone):
            assert a.layer == b.layer and a.target == b.target
            np.testing.assert_array_equal(a.values, b.values, err_msg=name)
            if b.upsampled is not None:
                np.testing.assert_array_equal(a.upsampled, b.upsampled, err_msg=name)


@pytest.mark.parametrize("names, passes", [
    (["vanilla_backprop", "grad_times_image", "gradcam", "gradcam_plusplus", "layercam", "hirescam"], 1),
    (["vanilla_backprop", "guided_backprop", "gradcam", "guided_gradcam"], 2),  # the classic four
    (["guided_backprop", "deconvnet"], 2),
])
def test_one_forward_per_backward_rule(names, passes):
    model, x = TinyCNN(), torch.randn(1, 3, 10, 12)
    calls, handle = count_forwards(model)
    try:
        out = compute_group({n: get_method(n)() for n in names}, model, x, 1, {n: layers_for(n) for n in names})
    finally:
        handle.remove()
    assert all(r.error is None for r in out.values())
    assert len(calls) == passes


def test_a_failing_pass_fails_only_its_users():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.randn(1, 3, 8, 8)
    out = compute_group({"guided_backprop": get_method("guided_backprop")(), "vanilla_backprop": get_method("vanilla_backprop")()},
                        model, x, 0, {"guided_backprop": [], "vanilla_backprop": []})
    assert isinstance(out["guided_backprop"].error, Exception) and "ReLU-family" in str(out["guided_backprop"].error)
    assert out["guided_backprop"].attributions is None
    assert out["vanilla_backprop"].error is None
