"""Faithfulness metrics of issue 25: ROAD (noisy linear imputation, MoRF / LeRF), Average Drop /
Increase in Confidence, infidelity and max-sensitivity, each against float64 references on tiny
hand-built models and inputs (the imputation's linear system, a region model with known
probabilities, a linear and a quadratic model whose infidelity is known in closed form, an
explainer whose sensitivity is the perturbation itself), plus shared model batches and the
runner's path through ``evaluate``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import ConfigError
from cnnviz.metrics import Sample, evaluate, evaluate_rows, get_metric
from cnnviz.metrics.confidence_change import change, confidence_change, masked_input
from cnnviz.metrics.infidelity import infidelity, perturbations
from cnnviz.metrics.max_sensitivity import max_sensitivity, uniform_ball
from cnnviz.metrics.perturbation import ranking
from cnnviz.metrics.road import impute, road_curves
from conftest import TinyCNN, tiny_method
from test_metrics import SIGMOID, RegionModel, region_maps
from test_metrics_batched import Recorder

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")


# --- ROAD: noisy linear imputation ------------------------------------------------------------------


def reference_imputation_residual(out: np.ndarray, removed: np.ndarray) -> float:
    """Largest |y_i − Σ_j w_ij y_j / Σ_j w_ij| over removed pixels i, neighbours j inside the image,
    by explicit loops (float64): zero when ``out`` solves the paper's system."""
    c, h, w = out.shape
    worst = 0.0
    for r, q in zip(*np.nonzero(removed)):
        num, den = np.zeros(c), 0.0
        for dr in (-1, 0, 1):
            for dq in (-1, 0, 1):
                if (dr, dq) == (0, 0) or not (0 <= r + dr < h and 0 <= q + dq < w):
                    continue
                weight = 1 / 12 if dr and dq else 1 / 6  # the paper's: diagonal 1/12, direct 1/6
                num += weight * out[:, r + dr, q + dq]
                den += weight
        worst = max(worst, float(np.abs(out[:, r, q] - num / den).max()))
    return worst


def test_imputation_solves_the_neighbour_mean_system_and_keeps_the_other_pixels():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 7, 9))
    removed = rng.random((7, 9)) < 0.6  # big holes, some touching the border
    out = impute(image, removed, noise=0.0)
    assert reference_imputation_residual(out, removed) < 1e-12
    np.testing.assert_array_equal(out[:, ~removed], image[:, ~removed])
    assert not np.allclose(out[:, removed], image[:, removed])
    assert np.array_equal(impute(image, np.zeros((7, 9), bool)), image)  # nothing removed: nothing changes


def test_imputation_keeps_a_constant_image_and_reproduces_a_linear_ramp_inside():
    rng = np.random.default_rng(1)
    removed = rng.random((8, 8)) < 0.7
    constant = np.full((3, 8, 8), 0.37)
    np.testing.assert_allclose(impute(constant, removed, noise=0.0), constant, rtol=0, atol=1e-13)
    # symmetric weights make a linear function the neighbour mean of itself: holes away from the
    # border are filled exactly
    rr, qq = np.mgrid[0:8, 0:8]
    ramp = np.stack([0.5 * rr - 0.25 * qq, rr + qq, -qq]).astype(np.float64)
    interior = removed.copy()
    interior[[0, -1], :] = interior[:, [0, -1]] = False
    np.testing.assert_allclose(impute(ramp, interior, noise=0.0), ramp, rtol=0, atol=1e-12)


def test_imputation_noise_is_gaussian_on_the_removed_pixels_only():
    image = np.zeros((3, 40, 40))
    removed = np.zeros((40, 40), bool)
    removed[5:35, 5:35] = True
    out = impute(image, removed, noise=0.2, rng=np.random.default_rng(0))
    assert np.all(out[:, ~removed] == 0)
    assert out[:, removed].std() == pytest.approx(0.2, rel=0.05) and abs(out[:, removed].mean()) < 0.01
    with pytest.raises(ValueError, match="every pixel is removed"):
        impute(image, np.ones((40, 40), bool))


def region_image() -> torch.Tensor:
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    x[:, :, RegionModel.REGION[0], RegionModel.REGION[1]] = 1.0
    return x


