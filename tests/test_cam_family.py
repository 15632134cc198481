"""The CAM family against its formulas (STYLE.md point 12).

Every weight formula has a slow float64 reference below, written from the papers' formulas with
plain Python loops over channels and positions; activations and gradients for the references come
from plain autograd on the same float64 model, never from cnnviz. Then the identities between the
methods (CAM ∝ Grad-CAM, HiResCAM = Grad-CAM on a GAP head), the gradient-free methods' batching,
the one-pass multi-layer contract, the all-zero-activation edge case, and four runs of run.py.

The registry-generated contract tests (shapes, NaN, hooks, model state, in-place ReLU) live in
test_methods_generic.py and are not repeated here.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz import Attribution, ConfigError, get_method, list_methods
from cnnviz.core.maps import fuse_layer_maps
from conftest import any_model, hook_count, run_cli, torch_threads

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

CAM_METHODS = [n for n in list_methods() if get_method(n).map_space == "layer" and any_model(n)]
GRADIENT_CAMS = [n for n in CAM_METHODS if get_method(n).uses_gradients]
B, H, W = 2, 9, 11
TARGET = [1, 3]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: one intra-op thread avoids OpenMP spin-waiting against other
    processes on a busy 2-core machine (measured: 2 s instead of 28 s). Restored afterwards."""
    with torch_threads(1):
        yield


def cam(name: str, model: nn.Module, x: torch.Tensor, target=TARGET, layer: str = "act2", **params) -> Attribution:
    return get_method(name)(**params)(model, x, target, layer=layer)


def seeded_(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    return model


def net(seed: int = 0) -> nn.Sequential:
    """float64 conv -> ReLU -> conv(stride 2) -> LeakyReLU -> conv -> ReLU -> GAP -> linear.

    ``conv2``/``act2`` sit at 5 x 6 (so Score-CAM's masks are really upsampled) with a non-linear
    head after them (so gradients vary over positions); their activations take both signs where
    the gradient is non-zero, which is what tells LayerCAM from element-wise Grad-CAM. ``conv1``
    feeds a ReLU (zero gradients wherever it is negative). ``relu3`` (and ``tap``, an identity
    after it) feed GAP -> ``fc`` directly, the one place where CAM applies.
    """
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 6, 3, padding=1), relu1=nn.ReLU(),
        conv2=nn.Conv2d(6, 5, 3, padding=1, stride=2), act2=nn.LeakyReLU(0.1),
        conv3=nn.Conv2d(5, 4, 3, padding=1), relu3=nn.ReLU(), tap=nn.Identity(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 5),
    ))
    return seeded_(model.double(), seed)


def inputs(seed: int = 0, batch: int = B) -> torch.Tensor:
    return torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def split(model: nn.Sequential, layer: str) -> tuple[nn.Module, nn.Module]:
    """(prefix up to and including ``layer``, the rest)."""
    i = [n for n, _ in model.named_children()].index(layer)
    return model[: i + 1], model[i + 1:]


def score(logits: torch.Tensor, target) -> torch.Tensor:
    """Per-image target score: the target logit, or a callable applied to the logits."""
    if callable(target):
        return target(logits).reshape(-1)
    return torch.stack([logits[b, t] for b, t in enumerate(target)])


def acts_and_grads(model: nn.Sequential, x: torch.Tensor, layer: str, target=TARGET) -> tuple[np.ndarray, np.ndarray]:
    """A and dY/dA at ``layer`` by plain autograd on the float64 model, as numpy float64."""
    prefix, suffix = split(model, layer)
    with torch.enable_grad():
        a = prefix(x).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(score(suffix(a), target).sum(), a)
    return a.detach().numpy(), g.numpy()


# --------------------------------------------------------------------------------------------
# float64 references, one per formula: loops over images, channels and positions.
# --------------------------------------------------------------------------------------------

def relu_(m: np.ndarray, relu: bool) -> np.ndarray:
    return np.maximum(m, 0.0) if relu else m


def weighted_sum(a: np.ndarray, w: list[float]) -> np.ndarray:
    """Σ_k w_k A_k for one image's (C, h, w) activations."""
    out = np.zeros(a.shape[1:])
    for k in range(a.shape[0]):
        out += w[k] * a[k]
    return out


def ref_gradcam_weights(a, g):
    c, h, w = a.shape
    weights = []
    for k in range(c):
        total = 0.0
        for i in range(h):
            for j in range(w):
                total += g[k, i, j]
        weights.append(total / (h * w))
    return weights


def ref_gradcam_plusplus_weights(a, g):
    c, h, w = a.shape
    weights = []
    for k in range(c):
        s = sum(a[k, i, j] for i in range(h) for j in range(w))
        wk = 0.0
        for i in range(h):
            for j in range(w):
                gij = g[k, i, j]
                if gij == 0:
                    continue  # alpha is defined as 0 where the gradient is 0 (and ReLU(0) = 0 anyway)
                alpha = gij ** 2 / (2 * gij ** 2 + s * gij ** 3)
                wk += alpha * max(gij, 0.0)
        weights.append(wk)
    return weights


