"""The gradient family — deconvnet, grad_times_image, integrated_gradients, smoothgrad, LRP,
occlusion, layer_activation_guided — against analytic values and float64 references written here
from the papers' formulas (STYLE.md point 12; zennit's habit of slow reference rules).

The contract checks every technique shares (shapes, NaN, hooks, model state, in-place ReLU) live in
``test_methods_generic.py``; this file checks the numbers. Models are tiny and mostly float64; the
techniques return float32 arrays, so "equal" below means equal to float32 rounding.
"""
from __future__ import annotations

import copy
import re
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz import ConfigError, get_method
from conftest import TinyCNN, hook_count, needs_shared_images, run_cli

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

D = torch.float64
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
IG_RULES = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=gen(seed), dtype=D)


def pixels(*shape: int, seed: int = 0) -> torch.Tensor:
    """A normalised input whose pixels lie in [0, 1] (for the zᴮ bounds)."""
    p = torch.rand(shape, generator=gen(seed), dtype=D)
    return (p - torch.tensor(MEAN, dtype=D).view(1, 3, 1, 1)) / torch.tensor(STD, dtype=D).view(1, 3, 1, 1)


def seeded(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    """float64, eval mode, weights ~ N(0, scale²) from a private generator."""
    model = model.double().eval()
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=D) * scale)
    return model


def close(actual, expected, rtol: float = 1e-6) -> None:
    """Equal to float32 rounding: ``rtol`` of each value, and of the largest value near zero."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(float(np.abs(expected).max()), 1e-30))


def differs(a, b, by: float = 1e-3) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max()) > by * float(np.abs(b).max())


def grad_of(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Plain autograd gradient of the target logit (summed over the batch) w.r.t. the input."""
    x = x.detach().clone().requires_grad_(True)
    return torch.autograd.grad(model(x)[:, target].sum(), x)[0]


def method(name: str, **params):
    return get_method(name)(**params)


def bounds() -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(MEAN, dtype=D).view(1, 3, 1, 1)
    s = torch.tensor(STD, dtype=D).view(1, 3, 1, 1)
    return (0 - m) / s, (1 - m) / s


def linear_model(shape=(3, 4, 4), classes: int = 3, seed: int = 0) -> nn.Module:
    return seeded(nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), classes)), seed)


# ============================================================================================
# Integrated gradients
# ============================================================================================

def smooth_net(seed: int = 1) -> nn.Module:
    return seeded(nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Conv2d(4, 3, 3, padding=1), nn.Tanh(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 4),
    ), seed)


def relu_net(seed: int = 2) -> nn.Module:
    return TinyCNN(classes=4, seed=seed).double().eval()


@pytest.mark.parametrize("net", [smooth_net, relu_net], ids=["softplus-tanh", "relu"])
@pytest.mark.parametrize("rule", IG_RULES)
def test_ig_completeness_within_one_percent_at_300_steps(rule, net):
    model, x, target = net(), randn(1, 3, 8, 8, seed=3), 2
    attr = method("integrated_gradients", n_steps=300, method=rule, internal_batch_size=150,
                  input_mean=MEAN, input_std=STD)(model, x, target)
    black = bounds()[0].expand_as(x)
    with torch.no_grad():
        delta = float(model(x)[0, target] - model(black)[0, target])
    assert abs(delta) > 1e-2  # a meaningful difference to be complete about
    total = float(attr.values.astype(np.float64).sum())
    gap = abs(total - delta) / abs(delta)
    assert gap < 0.01, (rule, total, delta)
    assert attr.metrics["completeness_gap"] == pytest.approx(gap, abs=1e-5)
    assert attr.metrics["score_delta"] == pytest.approx(delta, rel=1e-9)


@pytest.mark.parametrize("baseline", ["black", "zero"])
@pytest.mark.parametrize("rule", IG_RULES)
def test_ig_on_a_linear_model_is_input_minus_baseline_times_weight(rule, baseline):
    model, x, target = linear_model(), randn(1, 3, 4, 4, seed=4), 1
    attr = method("integrated_gradients", n_steps=5, method=rule, baseline=baseline, internal_batch_size=2,
                  input_mean=MEAN, input_std=STD)(model, x, target)
    w = model[1].weight[target].view(1, 3, 4, 4)
    x0 = bounds()[0].expand_as(x) if baseline == "black" else torch.zeros_like(x)
    close(attr.values, ((x - x0) * w).detach())
    assert attr.metrics["completeness_gap"] < 1e-6


def my_quadrature(rule: str, n: int) -> list[tuple[float, float]]:
    """(α, weight) pairs from the rules' definitions."""
    if rule == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(n)
        return [((ti + 1) / 2, wi / 2) for ti, wi in zip(t, w)]
    if rule == "riemann_trapezoid":
        return [(k / (n - 1), (0.5 if k in (0, n - 1) else 1.0) / (n - 1)) for k in range(n)]
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return [((k + offset) / n, 1.0 / n) for k in range(n)]


@pytest.mark.parametrize("rule", IG_RULES)
def test_ig_with_few_steps_is_the_rule_quadrature_of_the_path_gradient(rule):
    model, x, target = smooth_net(), randn(1, 3, 6, 6, seed=27), 1
    x0 = bounds()[0].expand_as(x)
    attr = method("integrated_gradients", n_steps=3, method=rule, input_mean=MEAN, input_std=STD)(model, x, target)
    expected = sum(w * grad_of(model, x0 + a * (x - x0), target) for a, w in my_quadrature(rule, 3)) * (x - x0)
    close(attr.values, expected)
    # three points are far from the integral: the rules really differ from one another
    others = [sum(w * grad_of(model, x0 + a * (x - x0), target) for a, w in my_quadrature(r, 3)) * (x - x0)
              for r in IG_RULES if r != rule]
    assert all(differs(attr.values, o, by=1e-4) for o in others)