def test_road_curves_are_the_probabilities_of_the_imputed_images():
    oracle, rand, inverse = region_maps()
    x = region_image()
    percentages = [10, 25, 50, 90]
    morf, lerf = road_curves(RegionModel(), x, rand, 0, percentages, noise=0.0, batch_size=3)
    order = ranking(rand, 0)
    for curve, ranked in ((morf, order), (lerf, order[::-1])):
        for p, got in zip(percentages, curve):
            removed = np.zeros(64, bool)
            removed[ranked[:round(p * 64 / 100)]] = True
            filled = impute(x[0].numpy(), removed.reshape(8, 8), noise=0.0)
            want = SIGMOID(RegionModel.K * filled[:, RegionModel.REGION[0], RegionModel.REGION[1]].mean())
            assert got == pytest.approx(want, abs=1e-12), p


def test_road_ranks_the_oracle_map_above_its_inverse():
    oracle, _, inverse = region_maps()
    metric = get_metric("road")(percentages=[10, 20, 40, 60])
    out = {name: metric(Sample("m", m, None, region_image(), 0, RegionModel())).values
           for name, m in (("oracle", oracle), ("inverse", inverse))}
    assert out["oracle"]["road_morf"] < out["inverse"]["road_morf"]
    assert out["oracle"]["road_lerf"] > out["inverse"]["road_lerf"]
    # LeRF of the oracle removes background first: the region, and the probability, stay as they are
    assert out["oracle"]["road_lerf"] == pytest.approx(SIGMOID(RegionModel.K), abs=1e-12)


def test_road_batch_shares_model_passes_and_equals_one_call_per_map():
    maps = region_maps()
    xs = [region_image() + 0.1 * torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
          for s in range(3)]
    metric = get_metric("road")(percentages=[20, 50], batch_size=5)
    forward = Recorder(RegionModel())
    batched = metric.batch([Sample("m", m, None, x, 0, forward) for m, x in zip(maps, xs)])
    assert forward.sizes == [5, 5, 2]  # 3 maps x 2 orders x 2 percentages = 12 imputed images
    for r, m, x in zip(batched, maps, xs):
        alone = metric(Sample("m", m, None, x, 0, RegionModel()))
        assert r.values == pytest.approx(alone.values, abs=1e-12)
        np.testing.assert_allclose(r.extras["road_curve"]["morf"], alone.extras["road_curve"]["morf"], atol=1e-12)
        assert list(r.extras["road_curve"]) == ["percentage", "morf", "lerf"]


def test_road_refuses_percentages_outside_0_100():
    with pytest.raises(ConfigError, match=r"metrics\.road\.percentages"):
        get_metric("road")(percentages=[10, 100])
    with pytest.raises(ConfigError, match=r"metrics\.road\.percentages"):
        get_metric("road")(percentages=[])


# --- Average Drop / Increase in Confidence ----------------------------------------------------------


def test_average_drop_and_increase_on_a_region_model_with_known_probabilities():
    oracle, rand, inverse = region_maps()
    region = RegionModel.REGION
    ones = torch.ones(1, 3, 8, 8, dtype=torch.float64)
    y = SIGMOID(RegionModel.K)  # p(class 0) on x = 1
    # the oracle map keeps the region: nothing changes
    assert confidence_change(RegionModel(), ones, oracle, 0) == pytest.approx(
        {"confidence_change": 0.0, "average_drop": 0.0, "increase_in_confidence": 0.0, "confidence_image": y,
         "confidence_masked": y}, abs=1e-12)
    # its inverse zeroes the region: O = sigmoid(0) = 1/2
    out = confidence_change(RegionModel(), ones, inverse, 0)
    assert out["average_drop"] == pytest.approx(100 * (y - 0.5) / y, abs=1e-10) and out["increase_in_confidence"] == 0
    # any map: O = sigmoid(K · mean of the [0, 1]-scaled map over the region)
    w = (rand - rand.min()) / (rand.max() - rand.min())
    o = SIGMOID(RegionModel.K * w[region].mean())
    assert confidence_change(RegionModel(), ones, rand, 0)["average_drop"] == pytest.approx(100 * (y - o) / y, abs=1e-10)
    # on x = −1 the class gains when the region fades: an increase, no drop
    out = confidence_change(RegionModel(), -ones, inverse, 0)
    y = SIGMOID(-RegionModel.K)
    assert out == pytest.approx({"confidence_change": 100 * (0.5 - y) / y, "average_drop": 0.0, "increase_in_confidence": 100.0,
                                 "confidence_image": SIGMOID(-RegionModel.K), "confidence_masked": 0.5}, abs=1e-12)
    assert change(0.8, 0.2) == pytest.approx({"confidence_change": -75.0, "average_drop": 75.0,
                                              "increase_in_confidence": 0.0})


