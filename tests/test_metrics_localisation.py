"""Localisation metrics and the issue-25 fixes of existing metrics: relevance mass and relevance rank
accuracy (Arras et al. 2022) against float64 references on hand-built maps and masks, the pointing
game's 15-pixel tolerance (Zhang et al. 2018), the ``rise`` substrates of deletion / insertion
(Petsiuk et al. 2018: zeros, and RISE's ``gkern(11, 5)`` blur), absolute ranking in the model
randomisation check (Adebayo et al. 2018), and the Grad-CAM++ warning at a pre-activation layer."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import ConfigError, get_method
from cnnviz.metrics import Sample, evaluate, get_metric
from cnnviz.metrics.perturbation import make_substrate, perturbation_curve, rise_kernel
from cnnviz.metrics.pointing_game import box_mask, pointing_game
from cnnviz.metrics.relevance_mass import relevance_mass
from cnnviz.metrics.relevance_rank import relevance_rank
from cnnviz.metrics.sanity_model_randomization import model_randomization
from conftest import tiny_method

#: a signed map with hand-countable positive relevance: 3 + 1 + 2 inside the top-left 2x2, 4 outside
MAP = np.array([[3.0, -1.0, 0.0, 0.0],
                [1.0, 2.0, 0.0, -5.0],
                [0.0, 0.0, 4.0, 0.0],
                [0.0, 0.0, 0.0, 0.0]])
TOP_LEFT = np.zeros((4, 4), bool)
TOP_LEFT[:2, :2] = True


def cam_sample(cam: np.ndarray, mask=None, method: str = "gradcam") -> Sample:
    h, w = cam.shape
    return Sample(method, cam, cam, torch.zeros(1, 3, h, w), 0, lambda b: b, mask=mask)


# --- relevance mass accuracy ------------------------------------------------------------------------


def test_relevance_mass_is_the_share_of_positive_relevance_inside_the_mask():
    assert relevance_mass(MAP, TOP_LEFT) == 6.0 / 10.0  # negatives (-1, -5) count for nothing
    assert relevance_mass(MAP, ~TOP_LEFT) == 4.0 / 10.0
    assert relevance_mass(np.abs(MAP), TOP_LEFT) == 7.0 / 16.0
    # float64 reference on a random signed map and a box
    rng = np.random.default_rng(0)
    m = rng.normal(size=(12, 17))
    mask = box_mask((12, 17), (3, 2, 9, 7))
    pos = np.where(m > 0, m, 0.0)
    assert relevance_mass(m, mask) == pytest.approx(pos[mask].sum() / pos.sum(), rel=1e-15)
    assert relevance_mass(m.astype(np.float32), mask) == pytest.approx(pos[mask].sum() / pos.sum(), rel=1e-6)


def test_relevance_mass_is_undefined_without_positive_relevance_and_checks_its_inputs():
    assert relevance_mass(-np.abs(MAP), TOP_LEFT) is None
    assert relevance_mass(np.zeros((4, 4)), TOP_LEFT) is None
    with pytest.raises(ValueError, match="does not match mask"):
        relevance_mass(MAP, np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="mask is empty"):
        relevance_mass(MAP, np.zeros((4, 4), bool))


# --- relevance rank accuracy ------------------------------------------------------------------------


def test_relevance_rank_counts_the_top_k_pixels_in_the_mask_with_k_its_size():
    # K = 4: the four largest values are 4 (outside), 3, 2, 1 (inside) -> 3 / 4
    assert relevance_rank(MAP, TOP_LEFT) == 0.75
    assert relevance_rank(-MAP, TOP_LEFT) == 0.25  # top 4 of -MAP: 5 (outside), then 1 (inside) and two zeros
    one = np.zeros((4, 4), bool)
    one[2, 2] = True
    assert relevance_rank(MAP, one) == 1.0 and relevance_rank(-MAP, one) == 0.0
    # float64 reference: a map without ties, top-K by a full sort
    rng = np.random.default_rng(1)
    m = rng.normal(size=(12, 17))
    mask = box_mask((12, 17), (3, 2, 9, 7))
    k = int(mask.sum())
    top = np.argsort(-m.ravel(), kind="stable")[:k]
    assert relevance_rank(m, mask) == mask.ravel()[top].sum() / k


def test_relevance_rank_breaks_ties_by_its_seed_and_is_undefined_for_a_constant_map():
    m = np.zeros((6, 6))
    m[0, 0] = 1.0  # one positive pixel, 35 tied zeros
    mask = np.zeros((6, 6), bool)
    mask[0, :4] = True  # K = 4: the positive pixel, then 3 of the 35 zeros
    values = {relevance_rank(m, mask, seed=s) for s in range(40)}
    assert values <= {0.25, 0.5, 0.75, 1.0} and min(values) == 0.25 and len(values) > 1
    assert relevance_rank(m, mask, seed=3) == relevance_rank(m, mask, seed=3)
    assert relevance_rank(np.full((6, 6), 2.0), mask) is None


# --- the metric objects ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, fn", [("relevance_mass", relevance_mass), ("relevance_rank", relevance_rank)])
def test_localisation_metrics_through_evaluate(name, fn, tiny_cnn):
    metric = get_metric(name)()
    assert metric.columns == (name,) and metric.higher_is_better == {name: True}
    assert metric(cam_sample(MAP, TOP_LEFT)).values == {name: fn(MAP, TOP_LEFT)}
    assert metric(cam_sample(MAP)).values == {}  # no object: the column stays empty
    out = metric(cam_sample(np.zeros((4, 4)), TOP_LEFT))
    assert out.values == {} and out.warnings and out.warnings[0].startswith(f"{name}:")
    # an input-space map: abs = Σ_c |g_c|, signed = Σ_c g_c
    g = np.stack([MAP, -MAP, MAP])
    x = torch.zeros(1, 3, 4, 4)
    sample = Sample("vanilla_backprop", g, None, x, 0, lambda b: b, mask=TOP_LEFT)
    assert metric(sample).values[name] == fn(3 * np.abs(MAP), TOP_LEFT)
    assert get_metric(name)(reduce="signed")(sample).values[name] == fn(MAP, TOP_LEFT)
    with pytest.raises(ConfigError, match=rf"metrics\.{name}\.reduce"):
        get_metric(name)(reduce="max")
    # the runner's path: a real CAM, a box mask at input resolution
    xin = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    attr = tiny_method("gradcam", relu=False)(tiny_cnn, xin, 1, layer="features.2")
    mask = box_mask((10, 12), (2, 2, 8, 6))
    got = evaluate({name: metric}, attr, tiny_cnn, xin, mask=mask).metrics[name]
    assert got == fn(attr.upsampled[0].astype(np.float64), mask)


# --- pointing game: the 15-pixel tolerance ----------------------------------------------------------


def test_pointing_game_default_is_the_15_pixel_tolerance_of_zhang_et_al():
    assert get_metric("pointing_game")().tolerance == 15.0
    mask = box_mask((60, 60), (10, 10, 20, 20))  # pixels 10..19
    ys, xs = np.nonzero(mask)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 19, 10, 19)

    def at(y, x):
        m = np.zeros((60, 60))
        m[y, x] = 1.0
        return cam_sample(m, mask)

    game = get_metric("pointing_game")()
    assert game(at(34, 15)).values == {"pointing_game": 1.0}  # 15 rows below the box: on the circle
    assert game(at(35, 15)).values == {"pointing_game": 0.0}  # 16 rows
    assert game(at(19 + 9, 19 + 12)).values == {"pointing_game": 1.0}  # diagonal (9, 12): 15 px
    assert game(at(19 + 10, 19 + 12)).values == {"pointing_game": 0.0}  # (10, 12): 15.6 px
    strict = get_metric("pointing_game")(tolerance=0)
    assert strict(at(19, 19)).values == {"pointing_game": 1.0} and strict(at(20, 19)).values == {"pointing_game": 0.0}
    assert pointing_game(at(34, 15).cam, mask) == 1.0


# --- deletion / insertion: the rise preset ----------------------------------------------------------


def reference_rise_kernel() -> np.ndarray:
    """RISE's ``gkern(11, 5)`` in float64, written out: scipy's 1-D Gaussian (σ = 5, truncated at 4σ =
    20 px, normalised) applied to a centred delta on 11 samples with 'reflect' boundaries, whose
    mirrored tails fold back into the window; the 2-D kernel is the outer product (the filter is separable)."""
    sigma, n, r = 5.0, 11, 20
    d = np.arange(-r, r + 1)
    w = np.exp(-d ** 2 / (2 * sigma ** 2))
    w /= w.sum()

    def reflect(i):  # scipy 'reflect': d c b a | a b c d | d c b a
        period = 2 * n
        i = i % period
        return i if i < n else period - 1 - i

    k1 = np.zeros(n)
    for i in range(n):
        for dj, wj in zip(d, w):
            if reflect(i + dj) == n // 2:
                k1[i] += wj
    return np.outer(k1, k1)


def test_rise_kernel_is_gkern_11_5_normalised():
    k = rise_kernel(torch.float64)
    ref = reference_rise_kernel()
    assert k.shape == (11, 11) and k.dtype == torch.float64
    np.testing.assert_allclose(k.numpy(), ref, rtol=1e-12, atol=0)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(k.numpy(), k.numpy().T)
    np.testing.assert_allclose(k.numpy(), k.numpy()[::-1, ::-1], atol=1e-16)
    # not the truncated Gaussian: the folded tails make it much flatter (RISE's numbers depend on it)
    g = np.exp(-np.arange(-5, 6) ** 2 / 50.0)
    trunc = np.outer(g, g) / np.outer(g, g).sum()
    assert np.abs(ref - trunc).max() > 1e-3 and ref.max() / ref.min() < 1.2 < trunc.max() / trunc.min()


def test_rise_substrates_are_zeros_and_the_zero_padded_gkern_blur():
    x = torch.randn(1, 3, 16, 13, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(make_substrate(x, "zeros"), torch.zeros_like(x))
    blur = make_substrate(x, "rise_blur")
    k = reference_rise_kernel()
    padded = np.pad(x[0].numpy(), ((0, 0), (5, 5), (5, 5)))  # conv2d(padding=5): zeros outside the image
    ref = np.zeros((3, 16, 13))
    for c in range(3):
        for i in range(16):
            for j in range(13):
                ref[c, i, j] = (padded[c, i:i + 11, j:j + 11] * k).sum()
    np.testing.assert_allclose(blur[0].numpy(), ref, rtol=1e-10, atol=1e-12)
    # float32 input: float32 output, same values to float precision; smaller than the kernel still works
    b32 = make_substrate(x.float(), "rise_blur")
    assert b32.dtype == torch.float32 and torch.allclose(b32.double(), blur, atol=1e-5)
    assert make_substrate(x[..., :4, :3], "rise_blur").shape == (1, 3, 4, 3)


class MeanModel(nn.Module):
    """Two logits: 4 · mean of the input, 0. So p(class 0) = sigmoid(4 · mean(x))."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([4 * m, torch.zeros_like(m)], dim=1)


