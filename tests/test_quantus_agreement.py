"""cnnviz's metrics against Quantus 0.6 (the ``[bench]`` extra) on tiny deterministic cases.

Where the definitions match, the numbers must match (relevance mass and rank accuracy, the pointing
game at tolerance 0, max-sensitivity with the same perturbations); where they differ, each test says
how, and checks the relationship between the two (ROAD: Quantus reports whether the class survives,
cnnviz its probability, on the same imputed images; infidelity: Quantus draws patch-wise baseline
replacements, cnnviz Gaussian noise, and the formula applied to the same perturbations gives the same
number). Quantus has no Average Drop / Increase in Confidence (``confidence_change``); torchcam's
``ClassificationMetric`` is the reference its module docstring names.

Quantus 0.6 calls ``np.trapz``, which numpy 2 removed: the ``quantus`` fixture lends it
``np.trapezoid`` for each test only (monkeypatch), never in cnnviz.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = [pytest.mark.slow,  # a peer check: imports Quantus (a few seconds)
              pytest.mark.skipif(importlib.util.find_spec("quantus") is None,
                                 reason="needs quantus (pip install -e .[bench])")]


@pytest.fixture
def quantus(monkeypatch):
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    import quantus as q

    return q


def _maps_and_masks(n: int, h: int, w: int, seed: int):
    """``n`` tie-free maps with signed values and ``n`` box masks of varying size and place."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n, 1, h, w))
    masks = np.zeros((n, 1, h, w))
    for i in range(n):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        masks[i, 0, y0:y0 + rng.integers(2, h - y0 + 1), x0:x0 + rng.integers(2, w - x0 + 1)] = 1
    return maps, masks


def _localisation(quantus, cls, maps, masks):
    x = np.zeros((len(maps), 1, *maps.shape[-2:]), dtype=np.float32)  # Quantus checks x's shape only
    metric = cls(normalise=False, abs=False, disable_warnings=True, display_progressbar=False)
    return np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(len(maps), int), a_batch=maps, s_batch=masks),
                      dtype=np.float64)


def test_relevance_mass_equals_quantus_on_positive_maps_and_on_the_positive_part(quantus):
    from cnnviz.metrics.relevance_mass import relevance_mass

    maps, masks = _maps_and_masks(20, 9, 11, seed=0)
    ours = np.array([relevance_mass(m[0], s[0]) for m, s in zip(maps, masks)])
    # same definition on maps without negative values; float64 sums in another order: 1e-12
    positive = np.abs(maps)
    np.testing.assert_allclose([relevance_mass(m[0], s[0]) for m, s in zip(positive, masks)],
                               _localisation(quantus, quantus.RelevanceMassAccuracy, positive, masks), rtol=0, atol=1e-12)
    # signed maps: cnnviz counts positive relevance only (Arras et al.: R⁺), Quantus sums R as it is,
    # so cnnviz's number is Quantus's on max(R, 0) ...
    np.testing.assert_allclose(ours, _localisation(quantus, quantus.RelevanceMassAccuracy, np.maximum(maps, 0), masks),
                               rtol=0, atol=1e-12)
    # ... and not Quantus's on R itself
    assert np.abs(ours - _localisation(quantus, quantus.RelevanceMassAccuracy, maps, masks)).max() > 0.05


def test_relevance_rank_equals_quantus_without_ties_and_with_cnnvizs_tie_order(quantus):
    from cnnviz.metrics.perturbation import ranking
    from cnnviz.metrics.relevance_rank import relevance_rank

    maps, masks = _maps_and_masks(20, 9, 11, seed=1)
    ours = [relevance_rank(m[0], s[0]) for m, s in zip(maps, masks)]
    # tie-free maps: the same top-K set, exact counts
    np.testing.assert_array_equal(ours, _localisation(quantus, quantus.RelevanceRankAccuracy, maps, masks))
    assert len(set(ours)) > 5  # the cases spread over many values

    # ties (a map that is zero on most pixels): cnnviz orders them by a seeded permutation, Quantus by
    # np.argsort's order; on cnnviz's ranks (a strict order) Quantus gives cnnviz's number
    sparse = np.where(np.abs(maps) > 1.0, maps, 0.0)
    strict = np.empty_like(sparse)
    for i, m in enumerate(sparse):
        flat = np.empty(m.size)
        flat[ranking(m[0], 0)] = np.arange(m.size, 0, -1)
        strict[i, 0] = flat.reshape(m.shape[1:])
    np.testing.assert_array_equal([relevance_rank(m[0], s[0]) for m, s in zip(sparse, masks)],
                                  _localisation(quantus, quantus.RelevanceRankAccuracy, strict, masks))