def test_pixel_space_masking_multiplies_the_unnormalised_image():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    pixels = torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m, s = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (mean, std))
    x = (pixels - m) / s
    w = np.random.default_rng(0).random((4, 5))
    back = masked_input(x, w, "pixel", mean, std) * s + m
    torch.testing.assert_close(back, pixels * torch.from_numpy(w), rtol=0, atol=1e-12)
    torch.testing.assert_close(masked_input(x, w, "input"), x * torch.from_numpy(w))
    with pytest.raises(ConfigError, match="input_mean and input_std"):
        masked_input(x, w, "pixel")


def test_confidence_change_metric_skips_a_constant_map_and_needs_a_target():
    metric = get_metric("confidence_change")()
    x = torch.ones(1, 3, 8, 8)
    out = metric(Sample("m", np.ones((8, 8)), None, x, 0, RegionModel()))
    assert out.values == {} and out.warnings == ("confidence_change: the map is constant, skipped",)
    assert metric(Sample("m", region_maps()[0], None, x, None, RegionModel())).values == {}
    with pytest.raises(ConfigError, match=r"metrics\.confidence_change\.space"):
        get_metric("confidence_change")(space="pixels")


def test_confidence_change_batch_is_one_model_pass_equal_to_one_call_per_map():
    oracle, rand, inverse = region_maps()
    xs = [torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in range(3)]
    maps = [oracle, rand, np.ones((8, 8)), inverse]
    metric = get_metric("confidence_change")(space="pixel", input_mean=[0.1, 0.2, 0.3], input_std=[0.5, 0.5, 2.0])
    forward = Recorder(RegionModel())
    batched = metric.batch([Sample("m", m, None, x, 0, forward) for m, x in zip(maps, [*xs, xs[0]])])
    assert forward.sizes == [6]  # the constant map is skipped; 3 maps x (image, masked image)
    for r, m, x in zip(batched, maps, [*xs, xs[0]]):
        alone = metric(Sample("m", m, None, x, 0, RegionModel()))
        assert r.values == pytest.approx(alone.values, abs=1e-12) and r.warnings == alone.warnings
    assert batched[2].values == {}


# --- infidelity -------------------------------------------------------------------------------------


class Linear(nn.Module):
    """Two logits: w · x + b and 0; float64."""

    def __init__(self, shape=(3, 5, 6), seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1) + self.b
        return torch.stack([s, torch.zeros_like(s)], dim=1)