def ref_xgradcam_weights(a, g):
    c, h, w = a.shape
    weights = []
    for k in range(c):
        s = sum(a[k, i, j] for i in range(h) for j in range(w))
        wk = 0.0
        if s != 0:
            for i in range(h):
                for j in range(w):
                    wk += a[k, i, j] / s * g[k, i, j]
        weights.append(wk)
    return weights


def ref_elementwise(term):
    def combine(a, g):
        c, h, w = a.shape
        out = np.zeros((h, w))
        for i in range(h):
            for j in range(w):
                out[i, j] = sum(term(a[k, i, j], g[k, i, j]) for k in range(c))
        return out

    return combine


REF_GRADIENT_CAMS = {
    "gradcam": lambda a, g: weighted_sum(a, ref_gradcam_weights(a, g)),
    "gradcam_plusplus": lambda a, g: weighted_sum(a, ref_gradcam_plusplus_weights(a, g)),
    "xgradcam": lambda a, g: weighted_sum(a, ref_xgradcam_weights(a, g)),
    "hirescam": ref_elementwise(lambda a, g: g * a),
    "layercam": ref_elementwise(lambda a, g: max(g, 0.0) * a),
    "gradcam_elementwise": ref_elementwise(lambda a, g: max(g * a, 0.0)),
}


def ref_gradient_cam(name, model, x, layer, target=TARGET, relu=True) -> np.ndarray:
    a, g = acts_and_grads(model, x, layer, target)
    return np.stack([relu_(REF_GRADIENT_CAMS[name](a[b], g[b]), relu) for b in range(len(a))])


def ref_cam(model, x, layer, target=TARGET) -> np.ndarray:
    prefix, _ = split(model, layer)
    with torch.no_grad():
        a = prefix(x).numpy()
    w = model.fc.weight.detach().numpy()
    return np.stack([weighted_sum(a[b], list(w[t])) for b, t in enumerate(target)])