def ig(**params):
    return get_method("integrated_gradients")(**{"input_mean": MEAN, "input_std": STD, **params})


def total_variation(t: torch.Tensor) -> float:
    return float((t[..., 1:, :] - t[..., :-1, :]).abs().sum() + (t[..., :, 1:] - t[..., :, :-1]).abs().sum())


def test_ig_black_baseline_is_pixel_zero_per_channel():
    x = randn(2, 3, 5, 6, seed=5)
    x0 = ig(baseline="black").baseline_for(x)
    assert x0.shape == x.shape
    for c in range(3):
        assert torch.allclose(x0[:, c], torch.full_like(x0[:, c], -MEAN[c] / STD[c]))
    # without a normalisation the input is pixels: black is 0
    assert torch.equal(get_method("integrated_gradients")(baseline="black").baseline_for(x), torch.zeros_like(x))


def test_ig_zero_baseline_is_zero():
    x = randn(1, 3, 5, 6, seed=6)
    assert torch.equal(ig(baseline="zero").baseline_for(x), torch.zeros_like(x))


def test_ig_uniform_baseline_spans_the_pixel_range_and_follows_its_seed():
    x = randn(1, 3, 16, 16, seed=7)
    low, high = bounds()
    a = ig(baseline="uniform", seed=1).baseline_for(x)
    assert a.shape == x.shape
    assert bool((a >= low).all()) and bool((a <= high).all())
    for c in range(3):  # 256 draws per channel fill the channel's own range
        span = float(high[0, c, 0, 0] - low[0, c, 0, 0])
        assert float(a[0, c].min()) < float(low[0, c, 0, 0]) + 0.05 * span
        assert float(a[0, c].max()) > float(high[0, c, 0, 0]) - 0.05 * span
    assert torch.equal(ig(baseline="uniform", seed=1).baseline_for(x), a)
    assert not torch.allclose(ig(baseline="uniform", seed=2).baseline_for(x), a)


def test_ig_blur_baseline_is_smoother_than_the_input():
    x = randn(1, 3, 16, 16, seed=8)
    x0 = ig(baseline="blur", blur_sigma=1.5).baseline_for(x)
    assert x0.shape == x.shape
    assert total_variation(x0) < 0.5 * total_variation(x)
    flat = torch.full((1, 3, 16, 16), 0.7, dtype=D)  # a blur leaves a constant image alone
    assert torch.allclose(ig(baseline="blur", blur_sigma=1.5).baseline_for(flat), flat)


@pytest.mark.parametrize("baseline", ["uniform", "blur"])
def test_ig_attribution_uses_the_baseline_it_describes(baseline):
    """On a linear model IG = (x − x') ⊙ w reveals the baseline actually used inside the call."""
    model, x, target = linear_model((3, 8, 8)), randn(1, 3, 8, 8, seed=9), 2
    m = ig(baseline=baseline, blur_sigma=1.0, seed=4, n_steps=3)
    w = model[1].weight[target].view(1, 3, 8, 8)
    close(m(model, x, target).values, ((x - m.baseline_for(x)) * w).detach())


def test_ig_internal_batch_size_does_not_change_the_result():
    model, x = smooth_net(), randn(1, 3, 8, 8, seed=10)
    one = ig(n_steps=20, method="riemann_middle", internal_batch_size=1)(model, x, 3)
    seven = ig(n_steps=20, method="riemann_middle", internal_batch_size=7)(model, x, 3)
    np.testing.assert_allclose(one.values, seven.values, rtol=1e-6, atol=1e-6)
    assert one.metrics["completeness_gap"] == pytest.approx(seven.metrics["completeness_gap"], abs=1e-6)


def test_ig_blur_baseline_on_an_input_smaller_than_the_kernel():
    model, x = TinyCNN().double().eval(), randn(1, 3, 10, 12, seed=11)
    try:
        attr = get_method("integrated_gradients")(baseline="blur", n_steps=4)(model, x, 1)  # default σ = 10 px
    except ConfigError as e:
        assert "blur_sigma" in str(e)
    else:
        assert np.isfinite(attr.values).all()


# ============================================================================================
# SmoothGrad
# ============================================================================================

def sg_model() -> nn.Module:
    return TinyCNN(classes=4, seed=3).double().eval()


@pytest.mark.parametrize("inner", ["vanilla_backprop", "guided_backprop"])
def test_smoothgrad_without_noise_is_its_inner_technique(inner):
    model, x = sg_model(), randn(1, 3, 8, 8, seed=12)
    smooth = method("smoothgrad", inner=inner, noise_level=0.0, n_samples=3, batch_size=2)(model, x, 1)
    plain = method(inner)(model, x, 1)
    np.testing.assert_allclose(smooth.values, plain.values, rtol=2e-7, atol=0)
    assert np.abs(plain.values).max() > 0


def test_smoothgrad_is_reproducible_by_seed():
    model, x = sg_model(), randn(1, 3, 8, 8, seed=13)
    a = method("smoothgrad", n_samples=4, batch_size=2, seed=5)(model, x, 2).values
    b = method("smoothgrad", n_samples=4, batch_size=2, seed=5)(model, x, 2).values
    c = method("smoothgrad", n_samples=4, batch_size=2, seed=6)(model, x, 2).values
    np.testing.assert_array_equal(a, b)
    assert differs(a, c)