def test_rise_preset_deletes_to_zeros_and_inserts_onto_the_rise_blur():
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(1)) + 0.5
    cam = np.random.default_rng(0).random((12, 12))
    sample = Sample("gradcam", cam, cam, x, 0, MeanModel())
    sig = lambda v: 1 / (1 + math.exp(-4 * v))  # noqa: E731
    dele = get_metric("deletion")(steps=4, substrate="rise")(sample).extras["deletion_curve"]["probability"]
    ins = get_metric("insertion")(steps=4, substrate="rise")(sample).extras["insertion_curve"]["probability"]
    assert dele[-1] == pytest.approx(sig(0.0), abs=1e-12)  # everything deleted: zeros
    assert dele[0] == pytest.approx(sig(float(x.double().mean())), rel=1e-6)
    assert ins[0] == pytest.approx(sig(float(make_substrate(x, "rise_blur").double().mean())), rel=1e-6)
    assert ins[-1] == pytest.approx(dele[0], rel=1e-6)
    # the same curves as the explicit substrates
    for mode, kind, got in (("deletion", "zeros", dele), ("insertion", "rise_blur", ins)):
        _, ref = perturbation_curve(MeanModel(), x, cam, 0, mode, steps=4, substrate=make_substrate(x, kind))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-15)
    # RISE fixes σ = 5 and the 11-px kernel: another blur_sigma is refused, naming the key
    with pytest.raises(ConfigError, match=r"metrics\.insertion\.blur_sigma"):
        get_metric("insertion")(substrate="rise", blur_sigma=3.0)
    assert get_metric("deletion")().substrate == "blur"  # today's default stays