def upsample_one(m: np.ndarray, size) -> np.ndarray:
    return F.interpolate(torch.from_numpy(m)[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def ref_scorecam(model, x, layer, target=TARGET, relu=True, skip=()) -> np.ndarray:
    """Channels in ``skip`` are left out; every other channel must vary (a mask exists)."""
    prefix, _ = split(model, layer)
    with torch.no_grad():
        a = prefix(x).numpy()
    maps = []
    for b in range(len(a)):
        weights = []
        for k in range(a.shape[1]):
            if k in skip:
                weights.append(0.0)
                continue
            up = upsample_one(a[b, k], tuple(x.shape[-2:]))
            assert up.max() > up.min()
            mask = (up - up.min()) / (up.max() - up.min())
            with torch.no_grad():
                logits = model(x[b: b + 1] * torch.from_numpy(mask))
            if callable(target):
                weights.append(float(target(logits).reshape(-1)[0]))
            else:
                weights.append(float(logits.softmax(dim=-1)[0, target[b]]))
        maps.append(relu_(weighted_sum(a[b], weights), relu))
    return np.stack(maps)


def ref_ablationcam(model, x, layer, target=TARGET, relu=True) -> np.ndarray:
    prefix, suffix = split(model, layer)
    maps = []
    with torch.no_grad():
        a = prefix(x)
        for b in range(len(a)):
            one = a[b: b + 1]
            t = target if callable(target) else [target[b]]
            y = float(score(suffix(one), t)[0])
            weights = []
            for k in range(a.shape[1]):
                ablated = one.clone()
                ablated[0, k] = 0.0
                weights.append((y - float(score(suffix(ablated), t)[0])) / y)
            maps.append(relu_(weighted_sum(a[b].numpy(), weights), relu))
    return np.stack(maps)


def ref_eigencam_one(a: np.ndarray) -> np.ndarray:
    """Projection on the top eigenvector of the channel covariance (numpy eigh, not an SVD)."""
    c, h, w = a.shape
    X = np.array([[a[k, i, j] for k in range(c)] for i in range(h) for j in range(w)])  # (h*w, C)
    X = X - X.mean(axis=0)
    _, vecs = np.linalg.eigh(X.T @ X)
    proj = X @ vecs[:, -1]
    total = np.array([sum(a[k, i, j] for k in range(c)) for i in range(h) for j in range(w)])
    if np.dot(proj - proj.mean(), total - total.mean()) < 0:
        proj = -proj
    return proj.reshape(h, w)


def ref_fuse(maps: list[np.ndarray], size, gamma: float = 2.0) -> np.ndarray:
    out = None
    for m in maps:
        scaled = np.zeros_like(m)
        for b in range(len(m)):
            top = m[b].max()
            if top > 0:
                scaled[b] = np.tanh(gamma * m[b] / top)
        up = np.stack([upsample_one(s, size) for s in scaled])
        out = up if out is None else np.maximum(out, up)
    return out


def close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-12)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


# --------------------------------------------------------------------------------------------
# Each formula against its reference
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("layer", ["conv2", "act2", "relu3"])
@pytest.mark.parametrize("name", sorted(REF_GRADIENT_CAMS))
def test_gradient_cams_match_float64_reference(name, layer, relu):
    model, x = net(), inputs()
    expected = ref_gradient_cam(name, model, x, layer, relu=relu)
    attr = cam(name, model, x, layer=layer, relu=relu)
    assert np.abs(expected).max() > 1e-3  # a non-trivial map
    close(attr.values, expected)
    assert attr.upsampled.shape == (B, H, W)
    assert attr.target == tuple(TARGET) and attr.layer == layer


@pytest.mark.parametrize("name", sorted(REF_GRADIENT_CAMS))
def test_one_dead_channel_among_live_ones(name):
    """A channel that is all zero (Σ A_k = 0: XGrad-CAM's share is 0/0, Grad-CAM++'s α is 1/2) must
    not spoil the others: the map still equals the reference, which gives that channel nothing."""
    model, x = net(12), inputs(12)
    with torch.no_grad():
        model.conv3.weight[1] = 0.0
        model.conv3.bias[1] = -1.0  # relu3 channel 1 is 0 everywhere, its gradient is not
    a, g = acts_and_grads(model, x, "relu3")
    assert (a[:, 1] == 0).all() and np.abs(g[:, 1]).min() > 0 and np.abs(a).max() > 0
    expected = ref_gradient_cam(name, model, x, "relu3", relu=False)
    assert np.abs(expected).max() > 1e-3
    close(cam(name, model, x, layer="relu3", relu=False).values, expected)


def test_xgradcam_weight_of_a_zero_sum_channel_is_zero():
    a = torch.tensor([[[[1.0, -1.0], [2.0, -2.0]], [[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    g = torch.tensor([[[[0.5, 0.1], [0.2, 0.3]], [[0.1, -0.2], [0.3, 0.4]]]], dtype=torch.float64)
    w = get_method("xgradcam")().channel_weights(a, g)
    assert float(w[0, 0]) == 0.0
    assert float(w[0, 1]) == pytest.approx((0.1 - 0.4 + 0.9 + 1.6) / 10, rel=1e-12)


def test_the_references_tell_the_formulas_apart():
    """Guards the test above: on this model the six formulas give six different maps."""
    model, x = net(), inputs()
    maps = {n: ref_gradient_cam(n, model, x, "conv2", relu=False) for n in REF_GRADIENT_CAMS}
    names = sorted(maps)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.allclose(maps[a], maps[b], rtol=1e-3), (a, b)


def test_gradient_cams_with_a_callable_target_match_reference():
    model, x = net(1), inputs(1)
    target = lambda logits: logits[:, 2] - 0.5 * logits[:, 0]  # noqa: E731
    for name in sorted(REF_GRADIENT_CAMS):
        close(cam(name, model, x, target=target, layer="conv2", relu=False).values,
              ref_gradient_cam(name, model, x, "conv2", target=target, relu=False))


def test_cam_matches_the_weight_rows_of_the_linear_head():
    model, x = net(), inputs()
    attr = cam("cam", model, x, layer="relu3")
    close(attr.values, ref_cam(model, x, "relu3"))
    assert attr.values.min() < 0  # CAM has no ReLU by default (the paper has none)
    explicit = cam("cam", model, x, layer="relu3", head="fc")
    np.testing.assert_array_equal(explicit.values, attr.values)


@pytest.mark.parametrize("layer", ["conv2", "act2"])
def test_scorecam_matches_float64_reference(layer):
    model, x = net(), inputs()
    close(cam("scorecam", model, x, layer=layer, batch_size=2).values, ref_scorecam(model, x, layer))
    close(cam("scorecam", model, x, layer=layer, relu=False).values, ref_scorecam(model, x, layer, relu=False))


@pytest.mark.parametrize("layer", ["conv2", "act2", "relu3"])
def test_ablationcam_matches_float64_reference(layer):
    model, x = net(), inputs()
    close(cam("ablationcam", model, x, layer=layer, batch_size=2).values, ref_ablationcam(model, x, layer))
    close(cam("ablationcam", model, x, layer=layer, relu=False).values, ref_ablationcam(model, x, layer, relu=False))


def test_ablationcam_with_a_callable_target_uses_its_score():
    model, x = net(2), inputs(2)
    target = lambda logits: logits[:, 4] + logits[:, 1]  # noqa: E731
    close(cam("ablationcam", model, x, target=target, layer="conv2", relu=False).values,
          ref_ablationcam(model, x, "conv2", target=target, relu=False))


@pytest.mark.parametrize("layer", ["conv2", "relu3"])
def test_eigencam_matches_float64_reference(layer):
    model, x = net(), inputs()
    prefix, _ = split(model, layer)
    with torch.no_grad():
        a = prefix(x).numpy()
    attr = cam("eigencam", model, x, layer=layer)
    close(attr.values, np.stack([ref_eigencam_one(a[b]) for b in range(B)]))
    assert attr.values.min() < 0  # signed by default


# --------------------------------------------------------------------------------------------
# Identities on conv -> GAP -> linear
# --------------------------------------------------------------------------------------------

def test_cam_is_gradcam_times_hw_on_a_gap_linear_head():
    model, x = net(3), inputs(3)
    c = cam("cam", model, x, layer="relu3", relu=False).values
    g = cam("gradcam", model, x, layer="relu3", relu=False).values
    h, w = c.shape[1:]
    ratio = float((c * g).sum() / (g * g).sum())  # least-squares factor
    assert ratio > 0
    assert ratio == pytest.approx(h * w, rel=1e-5)  # dy/dA_kij = w_ck / (h w), so alpha_k = w_ck / (h w)
    close(c, ratio * g)


def test_hirescam_equals_gradcam_when_the_gradient_is_spatially_constant():
    """With a GAP -> linear head dY/dA_kij = w_ck / (h w) for every (i, j), so Σ_k g_k ⊙ A_k and
    Σ_k mean(g_k) A_k coincide exactly. (The issue and hirescam.py's docstring say "times h·w":
    that factor relates both to CAM, not to each other.)"""
    model, x = net(4), inputs(4)
    _, g = acts_and_grads(model, x, "relu3")
    assert np.allclose(g, g.mean(axis=(2, 3), keepdims=True), rtol=0, atol=1e-15)  # the premise
    hires = cam("hirescam", model, x, layer="relu3", relu=False).values
    grad = cam("gradcam", model, x, layer="relu3", relu=False).values
    close(hires, grad)
    assert np.abs(hires).max() > 1e-3
    # and away from a GAP head the two differ (the gradient varies over positions there)
    assert not np.allclose(cam("hirescam", model, x, layer="conv2", relu=False).values,
                           cam("gradcam", model, x, layer="conv2", relu=False).values, rtol=1e-3)


# --------------------------------------------------------------------------------------------
# Grad-CAM++: zero where the gradient is zero
# --------------------------------------------------------------------------------------------

def test_gradcam_plusplus_is_zero_where_the_gradient_is_zero():
    m = get_method("gradcam_plusplus")()
    a = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]], [[2.0, 1.0], [-1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    g = torch.tensor([[[[0.0, 0.7], [0.0, -0.3]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.4], [0.0, 0.0]]]], dtype=torch.float64)
    w = m.channel_weights(a, g)
    assert torch.isfinite(w).all()
    assert w[0, 1] == 0  # a channel with no gradient at all: 0, not 0/0
    np.testing.assert_allclose(w[0].numpy(), ref_gradcam_plusplus_weights(a[0].numpy(), g[0].numpy()), rtol=1e-12)
    # only the one positive-gradient position of channel 0 counts: alpha = g² / (2 g² + ΣA g³)
    s, gij = 2.5, 0.7
    assert float(w[0, 0]) == pytest.approx(gij ** 2 / (2 * gij ** 2 + s * gij ** 3) * gij, rel=1e-12)
    # channel 2's activations sum to 0: alpha = 1/2 where g != 0
    assert float(w[0, 2]) == pytest.approx(0.5 * 0.4, rel=1e-12)


def test_gradcam_plusplus_on_a_layer_with_many_zero_gradients():
    model, x = net(), inputs()
    a, g = acts_and_grads(model, x, "conv1")
    assert (g == 0).mean() > 0.2 and (a[g == 0] != 0).all()  # relu1 kills the gradient wherever conv1 < 0
    attr = cam("gradcam_plusplus", model, x, layer="conv1", relu=False)
    assert np.isfinite(attr.values).all() and not attr.warnings
    close(attr.values, ref_gradient_cam("gradcam_plusplus", model, x, "conv1", relu=False))


# --------------------------------------------------------------------------------------------
# Score-CAM and Ablation-CAM: batching, modes, constant channels, callable targets
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_batch_size_does_not_change_the_map(name):
    model, x = net(5), inputs(5)
    one = cam(name, model, x, layer="conv2", relu=False, batch_size=1).values
    many = cam(name, model, x, layer="conv2", relu=False, batch_size=64).values
    some = cam(name, model, x, layer="conv2", relu=False, batch_size=3).values
    assert np.abs(one).max() > 0
    # float64 maps stay float64 now: batched convolutions may sum in another order (last-bit differences)
    np.testing.assert_allclose(one, many, rtol=1e-12, atol=0)
    np.testing.assert_allclose(one, some, rtol=1e-12, atol=0)


@pytest.mark.parametrize("batch_size", [1, 2, 64])
@pytest.mark.parametrize("layer", ["conv2", "relu3"])
def test_ablationcam_expand_equals_full(layer, batch_size):
    model, x = net(6), inputs(6)
    expand = cam("ablationcam", model, x, layer=layer, relu=False, batch_size=batch_size, mode="expand").values
    full = cam("ablationcam", model, x, layer=layer, relu=False, batch_size=batch_size, mode="full").values
    assert np.abs(expand).max() > 0
    close(expand, full, rtol=1e-12)


class SkipConcat(nn.Module):
    """The classifier sees the hooked layer's pooled output concatenated with an earlier one's, so
    an expanded batch of ablated copies cannot meet the single-image prefix in ``torch.cat``."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(4, 5, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(9, 3)
        seeded_(self.double(), 13)

    def forward(self, x):
        h1 = self.relu1(self.conv1(x))
        h2 = self.relu2(self.conv2(h1))
        return self.fc(torch.cat([h2.mean(dim=(2, 3)), h1.mean(dim=(2, 3))], dim=1))


def test_ablationcam_expand_falls_back_to_full_where_the_batch_cannot_broadcast():
    model, x = SkipConcat(), inputs(13)
    target = [0, 2]
    with torch.no_grad():
        a = model.relu1(model.conv1(x))
        a = model.conv2(a)
    expected = []
    for b in range(B):  # reference: zero channel k of conv2's output with a plain hook
        with torch.no_grad():
            y = float(model(x[b: b + 1])[0, target[b]])
        weights = []
        for k in range(5):
            def zero_k(_m, _i, out, k=k):
                out = out.clone()
                out[:, k] = 0
                return out

            handle = model.conv2.register_forward_hook(zero_k)
            try:
                with torch.no_grad():
                    weights.append((y - float(model(x[b: b + 1])[0, target[b]])) / y)
            finally:
                handle.remove()
        expected.append(weighted_sum(a[b].numpy(), weights))
    expected = np.stack(expected)
    expand = cam("ablationcam", model, x, target=target, layer="conv2", relu=False, mode="expand", batch_size=2)
    full = cam("ablationcam", model, x, target=target, layer="conv2", relu=False, mode="full", batch_size=2)
    close(expand.values, expected)
    close(full.values, expected)
    assert hook_count(model) == 0


class BatchSizes:
    """Records the batch size of every forward of the given modules; hooks removed on exit."""

    def __init__(self, **modules: nn.Module):
        self.modules = modules
        self.sizes: dict[str, list[int]] = {name: [] for name in modules}

    def __enter__(self):
        self.handles = []
        try:
            for name, m in self.modules.items():
                self.handles.append(m.register_forward_pre_hook(
                    lambda _m, inp, name=name: self.sizes[name].append(inp[0].shape[0])))
        except BaseException:
            self.__exit__()
            raise
        return self.sizes

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def test_scorecam_masks_are_evaluated_in_batches_of_batch_size():
    model, x = net(), inputs()
    try:
        with BatchSizes(first=model.conv1) as sizes:
            cam("scorecam", model, x, layer="conv2", batch_size=2)
    finally:
        assert hook_count(model) == 0
    first, masked = sizes["first"][0], sizes["first"][1:]
    assert first == B  # the activation pass, on the whole batch
    assert max(masked) <= 2  # memory bounded by the batch
    assert sum(masked) == B * 5  # every (varying) channel's masked image exactly once
    assert len(masked) == math.ceil(B * 5 / 2)  # the images' masked copies share forwards


@pytest.mark.parametrize("mode", ["expand", "full"])
def test_ablationcam_batches_and_modes(mode):
    """expand: the prefix runs on the single image, once per batch; full: on the repeated image.
    The ablated copies of two images never share a batch: in expand mode that would run the prefix
    on both images (measured slower on CPU, issue 23)."""
    model, x = net(), inputs()
    with BatchSizes(first=model.conv1, head=model.fc) as sizes:
        cam("ablationcam", model, x, layer="act2", batch_size=2, mode=mode)
    assert hook_count(model) == 0
    first, head = sizes["first"][1:], sizes["head"][1:]
    assert len(first) == len(head)  # one prefix run per suffix run: never once per channel
    assert max(head) <= 2
    assert head == [1, 2, 2, 1] * B  # per image: its unablated score, then 5 ablated copies in batches of 2
    if mode == "expand":
        assert set(first) == {1}
    else:
        assert first == head


def constant_channel_net(k: int = 2, value: float = 0.7) -> nn.Sequential:
    model = net(7)
    with torch.no_grad():
        model.conv2.weight[k] = 0.0
        model.conv2.bias[k] = value
    return model


def test_scorecam_skips_a_constant_channel():
    model, x = constant_channel_net(), inputs(7)
    a, _ = acts_and_grads(model, x, "conv2")
    assert (a[:, 2] == 0.7).all()
    expected = ref_scorecam(model, x, "conv2", relu=False, skip={2})
    attr = cam("scorecam", model, x, layer="conv2", relu=False)
    close(attr.values, expected)
    # the test can tell: the channel given the score of the blank (all-zero mask) image instead
    with torch.no_grad():
        blank = model(torch.zeros_like(x[:1])).softmax(dim=-1)[0]
    wrong = expected + np.stack([float(blank[t]) * 0.7 * np.ones(expected.shape[1:]) for t in TARGET])
    assert not np.allclose(attr.values, wrong, rtol=1e-3)


def test_scorecam_never_evaluates_a_constant_channel():
    model, x = constant_channel_net(), inputs(7)
    with BatchSizes(first=model.conv1) as sizes:
        cam("scorecam", model, x, layer="conv2", batch_size=64)
    assert sizes["first"][1:] == [4 * B]  # 4 varying channels of 5, of both images in one batch


def test_scorecam_with_a_callable_target_uses_logits_not_softmax():
    model, x = net(8), inputs(8)
    target = lambda logits: logits[:, 2]  # noqa: E731
    attr = cam("scorecam", model, x, target=target, layer="conv2", relu=False)
    close(attr.values, ref_scorecam(model, x, "conv2", target=target, relu=False))
    softmax_version = ref_scorecam(model, x, "conv2", target=[2, 2], relu=False)
    assert not np.allclose(attr.values, softmax_version, rtol=1e-2)
    close(cam("scorecam", model, x, target=2, layer="conv2", relu=False).values, softmax_version)


# --------------------------------------------------------------------------------------------
# Eigen-CAM on a known rank-1 structure
# --------------------------------------------------------------------------------------------

def identity_head(channels: int) -> nn.Sequential:
    """The input itself is the hooked activation: ``act`` is an identity, then GAP -> linear."""
    model = nn.Sequential(OrderedDict(act=nn.Identity(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
                                      fc=nn.Linear(channels, 3)))
    return seeded_(model.double(), 0)


def rank_one(u: torch.Tensor, v: torch.Tensor, const: float) -> torch.Tensor:
    return (v[:, None, None] * u[None] + const)[None]  # (1, C, h, w)


@pytest.mark.parametrize("seed", range(8))
def test_eigencam_recovers_a_rank_one_pattern_with_the_right_sign(seed):
    g = torch.Generator().manual_seed(seed)
    C, h, w = 7, 6, 5
    u = torch.rand(h, w, generator=g, dtype=torch.float64)
    v = torch.rand(C, generator=g, dtype=torch.float64) + 0.1
    if seed % 2:
        v = -v  # the channel sum now falls where u rises: the map must follow the channel sum
    x = rank_one(u, v, const=0.3 + seed)
    attr = cam("eigencam", identity_head(C), x, target=0, layer="act")
    m = attr.values[0].astype(np.float64)
    centred = (u - u.mean()).numpy()
    factor = float((m * centred).sum() / (centred * centred).sum())
    close(m, factor * centred)  # proportional to u - mean(u)
    assert abs(factor) == pytest.approx(float(v.norm()), rel=1e-5)  # X v1 = (u - ū) |v|
    channel_sum = x[0].sum(dim=0).numpy()
    assert np.corrcoef(m.ravel(), channel_sum.ravel())[0, 1] > 0.999
    assert (factor > 0) == (float(v.sum()) > 0)


def test_eigencam_sign_does_not_depend_on_the_svd():
    """Negating every activation negates the map: the sign comes from the data, not the solver."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 6, 5, 5, generator=g, dtype=torch.float64)
    model = identity_head(6)
    plus = cam("eigencam", model, x, target=0, layer="act").values
    minus = cam("eigencam", model, -x, target=0, layer="act").values
    close(minus, -plus)
    for m, a in [(plus, x), (minus, -x)]:
        assert np.corrcoef(m.ravel(), a[0].sum(dim=0).numpy().ravel())[0, 1] > 0


# --------------------------------------------------------------------------------------------
# CAM's head check
# --------------------------------------------------------------------------------------------

def flatten_linear_net() -> nn.Sequential:
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), flat=nn.Flatten(),
                                      fc=nn.Linear(4 * H * W, 5)))
    return seeded_(model.double(), 1, 0.1)


def two_linear_net(hidden: int) -> nn.Sequential:
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1),
                                      flat=nn.Flatten(), fc1=nn.Linear(4, hidden), act=nn.ReLU(), fc2=nn.Linear(hidden, 5)))
    return seeded_(model.double(), 2)