def my_noisy_gradients(model, x, target, n, batch, seed, level, times_input=False) -> torch.Tensor:
    """The n gradients at x + N(0, σ²), σ = level·(max x − min x), noise drawn batch by batch
    from torch.Generator().manual_seed(seed), as the implementation documents."""
    g = gen(seed)
    sigma = level * float(x.max() - x.min())
    out = []
    for start in range(0, n, batch):
        noise = torch.randn((min(batch, n - start), *x.shape[1:]), generator=g, dtype=x.dtype)
        for k in range(noise.shape[0]):
            xn = x + sigma * noise[k:k + 1]
            grad = grad_of(model, xn, target)
            out.append(xn * grad if times_input else grad)
    return torch.cat(out)


@pytest.mark.parametrize("variant", ["mean", "sq", "var"])
def test_smoothgrad_variants_match_my_computation_on_the_same_noise(variant):
    model, x, target = sg_model(), randn(1, 3, 8, 8, seed=14), 3
    attr = method("smoothgrad", n_samples=5, batch_size=2, seed=7, noise_level=0.2, variant=variant)(model, x, target)
    g = my_noisy_gradients(model, x, target, 5, 2, 7, 0.2)
    mean, sq = g.mean(0, keepdim=True), g.pow(2).mean(0, keepdim=True)
    expected = {"mean": mean, "sq": sq, "var": sq - mean.pow(2)}[variant]
    close(attr.values, expected, rtol=1e-5)
    assert differs(attr.values, grad_of(model, x, target))  # the noise did something


def test_smoothgrad_wraps_grad_times_image():
    model, x, target = sg_model(), randn(1, 3, 8, 8, seed=15), 0
    attr = method("smoothgrad", inner="grad_times_image", n_samples=3, batch_size=3, seed=1)(model, x, target)
    close(attr.values, my_noisy_gradients(model, x, target, 3, 3, 1, 0.15, times_input=True).mean(0, keepdim=True), rtol=1e-5)


def test_smoothgrad_batch_size_does_not_change_the_result():
    model, x = sg_model(), randn(1, 3, 8, 8, seed=16)  # 3·8·8 values per sample
    runs = [method("smoothgrad", n_samples=5, batch_size=b, seed=2)(model, x, 1).values for b in (1, 2, 5)]
    for other in runs[1:]:
        close(other, runs[0], rtol=1e-5)


def test_smoothgrad_batch_size_does_not_change_the_result_for_any_image_size():
    model, x = sg_model(), randn(1, 3, 5, 5, seed=16)  # 75 values per sample
    runs = [method("smoothgrad", n_samples=5, batch_size=b, seed=2)(model, x, 1).values for b in (1, 2, 5)]
    for other in runs[1:]:
        close(other, runs[0], rtol=1e-5)


def test_smoothgrad_image_does_not_depend_on_its_batch():
    model, x = sg_model(), randn(2, 3, 8, 8, seed=17)
    both = method("smoothgrad", n_samples=3, batch_size=2)(model, x, [1, 2]).values
    close(both[1:], method("smoothgrad", n_samples=3, batch_size=2)(model, x[1:], 2).values, rtol=1e-5)


@pytest.mark.parametrize("inner", ["gradcam", "cam"])
def test_smoothgrad_refuses_a_cam_inner(inner):
    m = method("smoothgrad", inner=inner, n_samples=2)
    with pytest.raises(ConfigError, match=inner):
        m.check(TinyCNN())
    with pytest.raises(ConfigError, match="not a gradient technique"):
        m(TinyCNN(), torch.randn(1, 3, 8, 8), 1)


# ============================================================================================
# Deconvnet
# ============================================================================================

class PoolNet(nn.Module):
    """conv → ReLU → maxpool → conv → ReLU → flatten → linear, on (1, 3, 6, 6)."""

    def __init__(self, inplace: bool = False, act=nn.ReLU):
        super().__init__()
        self.conv1, self.act1, self.pool = nn.Conv2d(3, 4, 3, padding=1), act(inplace=inplace), nn.MaxPool2d(2)
        self.conv2, self.act2, self.fc = nn.Conv2d(4, 5, 3, padding=1), act(inplace=inplace), nn.Linear(45, 4)

    def forward(self, x):
        return self.fc(self.act2(self.conv2(self.pool(self.act1(self.conv1(x))))).flatten(1))


def deconvnet_reference(net: PoolNet, x: torch.Tensor, target: int) -> torch.Tensor:
    """Zeiler & Fergus by hand: transposed convolutions, max-unpooling at the forward switches and
    max(grad, 0) at each ReLU whatever the sign of its forward input."""
    with torch.no_grad():
        z1 = F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)
        pooled, switches = F.max_pool2d(z1.clamp(min=0), 2, return_indices=True)
        g = net.fc.weight[target].view(1, 5, 3, 3).clamp(min=0)  # through ReLU 2
        g = F.conv_transpose2d(g, net.conv2.weight, padding=1)
        g = F.max_unpool2d(g, switches, 2, output_size=z1.shape[-2:]).clamp(min=0)  # ReLU 1
        return F.conv_transpose2d(g, net.conv1.weight, padding=1)


def test_deconvnet_matches_the_float64_reference_and_is_not_guided_backprop():
    net, x, target = seeded(PoolNet(), 20), randn(1, 3, 6, 6, seed=21), 2
    attr = method("deconvnet")(net, x, target)
    ref = deconvnet_reference(net, x, target)
    close(attr.values, ref)
    assert attr.warnings == ()
    assert differs(attr.values, method("guided_backprop")(net, x, target).values)
    assert differs(attr.values, grad_of(net, x, target))


def test_deconvnet_with_inplace_relus_is_the_same():
    x, target = randn(1, 3, 6, 6, seed=21), 2
    plain = method("deconvnet")(seeded(PoolNet(), 20), x, target)
    inplace = method("deconvnet")(seeded(PoolNet(inplace=True), 20), x, target)
    np.testing.assert_array_equal(inplace.values, plain.values)