def test_pointing_game_at_tolerance_zero_equals_quantus(quantus):
    from cnnviz.metrics.pointing_game import pointing_game

    maps, masks = _maps_and_masks(40, 9, 11, seed=2)
    ours = np.array([pointing_game(m[0], s[0], tolerance=0) for m, s in zip(maps, masks)])
    theirs = _localisation(quantus, quantus.PointingGame, maps, masks)
    np.testing.assert_array_equal(ours, theirs)
    assert 0 < ours.sum() < len(ours)  # hits and misses both tested
    # Quantus has no tolerance: Zhang et al.'s 15 pixels (cnnviz's default) only adds hits
    wide = np.array([pointing_game(m[0], s[0], tolerance=15) for m, s in zip(maps, masks)])
    assert (wide >= ours).all() and wide.sum() > ours.sum()
    # a tie for the maximum: Quantus hits when any tied maximum is on the object, cnnviz points with the first
    tie = np.zeros((1, 1, 5, 5))
    tie[0, 0, 0, 0] = tie[0, 0, 4, 4] = 1.0
    mask = np.zeros((1, 1, 5, 5))
    mask[0, 0, 3:, 3:] = 1
    assert pointing_game(tie[0, 0], mask[0, 0], tolerance=0) == 0.0
    assert _localisation(quantus, quantus.PointingGame, tie, mask)[0] == 1.0