@pytest.mark.parametrize("model,head", [
    (flatten_linear_net, "fc"),
    (lambda: two_linear_net(7), "fc2"),  # the last linear takes 7 features, the layer has 4 channels
    (lambda: two_linear_net(4), "fc2"),  # same width: only the numeric check can tell
], ids=["conv-flatten-linear", "gap-linear-relu-linear-7", "gap-linear-relu-linear-4"])
def test_cam_on_a_model_without_gap_linear_head_names_the_head(model, head):
    m = model()
    with pytest.raises(ConfigError) as e:
        cam("cam", m, inputs(), layer="relu")
    msg = str(e.value)
    assert f"'{head}'" in msg and "gradcam" in msg and "'relu'" in msg
    assert hook_count(m) == 0
    cam("gradcam", m, inputs(), layer="relu")  # the suggested method runs on it


def test_cam_explicit_head_must_be_a_linear_module():
    with pytest.raises(ConfigError) as e:
        cam("cam", net(), inputs(), layer="relu3", head="pool")
    msg = str(e.value)
    assert "'pool'" in msg and "AdaptiveAvgPool2d" in msg and "nn.Linear" in msg
    with pytest.raises(ConfigError, match="'fc1'"):  # a linear that is not the GAP head: the numeric check
        cam("cam", two_linear_net(4), inputs(), layer="relu", head="fc1")
    with pytest.raises(ConfigError, match="not found"):
        cam("cam", net(), inputs(), layer="relu3", head="fcc")


