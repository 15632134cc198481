"""metrics=sanity_data_randomization (Adebayo et al. 2018 §5): the same technique's map on a copy of the
model trained on shuffled labels, compared by Spearman ρ and SSIM of absolute maps. Float64 cases on
hand-set models whose reference map is known: the same weights (ρ = 1), negated weights (the same
absolute map, the opposite signed one), a reversed ranking (ρ = −1); then the binding of the
reference model and its errors."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TinyCNN, ok, run_cli

from cnnviz import get_method
from cnnviz.core.errors import ConfigError
from cnnviz.metrics import evaluate, get_metric
from cnnviz.metrics.evaluate import bind_references
from cnnviz.metrics.sanity_data_randomization import data_randomization
from cnnviz.metrics.sanity_model_randomization import similarity


class Linear(nn.Module):
    """f(x) = W x over a (1, H, W) input, one class per row of W: the vanilla gradient of class c is
    W_c itself, so the map of a hand-set W is known exactly."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.fc = nn.Linear(weight[0].numel(), weight.shape[0], bias=False).double()
        with torch.no_grad():
            self.fc.weight.copy_(weight.reshape(weight.shape[0], -1))

    def forward(self, x):
        return self.fc(x.flatten(1))


def _measure(model, reference, method, x, target=0, **options):
    metric = get_metric("sanity_data_randomization")(**options).bind(reference)
    attr = method(model, x, target) if not method.needs_layer else method(model, x, target, layer="features.2")
    return evaluate({"sanity_data_randomization": metric}, attr, model, x, method=method,
                    layers=["features.2"] if method.needs_layer else [])


def test_identical_weights_give_rho_and_ssim_one():
    model = TinyCNN().double().eval()
    x = torch.randn(1, 3, 10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for name in ("vanilla_backprop", "gradcam"):
        out = _measure(model, copy.deepcopy(model), get_method(name)(), x, target=2)
        assert out.metrics["data_sanity_spearman"] == pytest.approx(1.0, abs=1e-12), name
        assert out.metrics["data_sanity_ssim"] == pytest.approx(1.0, abs=1e-12), name
        assert not out.warnings, out.warnings


def test_a_reversed_ranking_gives_rho_minus_one_and_the_reference_identity():
    # |W_0| holds the ranks 1..16 (with alternating signs); the reference's |W_0| holds them reversed,
    # so every pixel's rank r becomes 17 - r: Spearman ρ is exactly -1
    ranks = torch.arange(1, 17, dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0] * 8, dtype=torch.float64)
    w = (ranks * signs).reshape(1, 1, 4, 4)
    w_ref = (ranks.flip(0) * signs).reshape(1, 1, 4, 4)
    model, reference = Linear(w), Linear(w_ref)
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    out = _measure(model, reference, get_method("vanilla_backprop")(), x)
    assert out.metrics["data_sanity_spearman"] == pytest.approx(-1.0, abs=1e-12)
    # the reference identity: SSIM of the two analytic maps, as similarity() defines it
    _, ssim = similarity(ranks.reshape(4, 4).numpy(), ranks.flip(0).reshape(4, 4).numpy())
    assert out.metrics["data_sanity_ssim"] == pytest.approx(ssim, abs=1e-12)


class ConvGap(nn.Module):
    """conv -> GAP -> linear, no ReLU: Grad-CAM of class c is Σ_k w_ck A_k / (HW) before its ReLU, so
    negating the head negates the signed map exactly."""

    def __init__(self, head_sign: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Identity(), nn.Identity())
        self.head = nn.Linear(4, 2)
        self.double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
            self.head.weight.mul_(head_sign)
            self.head.bias.mul_(head_sign)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def test_absolute_maps_make_a_sign_flip_the_same_map():
    model, reference = ConvGap(1.0), ConvGap(-1.0)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    method = get_method("gradcam")(relu=False)
    same = _measure(model, reference, method, x, absolute=True)
    flipped = _measure(model, reference, method, x, absolute=False)
    assert same.metrics["data_sanity_spearman"] == pytest.approx(1.0, abs=1e-12)
    assert same.metrics["data_sanity_ssim"] == pytest.approx(1.0, abs=1e-12)
    assert flipped.metrics["data_sanity_spearman"] == pytest.approx(-1.0, abs=1e-12)