def _linear_net(channels: int, classes: int, seed: int, h: int, w: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(channels * h * w, classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net.eval()


def test_road_uses_quantus_imputation_and_its_class_survival_equals_quantus(quantus):
    """Quantus's ROAD reports, per percentage, whether the argmax still is the label (MoRF only);
    cnnviz reports the target's probability, MoRF and LeRF. On the same imputed images (noise 0:
    Quantus draws its noise from numpy's global state) the argmax of cnnviz's images is Quantus's
    answer. One input channel: Quantus 0.6 ranks a one-channel map broadcast over the input's
    channels and indexes the pixels with those C·H·W positions, so a (1, H, W) map of an RGB input
    raises IndexError there (reported in the issue)."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    from cnnviz.metrics.road import road_inputs

    h = w = 10
    pct = [10, 30, 50, 70, 90]  # whole pixel counts of 100 pixels: Quantus floors p·HW, cnnviz rounds it
    net = _linear_net(1, 3, seed=0, h=h, w=w)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 1, h, w))
    with torch.no_grad():
        y = net(torch.from_numpy(x).float()).argmax(1).numpy()
    maps = rng.random((8, 1, h, w))  # tie-free: the same pixels are removed in both libraries
    seen = []

    def recording(arr, indices, **kw):
        out = noisy_linear_imputation(arr=arr, indices=indices, **kw)
        seen.append(out)
        return out

    metric = quantus.ROAD(percentages=pct, noise=0.0, perturb_func=recording, normalise=False, abs=False,
                          disable_warnings=True, display_progressbar=False)
    # {percentage: share of images still classified as y}
    survived = metric(model=net, x_batch=x, y_batch=y, a_batch=maps, channel_first=True, device="cpu")
    ours = np.stack([road_inputs(torch.from_numpy(x[i:i + 1]), maps[i, 0], pct, noise=0.0)[:len(pct)].numpy()
                     for i in range(len(x))])  # MoRF images, float64
    # the same images: Quantus visits percentage by percentage, image by image
    theirs = np.stack(seen).reshape(len(pct), len(x), 1, h, w).transpose(1, 0, 2, 3, 4)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)  # two sparse solvers, float64
    with torch.no_grad():  # Quantus feeds the model float32 (torch.Tensor(x))
        ours_hit = (net(torch.from_numpy(ours.reshape(-1, 1, h, w)).float()).argmax(1).numpy().reshape(len(x), len(pct))
                    == y[:, None])
    np.testing.assert_allclose(ours_hit.mean(0), [survived[p] for p in pct], rtol=0, atol=0)
    assert 0 < ours_hit.mean() < 1  # the class is lost on some images and kept on others


def seeded_net(channels: int, seed: int) -> nn.Module:
    """conv -> ReLU -> GAP -> linear (3 classes) with N(0, 1) weights from ``seed``, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net.eval()


def test_infidelity_formula_equals_quantus_on_quantus_perturbations(quantus):
    """Both compute E[(Iᵀ Φ − (f_c(x) − f_c(x − I)))²] on logits; they draw I differently (cnnviz:
    Gaussian noise, the paper's choice; Quantus: patches replaced cumulatively by a baseline). cnnviz's
    formula (``infidelity_of``, ``normalize=False``: β = 1 as Quantus) on the perturbations Quantus
    draws gives Quantus's number. Tolerance: Quantus runs the model and x − x' in float32."""
    from quantus.functions.perturb_func import batch_baseline_replacement_by_indices

    from cnnviz.metrics.infidelity import infidelity_of

    c, h, w = 3, 8, 8
    net = seeded_net(c, seed=0)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, c, h, w)).astype(np.float32)
    y = np.array([0, 2, 1])
    maps = rng.normal(size=(3, 1, h, w))
    seen = []

    def recording(arr, indices, **kw):
        out = batch_baseline_replacement_by_indices(arr=arr, indices=indices, **kw)
        seen.append(out.copy())
        return out

    metric = quantus.Infidelity(perturb_func=recording, perturb_patch_sizes=[4], n_perturb_samples=1, normalise=False,
                                abs=False, disable_warnings=True, display_progressbar=False)
    theirs = metric(model=net, x_batch=x, y_batch=y, a_batch=maps, channel_first=True, device="cpu")
    assert len(seen) == (h // 4) * (w // 4)  # one perturbation per patch, cumulative
    for i in range(len(x)):
        perturbed = np.stack([s.reshape(x.shape)[i] for s in seen]).astype(np.float32)
        with torch.no_grad():
            f = net(torch.from_numpy(np.concatenate([x[i:i + 1], perturbed]))).double()[:, y[i]].numpy()
        noise = torch.from_numpy((x[i][None] - perturbed).astype(np.float64))
        ours = infidelity_of(maps[i, 0], noise, f[0] - f[1:], normalize=False)["infidelity"]
        assert ours == pytest.approx(theirs[i], rel=1e-6)


def test_infidelity_of_the_gradient_of_a_linear_model_is_zero_in_both(quantus):
    """f = w·x, Φ = w: Iᵀ Φ = f(x) − f(x − I) for every I, so both perturbation schemes give 0."""
    from cnnviz.metrics.infidelity import infidelity

    c, h, w = 3, 8, 8
    net = _linear_net(c, 2, seed=5, h=h, w=w).double()
    x = np.random.default_rng(5).normal(size=(1, c, h, w))
    phi = net[1].weight[1].detach().reshape(c, h, w).numpy()
    ours = infidelity(net, torch.from_numpy(x), phi, target=1, n_perturbations=16, normalize=False)["infidelity"]
    metric = quantus.Infidelity(perturb_patch_sizes=[4], n_perturb_samples=1, normalise=False, abs=False,
                                disable_warnings=True, display_progressbar=False)
    theirs = metric(model=net.float(), x_batch=x.astype(np.float32), y_batch=np.array([1]), a_batch=phi[None],
                    channel_first=True, device="cpu")[0]
    assert ours == pytest.approx(0.0, abs=1e-18)  # float64 throughout
    assert theirs == pytest.approx(0.0, abs=1e-6)  # float32 logits of magnitude ~10: rounding ~1e-6


def test_max_sensitivity_equals_quantus_with_the_same_perturbations(quantus):
    """The same quantity (Quantus's defaults: difference, Frobenius norms, divided by ‖Φ(x)‖, max over
    draws) on the same draws: Quantus's perturb_func adds cnnviz's δ (``uniform_ball``) and its
    explain_func is cnnviz's technique, so the two numbers are equal to float64 rounding. The
    distributions also match: Quantus's default ``batch_uniform_noise(lower_bound=r)`` draws U(−r, r)
    per feature, as ``uniform_ball`` does (checked below on moments)."""
    from quantus.functions.perturb_func import batch_uniform_noise

    from cnnviz import get_method
    from cnnviz.metrics.max_sensitivity import max_sensitivity, uniform_ball

    c, h, w = 3, 8, 8
    net = seeded_net(c, seed=1).double()
    x = np.random.default_rng(6).normal(size=(1, c, h, w))
    target, n, radius = 1, 8, 0.3
    method = get_method("vanilla_backprop")()

    def explain(xs: torch.Tensor) -> np.ndarray:
        return method(net, xs, [target] * xs.shape[0]).values

    deltas = uniform_ball(torch.from_numpy(x), n, radius, seed=0).numpy()
    draws = iter(range(n))

    def cnnviz_deltas(arr, indices, **kw):
        return arr + deltas[next(draws)].reshape(1, -1)

    metric = quantus.MaxSensitivity(nr_samples=n, perturb_func=cnnviz_deltas, normalise=False, abs=False,
                                    disable_warnings=True, display_progressbar=False)
    theirs = metric(model=net, x_batch=x, y_batch=np.array([target]), a_batch=explain(torch.from_numpy(x)),
                    explain_func=lambda model, inputs, targets, **kw: explain(torch.as_tensor(np.asarray(inputs))),
                    channel_first=True, device="cpu")[0]
    ours = max_sensitivity(explain, torch.from_numpy(x), n_samples=n, radius=radius, seed=0)
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert ours > 0

    np.random.seed(0)  # Quantus draws from numpy's global state
    q = batch_uniform_noise(arr=np.zeros((1, 200_000)), indices=np.arange(200_000)[None], lower_bound=radius).ravel()
    ours_d = uniform_ball(torch.zeros(1, 200_000), 1, radius, seed=0).numpy().ravel()
    for d in (q, ours_d):
        assert d.min() >= -radius and d.max() <= radius
        assert abs(d.mean()) < 3e-3 and d.var() == pytest.approx(radius ** 2 / 3, rel=0.01)