def test_cam_needs_a_class_index_target():
    with pytest.raises(ConfigError, match="callable"):
        cam("cam", net(), inputs(), target=lambda z: z[:, 0], layer="relu3")


# --------------------------------------------------------------------------------------------
# Several layers from one pass
# --------------------------------------------------------------------------------------------

def layers_for(name: str) -> list[str]:
    return ["relu3", "tap"] if name == "cam" else ["conv2", "act2", "relu3"]


@pytest.mark.parametrize("name", CAM_METHODS)
def test_attribute_layers_equals_layer_by_layer(name):
    model, x = net(9), inputs(9)
    m = get_method(name)(**({"batch_size": 3} if name in ("scorecam", "ablationcam") else {}))
    together = m.attribute_layers(model, x, TARGET, layers_for(name))
    assert [a.layer for a in together] == layers_for(name)
    for a in together:
        alone = m(model, x, TARGET, layer=a.layer)
        np.testing.assert_array_equal(a.values, alone.values)
        np.testing.assert_array_equal(a.upsampled, alone.upsampled)
        np.testing.assert_array_equal(a.logits, alone.logits)
        assert (a.target, a.params, a.warnings, a.method) == (alone.target, alone.params, alone.warnings, alone.method)


@pytest.mark.parametrize("name", [n for n in CAM_METHODS if n not in ("scorecam", "ablationcam")])
def test_attribute_layers_is_one_forward_and_one_backward(name):
    model, x = net(9), inputs(9)
    calls = {"forward": 0, "backward": 0}
    forward = model.conv1.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    backward = model.fc.register_full_backward_hook(lambda *_: calls.__setitem__("backward", calls["backward"] + 1))
    try:
        attrs = get_method(name)().attribute_layers(model, x, TARGET, layers_for(name))
    finally:
        forward.remove()
        backward.remove()
    assert len(attrs) == len(layers_for(name))
    assert calls["forward"] == 1
    assert calls["backward"] == (1 if get_method(name).uses_gradients else 0)
    assert hook_count(model) == 0