# --- model randomisation: absolute maps -------------------------------------------------------------


def test_model_randomization_ranks_absolute_maps_by_default():
    model = nn.Linear(2, 2)
    a = np.random.default_rng(0).normal(size=(9, 9))
    flipped = lambda m: -a  # noqa: E731  the randomised model's map: the same evidence, opposite sign
    absolute = model_randomization(model, flipped, original=a)
    assert absolute["spearman"] == pytest.approx(1.0) and absolute["ssim"] == pytest.approx(1.0)
    signed = model_randomization(model, flipped, original=a, absolute=False)
    assert signed["spearman"] == pytest.approx(-1.0) and signed["ssim"] < 0.5
    metric = get_metric("sanity_model_randomization")
    assert metric().absolute is True
    sample = Sample("eigencam", a, a, torch.zeros(1, 3, 9, 9), 0, lambda b: b, model=model, explain=flipped)
    assert metric()(sample).values["sanity_spearman"] == pytest.approx(1.0)
    assert metric(absolute=False)(sample).values["sanity_spearman"] == pytest.approx(-1.0)
    curve = metric(curve=True, absolute=True)(sample).extras["sanity_curve"]["spearman"]
    assert np.allclose(curve, 1.0)


# --- Grad-CAM++ at a pre-activation layer -----------------------------------------------------------


