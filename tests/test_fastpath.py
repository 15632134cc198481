"""The fast copy (BatchNorm folded, channels-last) computes what the model computes, and is used only
where that holds."""
from __future__ import annotations

import contextvars

import pytest
import torch
from torch import nn

from cnnviz import get_method
from cnnviz.speed import fastpath
from cnnviz.speed.fastpath import exact, fast_model
from cnnviz.core.passes import gradient_pass


class ConvBN(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN -> ReLU -> GAP -> linear with non-trivial BN statistics."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))
        for bn in (self.features[1], self.features[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.3, 0.3)

    def forward(self, x):
        return self.head(self.features(x))


class BNOnTheInput(ConvBN):
    """The BatchNorm registered after the first conv normalises something else: folding it is wrong."""

    def forward(self, x):
        f = self.features
        h = f[2](f[0](x) + f[1](f[0](x).detach() * 0 + 1))
        return self.head(f[5](f[4](f[3](h))))


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test asks for the fast copy (off in the library API) and starts with an empty cache."""
    fastpath.clear_cache()
    with fastpath.using(True):
        yield
    fastpath.clear_cache()


def test_the_fast_copy_is_off_unless_asked():
    model, x = ConvBN().eval(), x_of()
    # a fresh context: what a caller that asked for nothing gets
    assert contextvars.Context().run(lambda: fastpath.fast_model(model, x)[0]) is model
    assert contextvars.Context().run(lambda: gradient_pass(model, x, 1)) is not None and not fastpath._CACHE
    with fastpath.using(False):
        assert fast_model(model, x)[0] is model and not fastpath.enabled()
    assert fast_model(model, x)[0] is not model and fastpath.enabled()  # the block restored the setting


def test_the_engine_applies_the_fast_copy_only_for_the_call_that_asks():
    from cnnviz.engine import compute
    from cnnviz.speed import Speed

    model, x = ConvBN().eval(), x_of()
    method = get_method("vanilla_backprop")()
    with fastpath.using(False):
        compute(method, model, x, 1, [], Speed())
        assert not fastpath._CACHE
        compute(method, model, x, 1, [], Speed(fast_copy=True))
        assert fastpath._CACHE[model].module is not None  # the copy ran
        assert not fastpath.enabled()  # and the setting ended with the call


def test_clear_cache_forgets_every_copy():
    model, x = ConvBN().eval(), x_of()
    fast_model(model, x)
    assert model in fastpath._CACHE
    fastpath.clear_cache()
    assert model not in fastpath._CACHE


def x_of(seed=1, b=2):
    return torch.randn(b, 3, 9, 11, generator=torch.Generator().manual_seed(seed))


def test_copy_folds_and_keeps_function_and_input_gradient():
    model, x = ConvBN().eval(), x_of()
    net, fx = fast_model(model, x)
    assert net is not model and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert fx.is_contiguous(memory_format=torch.channels_last)
    with exact():
        want = gradient_pass(model, x, 2)
    got = gradient_pass(model, x, 2)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.input_gradient, want.input_gradient, rtol=1e-4, atol=1e-6)


def test_guided_rule_applies_to_the_copy():
    model, x = ConvBN().eval(), x_of()
    guided = get_method("guided_backprop")()
    with exact():
        want = guided(model, x, 1).values
    got = guided(model, x, 1).values
    assert fastpath._CACHE[model].module is not None
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), rtol=1e-4, atol=1e-6)
    vanilla = get_method("vanilla_backprop")()(model, x, 1).values
    assert not torch.allclose(torch.from_numpy(got), torch.from_numpy(vanilla))  # the rule did act


def test_a_folded_conv_as_layer_runs_the_model_itself():
    model, x = ConvBN().eval(), x_of()
    assert fast_model(model, x, ["features.0"])[0] is model  # its output would include the BatchNorm
    assert fast_model(model, x, ["features.1"])[0] is not model  # the BatchNorm's output is unchanged
    with exact():
        want = gradient_pass(model, x, 0, layers=["features.1", "features.3"], input_gradient=False)
    got = gradient_pass(model, x, 0, layers=["features.1", "features.3"], input_gradient=False)
    for name in ("features.1", "features.3"):
        torch.testing.assert_close(got.activations[name], want.activations[name])


def test_batchnorm_not_fed_by_the_conv_is_not_folded():
    model, x = BNOnTheInput().eval(), x_of()
    net, _ = fast_model(model, x)
    with exact():
        want = model(x)
    torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-6)
    assert net is not model  # the second pair is still folded
    assert isinstance(net.features[1], nn.BatchNorm2d) and not isinstance(net.features[4], nn.BatchNorm2d)


def test_copy_follows_weight_changes_and_leaves_the_model_alone():
    model, x = ConvBN().eval(), x_of()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = gradient_pass(model, x, 3).logits
    with torch.no_grad():
        model.head[2].weight.mul_(2.0)
        model.features[1].running_mean.add_(0.1)
    with exact():
        want = model(x)
    torch.testing.assert_close(gradient_pass(model, x, 3).logits, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(first, want)
    assert all(p.is_contiguous() for p in model.parameters())
    assert isinstance(model.features[1], nn.BatchNorm2d) and model.features[1].running_mean.ne(state["features.1.running_mean"]).all()


def test_instrumented_model_runs_as_given():
    model, x = ConvBN().eval(), x_of()
    calls = []
    handle = model.features[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        assert fast_model(model, x)[0] is model
        gradient_pass(model, x, 0)
    finally:
        handle.remove()
    assert calls == [1]


@pytest.mark.parametrize("flag", [False, True])
def test_fast_copy_config_key_switches_the_copy(flag):
    from test_config import compose_cfg

    from cnnviz.app.plan import build_plan

    from cnnviz.speed import applied

    with fastpath.using(False):
        plan = build_plan(compose_cfg([f"fast_copy={str(flag).lower()}", "method=vanilla_backprop"]))
        assert plan.speed.fast_copy is flag and not fastpath.enabled()  # the plan sets nothing by itself
        x = torch.randn(1, 3, 64, 64)
        with applied(plan.speed):
            assert (fast_model(plan.model.module, x)[0] is not plan.model.module) is flag  # efficientnet has BatchNorms


def test_model_without_batchnorm_gets_a_gradient_free_copy_sharing_storage():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9 * 11, 5)).eval()
    x = x_of()
    net, fx = fast_model(model, x)
    assert net is not model and fx.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in net.parameters()) and all(p.requires_grad for p in model.parameters())
    assert net[3].weight.data_ptr() == model[3].weight.data_ptr()  # no second copy of the big matrices
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last) and model[0].weight.is_contiguous()
    with exact():
        want = gradient_pass(model, x, 4)
    got = gradient_pass(model, x, 4)
    torch.testing.assert_close(got.input_gradient, want.input_gradient, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        model[3].weight.mul_(-1.0)  # seen through the shared storage and the version counter
    with exact():
        flipped = gradient_pass(model, x, 4)
    torch.testing.assert_close(gradient_pass(model, x, 4).input_gradient, flipped.input_gradient, rtol=1e-4, atol=1e-6)
    assert model[0].weight.grad is None and model[3].weight.grad is None


def test_copy_first_built_under_inference_mode_still_serves_gradients():
    model, x = ConvBN().eval(), x_of()
    get_method("scorecam")()(model, x, 1, layer="features.5")  # builds the copy inside torch.inference_mode
    assert fastpath._CACHE[model].module is not None
    with exact():
        want = gradient_pass(model, x, 1)
    torch.testing.assert_close(gradient_pass(model, x, 1).input_gradient, want.input_gradient, rtol=1e-4, atol=1e-6)