def test_gradient_cams_with_three_layers_make_exactly_one_forward():
    assert set(REF_GRADIENT_CAMS) <= set(GRADIENT_CAMS)
    model, x = net(), inputs()
    count = [0]
    handle = model.conv1.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    try:
        for name in GRADIENT_CAMS:
            count[0] = 0
            attrs = get_method(name)().attribute_layers(model, x, TARGET, ["conv2", "act2", "relu3"])
            assert count[0] == 1, name
            for a in attrs:  # and each layer's map is still its own formula
                if name in REF_GRADIENT_CAMS:
                    close(a.values, ref_gradient_cam(name, model, x, a.layer))
    finally:
        handle.remove()


def test_layercam_fuse_adds_one_fused_map():
    model, x = net(10), inputs(10)
    layers = ["conv2", "act2", "relu3"]
    attrs = get_method("layercam")(fuse=True).attribute_layers(model, x, TARGET, layers)
    assert [a.layer for a in attrs] == layers + ["fused"]
    per_layer, fused = attrs[:-1], attrs[-1]
    plain = get_method("layercam")(fuse=False).attribute_layers(model, x, TARGET, layers)
    for a, b in zip(per_layer, plain):
        np.testing.assert_array_equal(a.values, b.values)
    assert fused.values.shape == fused.upsampled.shape == (B, H, W)
    assert fused.method == "layercam" and fused.target == tuple(TARGET)
    np.testing.assert_array_equal(fused.logits, per_layer[0].logits)
    expected = fuse_layer_maps([torch.from_numpy(a.values) for a in per_layer], (H, W), 2.0).numpy()
    np.testing.assert_allclose(fused.values, expected, rtol=1e-6, atol=1e-7)
    # and against a float64 reference of the fusion, from the reference per-layer maps
    reference = ref_fuse([ref_gradient_cam("layercam", model, x, layer) for layer in layers], (H, W))
    close(fused.values, reference)
    assert 0 <= fused.values.min() and fused.values.max() <= math.tanh(2.0) + 1e-6