def test_deconvnet_without_relus_is_the_gradient_and_says_so():
    """No nonlinearity module at all: the deconvnet rule changes nothing, the row says so. Another
    activation (Tanh) has no deconvnet rule: refused, naming it, never its plain gradient."""
    net = seeded(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3)), 22)
    x = randn(1, 3, 6, 6, seed=23)
    attr = method("deconvnet")(net, x, 1)
    close(attr.values, grad_of(net, x, 1))
    assert any("gradient" in w and "ReLU" in w for w in attr.warnings), attr.warnings
    tanh = seeded(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3)), 22)
    with pytest.raises(ConfigError, match="Tanh"):
        method("deconvnet")(tanh, x, 1)


# ============================================================================================
# Input × gradient
# ============================================================================================

def test_grad_times_image_normalized_is_x_times_the_gradient():
    model, x = TinyCNN(classes=4, seed=4).double().eval(), randn(1, 3, 8, 8, seed=24)
    attr = method("grad_times_image", input_mean=MEAN, input_std=STD)(model, x, 1)
    close(attr.values, x * grad_of(model, x, 1))


def test_grad_times_image_pixel_is_pixels_times_the_pixel_gradient():
    model, x = TinyCNN(classes=4, seed=4).double().eval(), randn(1, 3, 8, 8, seed=24)
    attr = method("grad_times_image", space="pixel", input_mean=MEAN, input_std=STD)(model, x, 1)
    m, s = torch.tensor(MEAN, dtype=D).view(1, 3, 1, 1), torch.tensor(STD, dtype=D).view(1, 3, 1, 1)
    close(attr.values, (x * s + m) * (grad_of(model, x, 1) / s))
    assert differs(attr.values, x * grad_of(model, x, 1))


@pytest.mark.parametrize("space", ["normalized", "pixel"])
def test_grad_times_image_guided_base_uses_guided_gradients(space):
    model, x = TinyCNN(classes=4, seed=4).double().eval(), randn(1, 3, 8, 8, seed=25)
    attr = method("grad_times_image", base="guided", space=space, input_mean=MEAN, input_std=STD)(model, x, 2)
    guided = torch.from_numpy(method("guided_backprop")(model, x, 2).values).double()
    m, s = torch.tensor(MEAN, dtype=D).view(1, 3, 1, 1), torch.tensor(STD, dtype=D).view(1, 3, 1, 1)
    close(attr.values, x * guided if space == "normalized" else (x * s + m) * guided / s)
    assert differs(attr.values, method("grad_times_image", space=space, input_mean=MEAN, input_std=STD)(model, x, 2).values)


@pytest.mark.parametrize("space", ["normalized", "pixel"])
def test_grad_times_image_integrated_base_is_integrated_gradients(space):
    model, x = smooth_net(), randn(1, 3, 8, 8, seed=26)
    attr = method("grad_times_image", base="integrated", space=space, input_mean=MEAN, input_std=STD)(model, x, 1)
    ref = method("integrated_gradients", input_mean=MEAN, input_std=STD)(model, x, 1)
    close(attr.values, ref.values)
    assert attr.metrics["completeness_gap"] == pytest.approx(ref.metrics["completeness_gap"])


# ============================================================================================
# LRP: float64 reference, conservation, BatchNorm folding, skips, refusals
# ============================================================================================