class Quadratic(nn.Module):
    """Logit 0 = ½ Σ a x², logit 1 = 0; float64."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x):
        s = 0.5 * (self.a * x ** 2).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_infidelity_of_the_weights_of_a_linear_model_is_zero():
    model = Linear()
    x = torch.randn(1, 3, 5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = model.w.detach().numpy()
    for normalize in (False, True):
        out = infidelity(model, x, w, 0, n_perturbations=20, sigma=0.5, normalize=normalize)
        assert out["infidelity"] == pytest.approx(0.0, abs=1e-20) and out["infidelity_beta"] == pytest.approx(1.0)
    # twice the weights: β = 1/2 makes it exact again; with β = 1 the error is E[(Iᵀw)²] over the draws
    assert infidelity(model, x, 2 * w, 0, 20, 0.5)["infidelity"] == pytest.approx(0.0, abs=1e-20)
    assert infidelity(model, x, 2 * w, 0, 20, 0.5)["infidelity_beta"] == pytest.approx(0.5)
    noise = perturbations(x, 20, 0.5, 0).numpy()
    proj = (noise * w).reshape(20, -1).sum(1)
    raw = infidelity(model, x, 2 * w, 0, 20, 0.5, normalize=False)["infidelity"]
    assert raw == pytest.approx(np.mean(proj ** 2), rel=1e-12)
    # and a 2-D map is shared by the channels: Φ = w summed over channels is exact only if w is
    # the same in every channel
    same = np.broadcast_to(w[0], w.shape).copy()
    model.w.data = torch.from_numpy(same)
    assert infidelity(model, x, w[0], 0, 20, 0.5, normalize=False)["infidelity"] == pytest.approx(0.0, abs=1e-20)


def test_infidelity_of_the_gradient_of_a_quadratic_is_its_closed_form():
    # f = ½ Σ a x², Φ = ∇f = a x: Iᵀ Φ − (f(x) − f(x − I)) = Σ a I² / 2, whose mean square is
    # σ⁴/4 (Σ a)² + σ⁴/2 Σ a²  (E[I²] = σ², Var[I²] = 2σ⁴)
    a = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64).view(1, 1, 2, 2)
    x = torch.tensor([0.3, -1.0, 0.5, 2.0], dtype=torch.float64).view(1, 1, 2, 2)
    sigma = 0.3
    want = sigma ** 4 / 4 * float(a.sum()) ** 2 + sigma ** 4 / 2 * float((a ** 2).sum())
    got = infidelity(Quadratic(a), x, (a * x)[0].numpy(), 0, n_perturbations=4000, sigma=sigma, batch_size=1000,
                     normalize=False)["infidelity"]
    assert got == pytest.approx(want, rel=0.1)


def test_infidelity_through_evaluate_uses_the_gradient_and_shares_passes():
    model = Linear().float()
    x = torch.randn(3, 3, 5, 6, generator=torch.Generator().manual_seed(2))
    method = tiny_method("vanilla_backprop")
    rows = [method(model, x[i:i + 1], 0) for i in range(3)]
    metric = {"infidelity": get_metric("infidelity")(n_perturbations=8, batch_size=9, normalize=False)}
    out = evaluate_rows(metric, rows, model, x, method=method)
    for i, r in enumerate(out):  # the gradient of a linear model is its weights: no infidelity
        assert r.metrics["infidelity"] < 1e-8, r.metrics
        alone = evaluate(metric, rows[i], model, x[i:i + 1], method=method)
        assert alone.metrics["infidelity"] == pytest.approx(r.metrics["infidelity"], abs=1e-9)
    forward = Recorder(model)
    samples = [Sample("m", rows[i].values[0], None, x[i:i + 1], 0, forward) for i in range(3)]
    get_metric("infidelity")(n_perturbations=8, batch_size=9).batch(samples)
    assert forward.sizes == [9, 9, 9]  # 3 maps x (x and 8 perturbed copies)


# --- max-sensitivity --------------------------------------------------------------------------------


def test_max_sensitivity_of_an_identity_explainer_is_the_largest_relative_perturbation():
    x = torch.randn(1, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    deltas = uniform_ball(x, 12, 0.1, seed=3)
    assert float(deltas.abs().max()) <= 0.1 and float(deltas.abs().max()) > 0.09
    want = float(deltas.flatten(1).norm(dim=1).max() / x.norm())
    assert max_sensitivity(lambda xs: xs.numpy(), x, 12, 0.1, seed=3, batch_size=5) == pytest.approx(want, rel=1e-12)
    assert max_sensitivity(lambda xs: np.ones((len(xs), 7)), x, 12, 0.1) == 0.0  # a map that ignores x
    assert max_sensitivity(lambda xs: 3 * xs.numpy(), x, 12, 0.1, seed=3) == pytest.approx(want, rel=1e-12)  # scale-free


def test_max_sensitivity_recomputes_the_technique_on_perturbed_inputs():
    # a linear model's gradient is its weights whatever the input: sensitivity exactly 0
    model = Linear().float()
    x = torch.randn(1, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    grad = tiny_method("vanilla_backprop")
    metric = {"max_sensitivity": get_metric("max_sensitivity")(n_samples=5)}
    assert evaluate(metric, grad(model, x, 0), model, x, method=grad).metrics["max_sensitivity"] == 0.0
    # Grad-CAM on the tiny CNN moves with the input, more for a larger radius; the map's shape is the CAM's
    tiny = TinyCNN()
    x = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    cam = tiny_method("gradcam", relu=False)
    attr = cam(tiny, x, 1, layer="features.2")
    small, large = (evaluate({"max_sensitivity": get_metric("max_sensitivity")(n_samples=6, radius=r)}, attr, tiny, x,
                             method=cam, layers=["features.2"]).metrics["max_sensitivity"] for r in (0.01, 0.5))
    assert 0 < small < large
    out = evaluate(metric, attr, tiny, x)  # no technique: nothing to recompute
    assert "max_sensitivity" not in out.metrics and out.warnings[0].startswith("max_sensitivity: needs the technique")


def test_explain_input_gives_the_raw_maps_of_the_technique():
    tiny = TinyCNN()
    x = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    seen = {}

    class Spy(get_metric("max_sensitivity")):
        def __call__(self, sample):
            seen["maps"] = sample.explain_input(x)
            seen["sample"] = sample
            return super().__call__(sample)

    cam = tiny_method("gradcam", relu=False)
    attr = cam(tiny, x[:1], 1, layer="features.2")
    evaluate({"max_sensitivity": Spy(n_samples=2)}, attr, tiny, x[:1], method=cam, layers=["features.2"])
    assert seen["maps"].shape == (2, 10, 12)
    np.testing.assert_allclose(seen["maps"][0], seen["sample"].cam, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen["maps"][1], cam(tiny, x[1:], 1, layer="features.2").upsampled[0], rtol=1e-5, atol=1e-6)


# --- end to end -------------------------------------------------------------------------------------


@pytest.mark.slow  # end to end: run.py in a subprocess
def test_run_with_the_four_metrics_writes_their_columns_and_the_road_curve(tmp_path, image_cache):
    import json

    import pandas as pd

    from conftest import ok, run_cli

    # deletion too: a summary ranked only by the new columns is the summary owner's to add
    ok(run_cli(["image=coffee", "model=timm", "model.arch=resnet18", "model.weights=null",
                "model.preprocess.input_size=48", "method=gradcam", "layer=layer4",
                "metrics=[road,confidence_change,infidelity,max_sensitivity,deletion]", "metrics.deletion.steps=2",
                "metrics.infidelity.n_perturbations=8", "metrics.max_sensitivity.n_samples=3",
                "metrics.road.percentages=[20,50,80]", "metrics.confidence_change.space=pixel"],
               tmp_path / "run", image_cache))
    row = pd.read_csv(tmp_path / "run" / "manifest.csv").iloc[0]
    assert row.status == "ok"
    assert set(json.loads(row.metric_params)) == {"road", "confidence_change", "infidelity", "max_sensitivity", "deletion"}
    curve = pd.read_csv(tmp_path / "run" / row.file_csv_road_curve)
    assert list(curve.columns) == ["percentage", "morf", "lerf"] and list(curve.percentage) == [20, 50, 80]
    assert row.road_morf == pytest.approx(curve.morf.mean(), rel=1e-6)
    assert row.road_lerf == pytest.approx(curve.lerf.mean(), rel=1e-6)
    assert row.confidence_image == pytest.approx(row.target_prob, rel=1e-4)  # Y is the model's p(target | x)
    assert 0 <= row.average_drop <= 100 and row.increase_in_confidence in (0, 100)
    assert row.average_drop == pytest.approx(max(0.0, -row.confidence_change), abs=1e-9)
    assert row.infidelity >= 0 and row.max_sensitivity > 0


@pytest.mark.slow  # a peer check: imports Quantus
def test_imputation_agrees_with_quantus_noisy_linear_imputation():
    perturb = pytest.importorskip("quantus.functions.perturb_func")
    rng = np.random.default_rng(4)
    image = rng.normal(size=(3, 9, 11))
    removed = rng.random((9, 11)) < 0.5
    theirs = perturb.noisy_linear_imputation(image, np.flatnonzero(removed), noise=0.0)
    np.testing.assert_allclose(impute(image, removed, noise=0.0), theirs, rtol=0, atol=1e-12)