def test_layercam_fuse_gamma_is_used():
    model, x = net(10), inputs(10)
    layers = ["conv2", "relu3"]
    fused = get_method("layercam")(fuse=True, gamma=0.5).attribute_layers(model, x, TARGET, layers)[-1]
    reference = ref_fuse([ref_gradient_cam("layercam", model, x, layer) for layer in layers], (H, W), gamma=0.5)
    close(fused.values, reference)


def test_layercam_fuse_with_a_single_layer_adds_nothing():
    model, x = net(10), inputs(10)
    attrs = get_method("layercam")(fuse=True).attribute_layers(model, x, TARGET, ["act2"])
    assert [a.layer for a in attrs] == ["act2"]
    single = get_method("layercam")(fuse=True)(model, x, TARGET, layer="act2")
    assert single.layer == "act2"


# --------------------------------------------------------------------------------------------
# All-zero activations: a zero map and a warning, never NaN
# --------------------------------------------------------------------------------------------

class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def dead_net(kind: str) -> nn.Sequential:
    """conv -> ReLU -> conv -> ``dead`` -> GAP -> linear, where ``dead`` outputs zeros only."""
    model = seeded_(nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 6, 3, padding=1), relu1=nn.ReLU(), conv2=nn.Conv2d(6, 5, 3, padding=1),
        dead=Scale(0.0) if kind == "times-zero" else nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(5, 4),
    )).double(), 0)
    if kind == "negative-bias":
        with torch.no_grad():
            model.conv2.bias.fill_(-1e4)
    return model


@pytest.mark.parametrize("kind", ["times-zero", "negative-bias"])
@pytest.mark.parametrize("name", CAM_METHODS)
def test_all_zero_activation_gives_a_zero_map_and_a_warning(name, kind):
    model, x = dead_net(kind), inputs()
    a, g = acts_and_grads(model, x, "dead", target=[1, 2])
    assert (a == 0).all() and np.abs(g).max() > 0  # the premise: zero activations, live gradients
    for relu in (True, False):
        attr = cam(name, model, x, target=[1, 2], layer="dead", relu=relu)
        assert np.isfinite(attr.values).all() and np.isfinite(attr.upsampled).all()
        assert (attr.values == 0).all() and (attr.upsampled == 0).all()
        assert attr.warnings and any("zero" in w and "dead" in w for w in attr.warnings)
    assert hook_count(model) == 0