def dense(module: nn.Module, in_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """The layer as an explicit matrix on the flattened input: (W, b, output shape)."""
    if isinstance(module, nn.Linear):
        b = module.bias if module.bias is not None else torch.zeros(module.out_features, dtype=D)
        return module.weight.detach().clone(), b.detach().clone(), (module.out_features,)
    assert isinstance(module, nn.Conv2d) and module.groups == 1 and module.dilation == (1, 1)
    C, H, W = in_shape
    w = module.weight.detach()
    O, _, kh, kw = w.shape
    (s, _), (p, _) = module.stride, module.padding
    Ho, Wo = (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1
    M = torch.zeros(O, Ho, Wo, C, H, W, dtype=D)
    for i in range(Ho):
        for j in range(Wo):
            for di in range(kh):
                for dj in range(kw):
                    ii, jj = i * s - p + di, j * s - p + dj
                    if 0 <= ii < H and 0 <= jj < W:
                        M[:, i, j, :, ii, jj] = w[:, :, di, dj]
    b = module.bias.detach() if module.bias is not None else torch.zeros(O, dtype=D)
    return M.reshape(O * Ho * Wo, C * H * W), b.repeat_interleave(Ho * Wo), (O, Ho, Wo)


def chain(net: nn.Sequential, in_shape) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A Sequential of (conv | linear) layers, a ReLU after every one but the last, flattens allowed."""
    layers, shape = [], tuple(in_shape)
    kinds = [type(m) for m in net if not isinstance(m, nn.Flatten)]
    assert kinds[::2] == [type(m) for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(k is nn.ReLU for k in kinds[1::2]) and len(kinds) % 2 == 1
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            W, b, out = dense(m, shape)
            layers.append((W, b))
            shape = out
        elif isinstance(m, nn.Flatten):
            shape = (int(np.prod(shape)),)
    return layers


def stab(z: torch.Tensor, eps) -> torch.Tensor:
    return z + torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z)) * eps


def lrp_reference(layers, x: torch.Tensor, target: int, rules: list[str], epsilon: float, gamma: float,
                  low=None, high=None) -> torch.Tensor:
    """Slow LRP on explicit matrices, one contribution matrix num[j, i] per layer, R_i = Σ_j num_ji / den_j · R_j.

    zero / ε: num = w_ji a_i, den = z_j (+ ε·std(z)·sign z_j, std over the layer's outputs, unbiased);
    γ: for z_j > 0, num = a⁺(w + γw⁺) + a⁻(w + γw⁻), den = Σ_i num + b + γb⁺; for z_j ≤ 0 the roles of
    w⁺ and w⁻ swap and the bias is b + γb⁻; z⁺: num = a⁺w⁺ + a⁻w⁻, den = Σ_i num + b⁺;
    zᴮ: num = x w − l w⁺ − h w⁻, den = Σ_i num (no bias).
    """
    acts, zs = [x.flatten()], []
    for k, (W, b) in enumerate(layers):
        zs.append(W @ acts[-1] + b)
        acts.append(zs[-1].clamp(min=0) if k < len(layers) - 1 else zs[-1])
    R = torch.zeros_like(zs[-1])
    R[target] = zs[-1][target]
    for k in reversed(range(len(layers))):
        W, b = layers[k]
        a, z, rule = acts[k][None, :], zs[k], rules[k]
        wp, wn = W.clamp(min=0), W.clamp(max=0)
        if rule == "zb":
            num = a * W - low.flatten()[None, :] * wp - high.flatten()[None, :] * wn
            den = stab(num.sum(1), 1e-9)
        elif rule in ("zero", "epsilon"):
            num = a * W
            eps = epsilon * float(z.std(unbiased=True)) if rule == "epsilon" else 1e-9
            den = stab(z, eps)
        elif rule == "zplus":
            num = a.clamp(min=0) * wp + a.clamp(max=0) * wn
            den = stab(num.sum(1) + b.clamp(min=0), 1e-9)
        elif rule == "gamma":
            ap, an = a.clamp(min=0), a.clamp(max=0)
            up = ap * (W + gamma * wp) + an * (W + gamma * wn)
            down = ap * (W + gamma * wn) + an * (W + gamma * wp)
            pos = (z > 0)[:, None]
            num = torch.where(pos, up, down)
            den = stab(num.sum(1) + b + gamma * torch.where(z > 0, b.clamp(min=0), b.clamp(max=0)), 1e-9)
        else:
            raise AssertionError(rule)
        R = (num / den[:, None] * R[:, None]).sum(0)
    return R.view_as(x)


def three_layer_net(seed: int = 30) -> nn.Sequential:
    return seeded(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 5)), seed)


LRP_CASES = {  # name: (params, per-layer rules of the 3-layer net)
    "zero": ({"rule": "zero", "first_layer": "same"}, ["zero"] * 3),
    "epsilon": ({"rule": "epsilon", "first_layer": "same"}, ["epsilon"] * 3),
    "gamma": ({"rule": "gamma", "first_layer": "same"}, ["gamma"] * 3),
    "zplus": ({"rule": "zplus", "first_layer": "same"}, ["zplus"] * 3),
    "epsilon-zb": ({"rule": "epsilon", "first_layer": "zb"}, ["zb", "epsilon", "epsilon"]),
    "gamma-zb": ({"rule": "gamma", "first_layer": "zb"}, ["zb", "gamma", "gamma"]),
    "zplus-zb": ({"rule": "zplus", "first_layer": "zb"}, ["zb", "zplus", "zplus"]),
    "composite": ({"rule": "composite"}, ["zb", "epsilon", "epsilon"]),
}


@pytest.mark.parametrize("case", list(LRP_CASES))
def test_lrp_matches_float64_reference_of_each_rule(case):
    params, rules = LRP_CASES[case]
    net, x = three_layer_net(), pixels(1, 3, 6, 6, seed=31)
    layers = chain(net, (3, 6, 6))
    low, high = bounds()
    m = method("lrp", epsilon=0.3, gamma=0.5, input_mean=MEAN, input_std=STD, **params)
    with torch.no_grad():
        logits = net(x)[0]
    assert (logits > 0).any() and (logits < 0).any()  # both gamma branches at the output
    for target in range(5):
        attr = m(net, x, target)
        ref = lrp_reference(layers, x, target, rules, 0.3, 0.5, low.expand_as(x), high.expand_as(x))
        close(attr.values, ref)
        assert attr.metrics["relevance_sum"] == pytest.approx(float(ref.sum()), rel=1e-5, abs=1e-7)


def test_lrp_composite_uses_gamma_on_the_lower_convolutions():
    net = seeded(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                               nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3)), 32)
    x, low, high = pixels(1, 3, 4, 4, seed=33), *bounds()
    layers = chain(net, (3, 4, 4))
    for target in range(3):
        attr = method("lrp", rule="composite", gamma_fraction=1.0, epsilon=0.2, gamma=0.4,
                      input_mean=MEAN, input_std=STD)(net, x, target)
        ref = lrp_reference(layers, x, target, ["zb", "gamma", "epsilon", "epsilon"], 0.2, 0.4,
                            low.expand_as(x), high.expand_as(x))
        close(attr.values, ref)


def test_lrp_zb_on_a_net_whose_first_layer_is_linear_after_flatten():
    net = seeded(nn.Sequential(nn.Flatten(), nn.Linear(48, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), 34)
    x, low, high = pixels(1, 3, 4, 4, seed=35), *bounds()
    attr = method("lrp", rule="epsilon", first_layer="zb", input_mean=MEAN, input_std=STD)(net, x, 1)
    ref = lrp_reference(chain(net, (3, 4, 4)), x, 1, ["zb", "epsilon", "epsilon"], 0.25, 0.25,
                        low.expand_as(x), high.expand_as(x))
    close(attr.values, ref)


# ---- conservation, read at intermediate layers -----------------------------------------------

TAPS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


class Tap(nn.Identity):
    """Records (value, relevance = value ⊙ gradient) of the tensor passing through, in the g-form
    backward LRP runs; an Identity, so LRP accepts it."""

    def __init__(self, name: str):
        super().__init__()
        self.tap = name

    def forward(self, x):
        y = x.view_as(x)  # a node of its own: the gradient seen is this branch's only
        if y.requires_grad:
            y.register_hook(lambda g, y=y, name=self.tap: TAPS.__setitem__(name, (y.detach(), (y.detach() * g))))
        return y


def bias_free_net(seed: int = 40) -> nn.Sequential:
    return seeded(nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), Tap("conv1"), nn.MaxPool2d(2), Tap("pool"),
        nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.ReLU(), Tap("conv2"), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        Tap("gap"), nn.Linear(6, 5, bias=False), Tap("logits"),
    ), seed)


def top_target(net, x) -> tuple[int, float]:
    """The top class. Its logit is positive, so z⁺ has positive contributions to keep (a class whose
    logit has none loses all relevance under z⁺ by definition)."""
    with torch.no_grad():
        logits = net(x)[0]
    t = int(logits.argmax())
    assert logits[t] > 0.1
    return t, float(logits[t])


def test_lrp_zero_on_a_bias_free_relu_net_is_gradient_times_input():
    net, x = bias_free_net(), randn(1, 3, 8, 8, seed=41)
    t, _ = top_target(net, x)
    attr = method("lrp", rule="zero", first_layer="same")(net, x, t)
    close(attr.values, x * grad_of(net, x, t))


@pytest.mark.parametrize("rule,first", [("zero", "same"), ("zplus", "same"), ("gamma", "same"), ("gamma", "zb"), ("zplus", "zb")])
def test_lrp_conserves_relevance_layer_by_layer_without_biases(rule, first):
    net, x = bias_free_net(), pixels(1, 3, 8, 8, seed=42)
    t, logit = top_target(net, x)
    TAPS.clear()
    attr = method("lrp", rule=rule, first_layer=first, input_mean=MEAN, input_std=STD)(net, x, t)
    assert set(TAPS) == {"conv1", "pool", "conv2", "gap", "logits"}
    for name, (_, relevance) in TAPS.items():
        assert float(relevance.sum()) == pytest.approx(logit, rel=1e-5), name
    assert float(attr.values.astype(np.float64).sum()) == pytest.approx(logit, rel=1e-5)
    assert attr.metrics["relevance_sum"] == pytest.approx(logit, rel=1e-5)
    assert attr.metrics["conservation_gap"] < 1e-5


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.t_conv, self.t_skip, self.t_sum = Tap("branch"), Tap("skip"), Tap("sum")

    def forward(self, x):
        out = self.conv(x)
        return torch.relu(self.t_sum(self.t_conv(out) + self.t_skip(x)))


class ResNetty(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.block = Residual(4)
        self.tap = Tap("block_out")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3, bias=False))

    def forward(self, x):
        return self.head(self.tap(self.block(self.stem(x))))


@pytest.mark.parametrize("rule", ["zero", "zplus", "gamma"])
def test_lrp_splits_relevance_at_a_skip_connection_in_proportion(rule):
    net, x = seeded(ResNetty(), 43), randn(1, 3, 6, 6, seed=44)
    t, logit = top_target(net, x)
    TAPS.clear()
    attr = method("lrp", rule=rule, first_layer="same")(net, x, t)
    (branch, r_branch), (skip, r_skip), (total, r_sum) = TAPS["branch"], TAPS["skip"], TAPS["sum"]
    assert torch.allclose(branch + skip, total)
    # each summand gets its share of the sum's relevance: R_a = a / (a + b) · R_(a+b)
    assert torch.allclose(r_branch + r_skip, r_sum, atol=1e-12)
    assert torch.allclose(r_branch * skip, r_skip * branch, atol=1e-12)
    assert float(r_skip.abs().sum()) > 0 and float(r_branch.abs().sum()) > 0
    for name in ("sum", "block_out"):
        assert float(TAPS[name][1].sum()) == pytest.approx(logit, rel=1e-5), name
    assert float(attr.values.astype(np.float64).sum()) == pytest.approx(logit, rel=1e-5)


# ---- BatchNorm ----------------------------------------------------------------------------------

def bn_net(seed: int = 50) -> nn.Sequential:
    net = seeded(nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=1e-3), nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5, eps=1e-3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    ), seed)
    g = gen(seed + 1)
    for bn in (net[1], net[4]):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g, dtype=D) * 0.3)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g, dtype=D) * 2 + 0.2)
    return net


def folded_by_hand(net: nn.Sequential) -> nn.Sequential:
    layers = []
    for conv, bn in ((net[0], net[1]), (net[3], net[4])):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        new = copy.deepcopy(conv)
        with torch.no_grad():
            new.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            new.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
        layers += [new, nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), copy.deepcopy(net[8])).eval()


@pytest.mark.parametrize("rule", ["composite", "epsilon", "gamma", "zplus", "zero"])
def test_lrp_folds_batchnorm_into_the_preceding_conv(rule):
    net, x = bn_net(), pixels(1, 3, 6, 6, seed=51)
    folded = folded_by_hand(net)
    with torch.no_grad():
        assert torch.allclose(net(x), folded(x), rtol=1e-10, atol=1e-12)
    before = copy.deepcopy(net.state_dict())
    m = method("lrp", rule=rule, input_mean=MEAN, input_std=STD)
    for target in range(3):
        close(m(net, x, target).values, m(folded, x, target).values, rtol=1e-5)
    after = net.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed: BatchNorm folded into the caller's model?"
    assert isinstance(net[1], nn.BatchNorm2d) and hook_count(net) == 0


def test_lrp_leaves_a_training_model_as_it_was():
    net, x = bn_net().train(), pixels(1, 3, 6, 6, seed=52)
    before = copy.deepcopy(net.state_dict())
    attr = method("lrp", input_mean=MEAN, input_std=STD)(net, x, 1)
    assert np.isfinite(attr.values).all()
    assert all(m.training for m in net.modules())
    for k, v in before.items():
        assert torch.equal(net.state_dict()[k], v), k
    # the map is the eval-mode map (running statistics), as for the same model in eval mode
    close(attr.values, method("lrp", input_mean=MEAN, input_std=STD)(bn_net().eval(), x, 1).values, rtol=1e-5)


# ---- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,kind", [
    (lambda: nn.Sigmoid(), "Sigmoid"),
    (lambda: nn.SiLU(), "SiLU"),
    (lambda: nn.LayerNorm([4, 4, 4]), "LayerNorm"),
])
def test_lrp_refuses_an_unsupported_module_naming_it(bad, kind):
    net = nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()),
        body=nn.Sequential(nn.Conv2d(4, 4, 3), bad()),
        head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)),
    ))
    x = torch.randn(1, 3, 8, 8)
    net(x)  # the model itself runs
    with pytest.raises(ConfigError, match=rf"'body\.1' \({kind}\)"):
        method("lrp").check(net)
    with pytest.raises(ConfigError, match=rf"'body\.1' \({kind}\)"):
        method("lrp")(net, x, 0)
    assert hook_count(net) == 0


# ============================================================================================
# Occlusion
# ============================================================================================

def occlusion_reference(weight: torch.Tensor, x: torch.Tensor, window: int, stride: int, baseline: float) -> torch.Tensor:
    """Linear model: the drop for a window is Σ_window w ⊙ (x − baseline); each pixel takes the
    mean over the windows covering it, 0 when none does."""
    _, H, W = x.shape
    total, count = torch.zeros(H, W, dtype=D), torch.zeros(H, W, dtype=D)
    for i in range(0, H - window + 1, stride):
        for j in range(0, W - window + 1, stride):
            sl = (slice(None), slice(i, i + window), slice(j, j + window))
            drop = float((weight[sl] * (x[sl] - baseline)).sum())
            total[sl[1:]] += drop
            count[sl[1:]] += 1
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


@pytest.mark.parametrize("window,stride,uncovered", [
    (3, 2, 0),    # overlapping windows tile 7 x 9 exactly
    (4, 4, 7 * 9 - 4 * 8),  # the last 3 rows and the last column stay uncovered
    (2, 3, 7 * 9 - 4 * 6),  # gaps between windows
    (3, 1, 0),
])
def test_occlusion_on_a_linear_model_is_the_analytic_mean_drop(window, stride, uncovered):
    model, x, target = linear_model((3, 7, 9), classes=4, seed=60), randn(1, 3, 7, 9, seed=61), 3
    attr = method("occlusion", window=window, stride=stride, baseline=0.3, perturbations_per_eval=5)(model, x, target)
    ref = occlusion_reference(model[1].weight[target].view(3, 7, 9).detach(), x[0], window, stride, 0.3)
    assert attr.values.shape == (1, 3, 7, 9)
    for c in range(3):  # one map for all channels
        close(attr.values[0, c], ref)
    assert int((attr.values[0, 0] == 0).sum()) == uncovered


def test_occlusion_of_the_whole_image_is_the_score_drop():
    model, x = TinyCNN(classes=4, seed=5).double().eval(), randn(1, 3, 8, 8, seed=62)
    attr = method("occlusion", window=8, stride=3, baseline=-0.5)(model, x, 2)
    with torch.no_grad():
        drop = float(model(x)[0, 2] - model(torch.full_like(x, -0.5))[0, 2])
    close(attr.values, np.full((1, 3, 8, 8), drop))


def test_occlusion_perturbations_per_eval_does_not_change_the_result():
    model, x = TinyCNN(classes=4, seed=6).double().eval(), randn(2, 3, 9, 11, seed=63)
    one = method("occlusion", window=3, stride=2, perturbations_per_eval=1)(model, x, [1, 3])
    many = method("occlusion", window=3, stride=2, perturbations_per_eval=50)(model, x, [1, 3])
    np.testing.assert_allclose(many.values, one.values, rtol=1e-6, atol=1e-7)
    assert np.abs(one.values).max() > 0


@pytest.mark.parametrize("window", [10, 8])
def test_occlusion_window_larger_than_the_input_is_a_config_error(window):
    x = torch.randn(1, 3, 7, 12)  # 8 fits the width, not the height
    with pytest.raises(ConfigError, match="window"):
        method("occlusion", window=window)(TinyCNN(), x, 0)


# ============================================================================================
# Layer activation with guided backprop
# ============================================================================================

def guided_filter_reference(net: TinyCNN, x: torch.Tensor, layer: str, f: int) -> torch.Tensor:
    """∂ Σ_ij A_f / ∂x with guided ReLUs (grad_in = 1[z > 0] · max(grad_out, 0)), by hand."""
    c1, c2 = net.features[0], net.features[2]
    with torch.no_grad():
        z1 = F.conv2d(x, c1.weight, c1.bias, padding=1)
        z2 = F.conv2d(z1.clamp(min=0), c2.weight, c2.bias, padding=1)
        g = torch.zeros_like(z2)
        g[:, f] = 1.0
        if layer == "features.3":  # the ReLU's own output: its derivative applies
            g = (z2 > 0).to(D) * g.clamp(min=0)
        g = F.conv_transpose2d(g, c2.weight, padding=1)
        g = (z1 > 0).to(D) * g.clamp(min=0)
        return F.conv_transpose2d(g, c1.weight, padding=1)


@pytest.mark.parametrize("layer,f", [("features.2", 3), ("features.3", 1), ("features.0", 5)])
def test_layer_activation_guided_matches_hand_computed_guided_gradient(layer, f):
    net, x = TinyCNN(seed=7).double().eval(), randn(1, 3, 7, 8, seed=70)
    attr = method("layer_activation_guided", filter=f)(net, x, None, layer=layer)
    if layer == "features.0":
        ref = F.conv_transpose2d(torch.ones(1, 1, 7, 8, dtype=D) * F.one_hot(torch.tensor(f), 8).to(D).view(1, 8, 1, 1),
                                 net.features[0].weight.detach(), padding=1)
    else:
        ref = guided_filter_reference(net, x, layer, f)
    close(attr.values, ref)
    assert attr.layer == layer and attr.target == ()
    other = method("layer_activation_guided", filter=(f + 1) % 6)(net, x, None, layer=layer)
    assert differs(other.values, attr.values)


@pytest.mark.parametrize("f, match", [(6, r"filter.*6 channels"),
                                      (-1, r"method\.layer_activation_guided\.filter=-1 is out of range")])  # no model needed
def test_layer_activation_guided_filter_out_of_range_names_the_channel_count(f, match):
    with pytest.raises(ConfigError, match=match):
        method("layer_activation_guided", filter=f)(TinyCNN(), torch.randn(1, 3, 8, 8), None, layer="features.2")


# ============================================================================================
# End to end: run.py as a user types it
# ============================================================================================

SEVEN = ["deconvnet", "grad_times_image", "integrated_gradients", "smoothgrad", "lrp", "occlusion", "layer_activation_guided"]
SMALL = [  # 32 px inputs and few samples: each run is a few seconds of compute on top of start-up
    "model.preprocess.input_size=32",
    "method.integrated_gradients.n_steps=4", "method.integrated_gradients.internal_batch_size=4",
    "method.smoothgrad.n_samples=2", "method.smoothgrad.batch_size=2",
    "method.occlusion.window=16", "method.occlusion.stride=16",
]


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def check_seven(run_dir, image: str, layer: str) -> pd.DataFrame:
    df = pd.read_csv(run_dir / "manifest.csv")
    assert sorted(df["method"]) == sorted(SEVEN)
    assert (df["status"] == "ok").all(), df[["method", "error"]].to_string()
    for _, row in df.iterrows():
        kinds = ["color", "gray", "pos_sal", "neg_sal"] + (["lrp_heatmap"] if row.method == "lrp" else [])
        for kind in kinds + ["npy"]:
            name = row[f"file_{kind}"]
            assert isinstance(name, str) and name.startswith(f"{image}_{row.method}"), (row.method, kind)
            assert (run_dir / name).is_file(), name
        values = np.load(run_dir / row["file_npy"])
        assert values.shape == (3, 32, 32) and np.isfinite(values).all(), row.method
        assert np.abs(values).max() > 0, row.method
    rows = df.set_index("method")
    assert rows.loc["layer_activation_guided", "layer"] == layer
    assert layer in rows.loc["layer_activation_guided", "file_npy"]
    # integrated gradients: the gap is the gap of the map written next to it
    ig_row = rows.loc["integrated_gradients"]
    total = float(np.load(run_dir / ig_row["file_npy"]).astype(np.float64).sum())
    assert ig_row["completeness_gap"] >= 0
    assert abs(total - ig_row["score_delta"]) / abs(ig_row["score_delta"]) == pytest.approx(ig_row["completeness_gap"], abs=1e-4)
    lrp_row = rows.loc["lrp"]
    assert np.isfinite(lrp_row["conservation_gap"]) and lrp_row["conservation_gap"] >= 0
    assert float(np.load(run_dir / lrp_row["file_npy"]).astype(np.float64).sum()) == pytest.approx(lrp_row["relevance_sum"], rel=1e-4, abs=1e-6)
    return df


@pytest.mark.slow  # end to end: run.py / script processes
@needs_shared_images
def test_cli_seven_gradient_techniques_on_the_embedded_model(tmp_path, image_cache):
    ok(run_cli([f"method=[{','.join(SEVEN)}]", "image=snake", "layer=blocks.4", *SMALL], tmp_path, image_cache))
    check_seven(tmp_path, "snake", "blocks.4")


@pytest.mark.slow  # vgg19's random initialisation alone is several seconds
def test_cli_seven_gradient_techniques_on_vgg19(tmp_path, image_cache):
    ok(run_cli([f"method=[{','.join(SEVEN)}]", "model=vgg19", "model.weights=null", "layer=features.28", "image=rocket", *SMALL],
               tmp_path, image_cache))
    check_seven(tmp_path, "rocket", "features.28")


@pytest.mark.slow
def test_cli_lrp_on_resnet50_skips(tmp_path, image_cache):
    ok(run_cli(["method=lrp", "model=resnet50", "model.weights=null", "image=rocket", "model.preprocess.input_size=32"],
               tmp_path, image_cache))
    row = pd.read_csv(tmp_path / "manifest.csv").iloc[0]
    assert row.status == "ok" and row.method == "lrp"
    assert (tmp_path / row.file_lrp_heatmap).is_file()
    assert np.isfinite(row.relevance_sum) and np.isfinite(row.conservation_gap)


@pytest.mark.slow  # end to end: run.py / script processes
def test_cli_lrp_refuses_efficientnet_b0_before_any_work(tmp_path, image_cache):
    proc = run_cli(["method=lrp", "model=timm", "model.arch=efficientnet_b0", "image=rocket",
                    "model.preprocess.input_size=32"], tmp_path, image_cache)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"lrp does not support module '[\w.]+' \((SiLU|Sigmoid)\)", proc.stderr), proc.stderr[-2000:]
    assert not (tmp_path / "manifest.csv").exists()
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob("*.png"))