def test_the_pure_function_compares_the_map_with_the_reference_models_map():
    maps = {"a": np.array([[1.0, -2.0, 5.0], [3.0, 4.0, -7.0], [0.5, 6.0, 2.0]]),
            "b": np.array([[4.0, 3.0, -1.0], [-2.0, 1.0, 8.0], [6.5, -3.0, 0.0]])}
    out = data_randomization(lambda m: maps[m], "a", "b", absolute=True)
    rho, ssim = similarity(np.abs(maps["a"]), np.abs(maps["b"]))
    assert out == {"spearman": rho, "ssim": ssim}
    assert data_randomization(lambda m: maps[m], "a", "b", original=maps["b"]) == {"spearman": 1.0, "ssim": 1.0}


def test_an_unbound_metric_is_the_rows_warning_and_says_how_to_bind():
    model = TinyCNN().double().eval()
    x = torch.randn(1, 3, 10, 12, dtype=torch.float64)
    method = get_method("vanilla_backprop")()
    metric = get_metric("sanity_data_randomization")()
    out = evaluate({"sanity_data_randomization": metric}, method(model, x, 1), model, x, method=method)
    assert "data_sanity_spearman" not in out.metrics
    assert any("bind(" in w and "metrics.sanity_data_randomization.weights" in w for w in out.warnings), out.warnings


def test_bind_references_loads_each_metrics_weights_and_names_the_key_on_failure():
    reference = TinyCNN(seed=1).eval()
    asked = []
    metrics = {"sanity_data_randomization": get_metric("sanity_data_randomization")(weights="shuffled"),
               "deletion": get_metric("deletion")()}
    bind_references(metrics, lambda w: asked.append(w) or reference)
    assert asked == ["shuffled"]  # deletion needs no reference model
    assert metrics["sanity_data_randomization"].reference is reference
    assert get_metric("sanity_data_randomization").needs_reference_model
    assert not get_metric("deletion").needs_reference_model

    def no_such_weights(w):
        raise ConfigError(f"model.weights for efficientnet_lite0 must be 'embedded' or null, got '{w}'")

    with pytest.raises(ConfigError, match=r"metrics\.sanity_data_randomization\.weights=shuffled.*efficientnet_lite0"):
        bind_references({"sanity_data_randomization": get_metric("sanity_data_randomization")()}, no_such_weights)


def test_a_reference_with_the_models_own_weights_is_refused():
    model = TinyCNN().eval()
    metrics = {"sanity_data_randomization": get_metric("sanity_data_randomization")()}
    with pytest.raises(ConfigError, match=r"metrics\.sanity_data_randomization\.weights=shuffled: .*same weights"):
        bind_references(metrics, lambda w: copy.deepcopy(model), model=model)
    bind_references(metrics, lambda w: TinyCNN(seed=1).eval(), model=model)  # other weights: bound
    assert metrics["sanity_data_randomization"].reference is not None


def test_the_options_are_checked_under_their_config_key():
    with pytest.raises(ConfigError, match=r"metrics\.sanity_data_randomization\.weights"):
        get_metric("sanity_data_randomization")(weights="")


def test_run_py_without_such_weights_is_a_config_error_naming_the_key(tmp_path, image_cache):
    proc = run_cli(["image=coffee", "model=efficientnet_lite0", "method=vanilla_backprop",
                    "metrics=sanity_data_randomization"], tmp_path / "run", image_cache)
    assert proc.returncode != 0
    assert "metrics.sanity_data_randomization.weights" in proc.stdout + proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow  # trains the two benchmark CNNs on first use (about 45 s each)
def test_run_py_measures_data_randomization_on_the_benchmark_cnn(tmp_path, image_cache):
    import pandas as pd

    ok(run_cli(["model=benchmark_cnn", "image=benchmark", "image.benchmark.limit=2", "method=gradcam",
                "metrics=sanity_data_randomization"], tmp_path / "run", image_cache, timeout=600))
    frame = pd.read_csv(tmp_path / "run" / "manifest.csv")
    assert (frame.status == "ok").all()
    assert frame.data_sanity_spearman.between(-1, 1).all() and frame.data_sanity_ssim.between(-1, 1).all()


def test_a_map_that_turns_constant_keeps_no_rank_correlation():
    """A ReLU'd CAM that randomisation blanks ranks nothing: ρ = 0 (not NaN, which would drop the map
    from the means and flatter the technique); two equal constants agree (ρ = 1), two different ones
    are undefined."""
    ramp = np.arange(16, dtype=np.float64).reshape(4, 4)
    assert similarity(ramp, np.zeros((4, 4)))[0] == 0.0
    assert similarity(np.zeros((4, 4)), ramp)[0] == 0.0
    assert similarity(np.ones((4, 4)), np.ones((4, 4)))[0] == 1.0
    assert np.isnan(similarity(np.ones((4, 4)), np.zeros((4, 4)))[0])