def test_live_maps_carry_no_warning():
    model, x = net(), inputs()
    for name in CAM_METHODS:
        attr = cam(name, model, x, layer="relu3")
        assert np.abs(attr.values).max() > 0 and attr.warnings == (), name


def test_layercam_fused_map_of_zero_activations_warns():
    model = dead_net("times-zero")  # "dead" is 0 and conv2's gradient through it is 0: both maps are 0
    attrs = get_method("layercam")(fuse=True).attribute_layers(model, inputs(), [1, 2], ["conv2", "dead"])
    assert [a.layer for a in attrs] == ["conv2", "dead", "fused"]
    for a in attrs:
        assert np.isfinite(a.values).all() and (a.values == 0).all()
    assert attrs[0].warnings and attrs[1].warnings  # each per-layer zero map warns ...
    assert attrs[2].warnings  # ... and so must the fused one, which is all zero too


# --------------------------------------------------------------------------------------------
# run.py end to end
# --------------------------------------------------------------------------------------------

def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


CAM_FILES = ["file_cam_gray", "file_cam_heatmap", "file_cam_on_image", "file_npy", "file_npy_upsampled"]


def check_rows(df: pd.DataFrame, run_dir) -> None:
    assert set(df.status) == {"ok"}
    for col in CAM_FILES:
        assert df[col].is_unique, col
        for f in df[col]:
            assert (run_dir / f).is_file(), f


@pytest.mark.slow  # end to end: run.py / script processes
def test_cli_gradcam_three_vgg19_layers_in_one_call(tmp_path, image_cache):
    # a 64 px input: the maps keep vgg19's strides (4, 8, 16) at a twelfth of the 224 px compute
    ok(run_cli(["method=gradcam", "model=vgg19", "model.weights=null", "layer=[features.16,features.25,features.35]",
                "image=rocket", "model.preprocess.input_size=64"], tmp_path, image_cache))
    df = pd.read_csv(tmp_path / "manifest.csv")
    assert len(df) == 3 and list(df.layer) == ["features.16", "features.25", "features.35"]
    assert set(df.method) == {"gradcam"} and list(df.layers_in_call) == [3, 3, 3]
    check_rows(df, tmp_path)
    # vgg19 at 64: features.16 is a 16 x 16 conv, features.25 8 x 8, features.35 4 x 4
    shapes = [np.load(tmp_path / f).shape for f in df.file_npy]
    assert shapes == [(16, 16), (8, 8), (4, 4)]
    assert all(np.load(tmp_path / f).shape == (64, 64) for f in df.file_npy_upsampled)


@pytest.mark.slow  # end to end: run.py / script processes
def test_cli_layercam_fusion_row(tmp_path, image_cache):
    ok(run_cli(["method=layercam", "method.layercam.fuse=true", "layer=[blocks.5,bn2]", "image=chelsea"], tmp_path, image_cache))
    df = pd.read_csv(tmp_path / "manifest.csv")
    assert list(df.layer) == ["blocks.5", "bn2", "fused"] and list(df.layers_in_call) == [3, 3, 3]
    check_rows(df, tmp_path)
    fused = np.load(tmp_path / df.file_npy[2])
    assert fused.shape == (224, 224) and 0 <= fused.min() and 0 < fused.max() <= math.tanh(2.0) + 1e-6


@pytest.mark.slow  # Score-CAM at bn2 is 1280 masked forwards of efficientnet_lite0
def test_cli_gradient_free_cams(tmp_path, image_cache):
    # a 96 px input (3 x 3 maps at bn2): the same 1280 masked forwards, each a fifth of the 224 px one
    ok(run_cli(["method=[cam,scorecam,ablationcam,eigencam]", "image=coffee", "method.scorecam.batch_size=64",
                "model.preprocess.input_size=96"], tmp_path, image_cache))
    df = pd.read_csv(tmp_path / "manifest.csv")
    assert sorted(df.method) == ["ablationcam", "cam", "eigencam", "scorecam"]
    assert set(df.layer) == {"bn2"} and list(df.layers_in_call) == [1, 1, 1, 1]
    check_rows(df, tmp_path)
    params = dict(zip(df.method, df.params))
    assert '"batch_size": 64' in params["scorecam"]
    for f in df.file_npy:
        m = np.load(tmp_path / f)
        assert m.shape == (3, 3) and np.isfinite(m).all() and np.abs(m).max() > 0


@pytest.mark.slow  # end to end: run.py / script processes
def test_cli_method_level_layer_override(tmp_path, image_cache):
    ok(run_cli(["method=gradcam", "+method.gradcam.layer=[blocks.4,bn2]"], tmp_path, image_cache))
    df = pd.read_csv(tmp_path / "manifest.csv")
    assert list(df.layer) == ["blocks.4", "bn2"] and list(df.layers_in_call) == [2, 2]
    check_rows(df, tmp_path)