class NegativeLayerNet(nn.Module):
    """conv (weight 1, bias -2: activations x - 2 < 0 for x in [0, 1]) -> ReLU -> GAP -> linear with
    weights +1 / -1. At ``conv`` every activation is negative and the class-0 gradient is positive, so
    Grad-CAM++'s positive weights give a negative map, which the ReLU blanks."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(-2.0)
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        # the head reads the pre-ReLU activations too, so class 0's gradient at conv is positive
        a = self.conv(x)
        return self.fc((a + self.act(a)).mean(dim=(2, 3)))


def test_gradcam_plusplus_at_a_pre_activation_layer_says_why_its_map_is_blank():
    x = torch.full((2, 1, 4, 4), 0.5)
    x[1] = 0.25
    cam = get_method("gradcam_plusplus")()
    attr = cam(NegativeLayerNet(), x, 0, layer="conv")
    assert (attr.values == 0).all()
    assert len(attr.warnings) == 1
    w = attr.warnings[0]
    assert "all zero" in w and "negative activations" in w and "after its activation" in w and "relu=false" in w
    assert all(r["warnings"] == attr.warnings for r in attr.per_row)
    signed = get_method("gradcam_plusplus")(relu=False)(NegativeLayerNet(), x, 0, layer="conv")
    assert (signed.values < 0).all() and signed.warnings == ()
    # after the activation the layer has no negative values: the map is not blanked for that reason
    after = cam(NegativeLayerNet(), x, 0, layer="act")
    assert all("negative activations" not in w for w in after.warnings)


# --- end to end -------------------------------------------------------------------------------------


@pytest.mark.slow  # end to end: the runner on the embedded model at 224 px
def test_run_writes_the_localisation_columns_and_runs_the_rise_preset(tmp_path):
    import pandas as pd
    from hydra import compose, initialize_config_dir

    from cnnviz.app.runner import run
    from cnnviz.app.schema import register_configs
    from conftest import ROOT

    register_configs()
    metrics = "metrics=[relevance_mass,relevance_rank,pointing_game,deletion,insertion]"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "image=coffee", "method=gradcam", metrics, "image.coffee.box=[150,50,450,300]",
            "metrics.deletion.substrate=rise", "metrics.insertion.substrate=rise",
            "metrics.deletion.steps=4", "metrics.insertion.steps=4"])
    run(cfg, tmp_path / "run")
    row = pd.read_csv(tmp_path / "run" / "manifest.csv").iloc[0]
    assert row.status == "ok"
    assert 0 <= row.relevance_mass <= 1 and 0 <= row.relevance_rank <= 1
    assert row.pointing_game in (0.0, 1.0) and 0 <= row.deletion_auc <= 1 and 0 <= row.insertion_auc <= 1
    params = json.loads(row.metric_params)
    assert params["deletion"]["substrate"] == params["insertion"]["substrate"] == "rise"
    curve = pd.read_csv(next((tmp_path / "run").glob("*_deletion_curve.csv")))
    assert len(curve) == 5
