"""Analytic expectations for the techniques on tiny hand-built models (STYLE.md point 12).

Each test states what the technique must return from first principles — a weight row, a hand
computed class activation map, a float64 reference implementation of a backward rule — so a wrong
rule, an offset, a missing ReLU type or a wrong interpolation changes the numbers and fails.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz import ConfigError, get_method, list_methods
from conftest import TinyCNN, any_model, tiny_method


def run(name: str, model: nn.Module, x: torch.Tensor, target=None, layer=None, **params):
    return tiny_method(name, **params)(model, x, target, layer=layer)


def seeded_(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
    return model


# --------------------------------------------------------------------------------------------
# A float64 reference for (guided) backprop: manual forward, manual backward, no autograd.
# --------------------------------------------------------------------------------------------

def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def reference_gradient(model: nn.Module, x: torch.Tensor, target: int, guided=lambda name: True) -> torch.Tensor:
    """d logit[target] / d x for a sequential net, computed by hand in float64.

    At ReLU-family modules for which ``guided(name)`` is true the backward is
    grad_in = f'(x) * max(grad_out, 0) (guided backprop); elsewhere grad_in = f'(x) * grad_out.
    f' is 1 on 0 < x for ReLU and on 0 < x < 6 for ReLU6.
    """
    with torch.no_grad():
        return _reference_gradient(leaves(model), x.double(), target, guided)


def _reference_gradient(ops, h, target, guided):
    inputs = []
    for _, m in ops:  # forward, by hand
        inputs.append(h)
        if isinstance(m, nn.Conv2d):
            h = F.conv2d(h, m.weight.double(), m.bias.double(), m.stride, m.padding)
        elif isinstance(m, nn.Linear):
            h = h @ m.weight.double().T + m.bias.double()
        elif isinstance(m, nn.Flatten):
            h = h.reshape(h.shape[0], -1)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            assert m.output_size in (1, (1, 1))
            h = h.mean(dim=(2, 3), keepdim=True)
        elif isinstance(m, nn.ReLU6):
            h = h.clamp(0, 6)
        elif isinstance(m, nn.ReLU):
            h = h.clamp(min=0)
        else:
            raise TypeError(type(m))
    g = torch.zeros_like(h)
    g[:, target] = 1.0
    for (name, m), inp in zip(reversed(ops), reversed(inputs)):  # backward, by hand
        if isinstance(m, nn.Conv2d):
            g = torch.nn.grad.conv2d_input(inp.shape, m.weight.double(), g, m.stride, m.padding)
        elif isinstance(m, nn.Linear):
            g = g @ m.weight.double()
        elif isinstance(m, nn.Flatten):
            g = g.reshape(inp.shape)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            g = g.expand(inp.shape) / (inp.shape[2] * inp.shape[3])
        else:
            upstream = g.clamp(min=0) if guided(name) else g
            slope = (inp > 0) & (inp < 6) if isinstance(m, nn.ReLU6) else inp > 0
            g = slope.double() * upstream
    return g


def conv_linear_net(act=nn.ReLU, seed: int = 0, scale: float = 0.5, hw: tuple[int, int] = (6, 5)) -> nn.Module:
    """conv -> act -> conv -> act -> flatten -> linear -> act -> linear, float64."""
    model = nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), act(), nn.Conv2d(4, 3, 3, padding=1), act()),
        flatten=nn.Flatten(),
        head=nn.Sequential(nn.Linear(3 * hw[0] * hw[1], 7), act(), nn.Linear(7, 4)),
    ))
    return seeded_(model.double(), seed, scale)


def test_linear_model_saliency_is_the_weight_row():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 5, 6))
    x = torch.randn(2, 3, 4, 5)
    attr = run("vanilla_backprop", model, x, target=[4, 1])
    w = model[1].weight.detach()
    np.testing.assert_array_equal(attr.values[0], w[4].reshape(3, 4, 5).numpy())
    np.testing.assert_array_equal(attr.values[1], w[1].reshape(3, 4, 5).numpy())
    assert attr.target == (4, 1)


def test_guided_backprop_without_relu_modules_is_a_clear_config_error():
    class FunctionalRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.fc = nn.Linear(2, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    model = FunctionalRelu()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ConfigError) as e:
        run("guided_backprop", model, x, target=0)
    msg = str(e.value)
    assert "nn.ReLU" in msg and "has none" in msg and "vanilla_backprop" in msg
    with pytest.raises(ConfigError, match="under 'fc'"):
        run("guided_backprop", TinyCNN(), x, target=0, only_under="fc")
    # the plain gradient still works on that model
    assert run("vanilla_backprop", model, x, target=0).values.shape == (1, 3, 8, 8)


def test_guided_equals_vanilla_when_every_relu_input_and_gradient_is_positive():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2),
    ).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # all weights, biases and inputs > 0: every pre-activation
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.1)  # and gradient is positive
    x = torch.rand(1, 3, 6, 6, generator=g, dtype=torch.float64) + 0.1
    vanilla = run("vanilla_backprop", model, x, target=1).values
    guided = run("guided_backprop", model, x, target=1).values
    assert (vanilla > 0).all()
    np.testing.assert_array_equal(guided, vanilla)


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6])
def test_guided_backprop_matches_float64_reference(act):
    model = conv_linear_net(act, seed=3)
    # ReLU6: larger inputs push part of every layer above 6, where f' = 0
    x = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = x * (4 if act is nn.ReLU6 else 2)
    target = [2, 0]
    attr = run("guided_backprop", model, x, target=target)
    ref = torch.cat([reference_gradient(model, x[i:i + 1], t) for i, t in enumerate(target)])
    plain = torch.cat([reference_gradient(model, x[i:i + 1], t, guided=lambda n: False) for i, t in enumerate(target)])
    # the reference's plain gradient is autograd's, and the guided rule changes it on this net
    vanilla = run("vanilla_backprop", model, x, target=target).values
    np.testing.assert_allclose(vanilla, plain.numpy(), rtol=1e-5, atol=1e-9)
    assert np.abs(ref.numpy()).max() > 1e-3
    assert not np.allclose(ref.numpy(), plain.numpy(), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(attr.values, ref.numpy(), rtol=1e-5, atol=1e-9)
    if act is nn.ReLU6:
        first = F.conv2d(x, model.features[0].weight, model.features[0].bias, padding=1)
        assert (first > 6).any() and ((first > 0) & (first < 6)).any()
        # same weights with plain ReLU (f' = 1 above 6) give another answer: the cap is applied
        as_relu = run("guided_backprop", conv_linear_net(nn.ReLU, seed=3), x, target=target).values
        assert not np.allclose(attr.values, as_relu, rtol=1e-3, atol=1e-6)


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    from cnnviz.models.loaders import efficientnet_lite0

    return efficientnet_lite0().module


def test_guided_backprop_rewrites_relu6_in_embedded_model(lite0):
    # every activation of tf_efficientnet_lite0 is ReLU6; a rule that only knew nn.ReLU
    # (captum) would raise or return the plain gradient here
    assert not any(type(m) is nn.ReLU for m in lite0.modules())
    assert any(isinstance(m, nn.ReLU6) for m in lite0.modules())
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    vanilla = run("vanilla_backprop", lite0, x, target=1)
    guided = run("guided_backprop", lite0, x, target=1)
    assert guided.values.shape == vanilla.values.shape == (1, 3, 64, 64)
    assert np.isfinite(guided.values).all() and np.abs(guided.values).max() > 0
    assert not np.allclose(guided.values, vanilla.values, rtol=1e-2, atol=1e-6)
    np.testing.assert_array_equal(guided.logits, vanilla.logits)


def test_only_under_gates_only_the_relus_of_that_submodule():
    model = conv_linear_net(nn.ReLU, seed=5)
    x = torch.randn(1, 3, 6, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    target = 3
    features_only = reference_gradient(model, x, target, guided=lambda n: n.startswith("features."))
    everywhere = reference_gradient(model, x, target)
    assert not np.allclose(features_only.numpy(), everywhere.numpy(), rtol=1e-3, atol=1e-6)  # the head ReLU matters

    full = run("guided_backprop", model, x, target=target)
    scoped = run("guided_backprop", model, x, target=target, only_under="features")
    np.testing.assert_allclose(scoped.values, features_only.numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(full.values, everywhere.numpy(), rtol=1e-5, atol=1e-9)
    assert not np.allclose(scoped.values, full.values, rtol=1e-3, atol=1e-6)
    assert scoped.params == {"only_under": "features"}


def test_only_under_unknown_submodule_suggests_close_matches():
    with pytest.raises(ConfigError, match="close matches: features"):
        run("guided_backprop", TinyCNN(), torch.randn(1, 3, 8, 8), target=0, only_under="featurs")


class ConvGapLinear(nn.Module):
    """conv -> ReLU -> GAP -> linear with hand-set integer / dyadic weights: CAM is exact."""

    def __init__(self, conv_weight: torch.Tensor, conv_bias: torch.Tensor, fc_weight: torch.Tensor):
        super().__init__()
        k, c = conv_weight.shape[:2]
        self.features = nn.Sequential(nn.Conv2d(c, k, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(k, fc_weight.shape[0])
        with torch.no_grad():
            self.features[0].weight.copy_(conv_weight)
            self.features[0].bias.copy_(conv_bias)
            self.fc.weight.copy_(fc_weight)
            self.fc.bias.fill_(0.5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def cam_net():
    g = torch.Generator().manual_seed(7)
    conv_w = torch.randint(-2, 3, (3, 3, 3, 3), generator=g).float()
    conv_b = torch.tensor([1.0, -1.0, 2.0])
    fc_w = torch.tensor([[0.5, -1.25, 2.0], [-0.75, 1.5, 0.25]])
    x = torch.randint(-3, 4, (1, 3, 4, 4), generator=g).float()  # h * w = 16
    return ConvGapLinear(conv_w, conv_b, fc_w), x


def test_gradcam_on_conv_gap_linear_is_cam_over_hw(cam_net):
    model, x = cam_net
    with torch.no_grad():
        acts = model.features(x)[0]  # (K, h, w)
    h, w = acts.shape[-2:]
    for c in range(2):
        cam = torch.einsum("k,khw->hw", model.fc.weight[c].detach(), acts)
        attr = run("gradcam", model, x, target=c, layer="features.1", relu=False)
        assert attr.layer == "features.1" and attr.target == (c,)
        np.testing.assert_array_equal(attr.values[0], (cam / (h * w)).numpy())
        assert (cam < 0).any() and (cam > 0).any()  # a signed map: the relu=False path is exercised


def test_gradcam_relu_is_clamp_of_the_signed_map(cam_net):
    model, x = cam_net
    signed = run("gradcam", model, x, target=0, layer="features.1", relu=False).values
    rectified = run("gradcam", model, x, target=0, layer="features.1", relu=True)
    assert (signed < 0).any()
    np.testing.assert_array_equal(rectified.values, np.clip(signed, 0, None))
    np.testing.assert_array_equal(rectified.upsampled, np.clip(signed, 0, None))  # 4x4 -> 4x4 is identity


def test_gradcam_sum_starts_from_zero_on_one_channel():
    conv_w = torch.zeros(1, 3, 3, 3)
    conv_w[0, 0, 1, 1] = 1.0  # A = relu(x[0] + 0.5)
    model = ConvGapLinear(conv_w, torch.tensor([0.5]), torch.tensor([[2.0], [-4.0]]))
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4).expand(1, 3, 4, 4) / 4 - 1
    a = torch.relu(x[0, 0] + 0.5)
    for c, w in enumerate([2.0, -4.0]):
        alpha = w / 16
        attr = run("gradcam", model, x, target=c, layer="features.1", relu=False)
        np.testing.assert_array_equal(attr.values[0], (alpha * a).numpy())  # not 1 + alpha * A


def test_guided_gradcam_is_upsampled_gradcam_times_guided_backprop():
    model = TinyCNN()
    x = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(8))
    cam = run("gradcam", model, x, target=[1, 3], layer="features.3")
    guided = run("guided_backprop", model, x, target=[1, 3])
    gg = run("guided_gradcam", model, x, target=[1, 3], layer="features.3")
    assert gg.values.shape == (2, 3, 12, 10)
    assert gg.target == (1, 3) and gg.layer == "features.3"
    np.testing.assert_allclose(gg.values, guided.values * cam.upsampled[:, None], rtol=1e-6, atol=0)
    assert np.abs(gg.values).max() > 0


class Strided(nn.Module):
    """Two stride-2 convs: the layer map is a quarter of the input size in each direction."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(inplace),
            nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.ReLU(inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 4)
        seeded_(self, 9)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_non_square_input_shapes_and_bilinear_upsampling():
    model = Strided()
    x = torch.randn(1, 3, 40, 64, generator=torch.Generator().manual_seed(10))
    for name in ("vanilla_backprop", "guided_backprop"):
        assert run(name, model, x, target=2).values.shape == (1, 3, 40, 64)
    assert run("guided_gradcam", model, x, target=2, layer="features.3").values.shape == (1, 3, 40, 64)

    attr = run("gradcam", model, x, target=2, layer="features.3", relu=False)
    assert attr.values.shape == (1, 10, 16)
    assert attr.upsampled.shape == (1, 40, 64)
    m = torch.from_numpy(attr.values)[:, None]
    expected = F.interpolate(m, size=(40, 64), mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(attr.upsampled, expected.numpy(), rtol=1e-6, atol=1e-7)
    corners = F.interpolate(m, size=(40, 64), mode="bilinear", align_corners=True)[:, 0]
    assert not np.allclose(attr.upsampled, corners.numpy(), rtol=1e-3, atol=1e-6)
    # values are the layer's own (signed, unnormalised) map, not a resized or rescaled one
    with torch.no_grad():
        acts = model.features(x)[0]
    weights = model.fc.weight[2].detach() / acts[0].numel()
    np.testing.assert_allclose(attr.values[0], torch.einsum("k,khw->hw", weights, acts).numpy(), rtol=1e-5, atol=1e-7)


def _layer_for(name: str):
    return "features.3" if get_method(name).needs_layer else None


@pytest.mark.parametrize("name", [n for n in list_methods() if any_model(n)])
def test_batch_equals_single_images(name):
    model = TinyCNN()
    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(11))
    layer = _layer_for(name)
    both = run(name, model, x, target=[0, 3], layer=layer)
    uses_target = get_method(name).uses_target
    assert both.target == ((0, 3) if uses_target else ())
    for i, t in enumerate([0, 3]):
        one = run(name, model, x[i:i + 1], target=t, layer=layer)
        assert one.target == ((t,) if uses_target else ())
        # float32 convs round differently for batch 1 and 2; weighted channel sums cancel, so the
        # absolute tolerance follows the map's scale
        scale = float(np.abs(one.values).max()) or 1.0
        np.testing.assert_allclose(both.values[i], one.values[0], rtol=1e-5, atol=1e-6 * scale)
        np.testing.assert_allclose(both.logits[i], one.logits[0], rtol=1e-6, atol=1e-7)
        if one.upsampled is not None:
            np.testing.assert_allclose(both.upsampled[i], one.upsampled[0], rtol=1e-5, atol=1e-6 * scale)


def test_callable_target_is_the_gradient_of_that_score():
    model = TinyCNN()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(12))
    attr = run("vanilla_backprop", model, x, target=lambda logits: logits[:, 1] - logits[:, 2])
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    (expected,) = torch.autograd.grad((logits[:, 1] - logits[:, 2]).sum(), xr)
    np.testing.assert_allclose(attr.values, expected.numpy(), rtol=1e-5, atol=1e-7)
    assert attr.target == ()
    # linearity: the same as the difference of the two class saliencies
    one = run("vanilla_backprop", model, x, target=1).values
    two = run("vanilla_backprop", model, x, target=2).values
    np.testing.assert_allclose(attr.values, one - two, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [5, -1, [0, 7]])
def test_target_out_of_range_names_the_valid_range(bad):
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ConfigError) as e:
        run("vanilla_backprop", TinyCNN(classes=5), x, target=bad)
    assert "out of range" in str(e.value)
    assert "0..4" in str(e.value)


@pytest.mark.parametrize("scalar", [np.int64(2), torch.tensor(2)], ids=["numpy", "tensor"])
def test_integer_scalar_target_types(scalar):
    model, x = TinyCNN(), torch.randn(2, 3, 8, 8)
    attr = run("vanilla_backprop", model, x, target=scalar)
    assert attr.target == (2, 2)
    np.testing.assert_array_equal(attr.values, run("vanilla_backprop", model, x, target=2).values)


def test_target_count_must_match_batch():
    with pytest.raises(ConfigError, match="3 entries for a batch of 2"):
        run("vanilla_backprop", TinyCNN(), torch.randn(2, 3, 8, 8), target=[0, 1, 2])


def test_default_target_is_top1():
    model = TinyCNN()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(13))
    attr = run("vanilla_backprop", model, x)
    with torch.no_grad():
        top = model(x).argmax(dim=1)
    assert attr.target == tuple(int(t) for t in top)
    explicit = run("vanilla_backprop", model, x, target=list(attr.target))
    np.testing.assert_array_equal(attr.values, explicit.values)
