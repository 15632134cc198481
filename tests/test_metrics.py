"""Per-map metrics: deletion / insertion on a model whose output depends only on a known region,
model randomisation, completeness, pointing game, the summary table, config strictness, and small
end-to-end runs (a job, a two-layer multirun, a resume that switches metrics on)."""
from __future__ import annotations

import dataclasses
import json
import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from cnnviz import ConfigError
from cnnviz.app.schema import register_configs
from cnnviz.data.images import box_to_input, preprocess
from cnnviz.metrics import evaluate, get_metric, list_metrics
from cnnviz.metrics.completeness import completeness
from cnnviz.metrics.perturbation import auc, make_substrate, perturbation_curve
from cnnviz.metrics.pointing_game import box_mask, pointing_game
from cnnviz.metrics.sanity_model_randomization import model_randomization
from cnnviz.output.summary import summarize
from conftest import ROOT, TinyCNN, run_cli, tiny_method

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

CONF = ROOT / "conf"
register_configs()
SIGMOID = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731


class RegionModel(nn.Module):
    """Two classes: logit 0 = K · mean of the pixels in rows 2..5, columns 3..6 (all channels),
    logit 1 = 0. So p(class 0) = sigmoid(K · region mean), whatever the other pixels are."""

    K = 4.0
    REGION = (slice(2, 6), slice(3, 7))

    def forward(self, x):
        m = x[:, :, self.REGION[0], self.REGION[1]].mean(dim=(1, 2, 3))
        return torch.stack([self.K * m, torch.zeros_like(m)], dim=1)


def region_maps():
    oracle = np.zeros((8, 8))
    oracle[RegionModel.REGION] = 1.0
    rand = np.random.default_rng(3).random((8, 8))
    return oracle, rand, -oracle


def curve(map_, mode, x=None, **kw):
    x = torch.ones(1, 3, 8, 8) if x is None else x
    return perturbation_curve(RegionModel(), x, map_, 0, mode, substrate=make_substrate(x, "black"), **{"steps": 16, **kw})


# --- deletion / insertion ---------------------------------------------------------------------------


def test_oracle_map_beats_random_and_inverse_maps():
    dele = {name: auc(*curve(m, "deletion")) for name, m in zip(("oracle", "random", "inverse"), region_maps())}
    ins = {name: auc(*curve(m, "insertion")) for name, m in zip(("oracle", "random", "inverse"), region_maps())}
    assert dele["oracle"] < dele["random"] < dele["inverse"]
    assert ins["oracle"] > ins["random"] > ins["inverse"]


def test_curves_are_the_analytic_probabilities():
    # x = 1 everywhere, black substrate = 0: after k of 16 steps (4 pixels each) the oracle has
    # removed min(4k, 16) of the 16 region pixels, so p = sigmoid(K (16 − min(4k, 16)) / 16)
    oracle, rand, _ = region_maps()
    k = np.arange(17)
    fraction, dele = curve(oracle, "deletion")
    assert np.allclose(fraction, k / 16)
    assert np.allclose(dele, SIGMOID(RegionModel.K * (16 - np.minimum(4 * k, 16)) / 16), atol=1e-12)
    _, ins = curve(oracle, "insertion")
    assert np.allclose(ins, SIGMOID(RegionModel.K * np.minimum(4 * k, 16) / 16), atol=1e-12)
    # any map: the curves run between p(x) and p(all substrate) = sigmoid(0)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    p_x = SIGMOID(RegionModel.K * float(x[:, :, 2:6, 3:7].mean()))
    _, d = curve(rand, "deletion", x)
    _, i = curve(rand, "insertion", x)
    assert d[0] == pytest.approx(p_x, abs=1e-12) and d[-1] == pytest.approx(0.5, abs=1e-12)
    assert i[0] == pytest.approx(0.5, abs=1e-12) and i[-1] == pytest.approx(p_x, abs=1e-12)


def test_batching_does_not_change_the_curves():
    _, rand, _ = region_maps()
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for mode in ("deletion", "insertion"):
        ref = curve(rand, mode, x, steps=10, batch_size=1)[1]
        for b in (3, 11, 64):
            assert np.allclose(curve(rand, mode, x, steps=10, batch_size=b)[1], ref, rtol=0, atol=1e-12)


def test_substrates():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    black = make_substrate(x, "black", mean=[0.5] * 3, std=[0.25] * 3)
    assert torch.allclose(black, torch.full_like(x, -2.0))  # (0 − 0.5) / 0.25
    mean = make_substrate(x, "mean")
    assert torch.allclose(mean[0, :, 3, 5], x[0].mean(dim=(1, 2)))
    blur = make_substrate(x, "blur", blur_sigma=2.0)
    assert blur.shape == x.shape and blur.std() < x.std()
    with pytest.raises(ConfigError, match="close matches: blur"):
        make_substrate(x, "blurr")


def test_metric_objects_on_a_cam_write_auc_curve_and_time(tiny_cnn):
    x = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    attr = tiny_method("gradcam")(tiny_cnn, x, 1, layer="features.2")
    metrics = {n: get_metric(n)(steps=6, substrate="mean", batch_size=4) for n in ("deletion", "insertion")}
    out = evaluate(metrics, attr, tiny_cnn, x)
    assert 0 <= out.metrics["deletion_auc"] <= 1 and 0 <= out.metrics["insertion_auc"] <= 1
    assert out.metrics["metrics_ms"] > 0 and attr.metrics == {}  # a new Attribution; the input one is frozen
    table = out.extras["deletion_curve"]
    assert list(table) == ["fraction", "probability"] and len(table["fraction"]) == 7
    assert table["probability"][0] == pytest.approx(float(attr.probabilities[0, 1]), abs=1e-6)
    assert auc(table["fraction"], table["probability"]) == out.metrics["deletion_auc"]


def test_a_failing_metric_is_a_warning_and_the_others_still_run(tiny_cnn):
    x = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    attr = tiny_method("gradcam")(tiny_cnn, x, 1, layer="features.2")
    metrics = {"pointing_game": get_metric("pointing_game")(), "deletion": get_metric("deletion")(steps=3)}
    out = evaluate(metrics, attr, tiny_cnn, x, mask=np.ones((3, 3), bool))  # wrong shape: pointing game fails
    assert any(w.startswith("pointing_game failed: ValueError") for w in out.warnings)
    assert "deletion_auc" in out.metrics and "pointing_game" not in out.metrics


# --- model randomisation ----------------------------------------------------------------------------


def gradient_map(model, x):
    return np.abs(tiny_method("vanilla_backprop")(model, x, 1).values[0]).sum(axis=0)


def edge_map(x):
    """Sobel gradient magnitude of the input's channel mean: a 'saliency map' that ignores the model."""
    g = x[0].mean(dim=0).double().numpy()
    from scipy import ndimage

    return np.hypot(ndimage.sobel(g, 0), ndimage.sobel(g, 1))


def test_randomisation_drops_gradient_correlation_but_not_an_edge_detector():
    model = TinyCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    grad = model_randomization(model, lambda m: gradient_map(m, x), seed=0, curve=True)
    edge = model_randomization(model, lambda m: edge_map(x), seed=0, curve=True)
    assert grad["layers"] == 3 and list(grad["curve"]["layers_randomised"]) == [0, 1, 2, 3]
    assert grad["curve"]["spearman"][0] == 1.0 and grad["spearman"] < 0.5 and grad["ssim"] < 0.5
    assert np.all(edge["curve"]["spearman"] == 1.0) and np.allclose(edge["curve"]["ssim"], 1.0)
    # the caller's model is untouched, and the test is repeatable
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model_randomization(model, lambda m: gradient_map(m, x), seed=0)["spearman"] == grad["spearman"]


def test_sanity_metric_through_evaluate_recomputes_the_technique(tiny_cnn):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    method = tiny_method("gradcam", relu=False)  # a randomised model's ReLU'd map may be all zero
    attr = method(tiny_cnn, x, 1, layer="features.2")
    out = evaluate({"sanity_model_randomization": get_metric("sanity_model_randomization")(curve=True, steps=2)},
                   attr, tiny_cnn, x, method=method, layers=["features.2"])
    assert set(out.extras["sanity_curve"]) == {"layers_randomised", "spearman", "ssim"}
    assert out.extras["sanity_curve"]["spearman"][0] == 1.0  # recomputed on the copy before any change
    assert np.isfinite(out.metrics["sanity_spearman"])
    assert out.metrics["sanity_spearman"] == out.extras["sanity_curve"]["spearman"][-1]


# --- completeness -----------------------------------------------------------------------------------


def test_completeness_of_integrated_gradients_is_its_completeness_gap(tiny_cnn):
    x = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    ig = tiny_method("integrated_gradients", n_steps=64, internal_batch_size=64)
    attr = ig(tiny_cnn, x, 2)
    out = evaluate({"completeness": get_metric("completeness")()}, attr, tiny_cnn, x, method=ig)
    assert out.metrics["completeness_reference"] == pytest.approx(attr.metrics["score_delta"], rel=1e-6)
    assert out.metrics["completeness_sum"] == pytest.approx(float(attr.values.astype(np.float64).sum()), rel=1e-9)
    assert out.metrics["completeness_error"] == pytest.approx(attr.metrics["completeness_gap"], rel=1e-4, abs=1e-7)
    assert out.metrics["completeness_error"] < 0.02  # Σ IG = f(x) − f(x')


def test_completeness_of_lrp_is_its_conservation_gap_and_empty_for_other_methods(tiny_cnn):
    x = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    metric = {"completeness": get_metric("completeness")()}
    lrp = tiny_method("lrp")
    attr = lrp(tiny_cnn, x, 2)
    out = evaluate(metric, attr, tiny_cnn, x, method=lrp)
    assert out.metrics["completeness_error"] == pytest.approx(attr.metrics["conservation_gap"], rel=1e-4, abs=1e-7)
    grad = tiny_method("vanilla_backprop")
    assert set(evaluate(metric, grad(tiny_cnn, x, 2), tiny_cnn, x, method=grad).metrics) == {"metrics_ms"}
    assert completeness(np.array([1.0, 2.0]), 4.0) == {"completeness_sum": 3.0, "completeness_reference": 4.0,
                                                       "completeness_error": 0.25}


# --- pointing game ----------------------------------------------------------------------------------


def test_pointing_game_hits_and_misses_on_hand_made_maps():
    mask = box_mask((20, 30), (10, 5, 20, 10))  # x 10..20, y 5..10
    assert mask.sum() == 10 * 5 and mask[5, 10] and not mask[4, 10] and not mask[5, 20]
    m = np.zeros((20, 30))
    m[7, 15] = 1  # inside
    assert pointing_game(m, mask, tolerance=0) == 1.0
    m = np.zeros((20, 30))
    m[15, 15] = 1  # 6 rows below the box
    assert pointing_game(m, mask, tolerance=0) == 0.0
    assert pointing_game(m, mask, tolerance=5) == 0.0 and pointing_game(m, mask, tolerance=6) == 1.0
    assert pointing_game(np.ones((20, 30)), mask) is None  # a constant map points nowhere


def test_box_maps_through_the_preprocessing_like_the_pixels():
    # a white box on black, through each resize mode: the white pixels of the model's picture lie
    # where box_to_input puts the box (within a pixel of interpolation)
    img = np.zeros((300, 400, 3), np.uint8)
    img[60:200, 150:330] = 255
    for resize in ("center_crop", "stretch", "keep_aspect"):
        pre = SimpleNamespace(input_size=64, resize=resize, crop_pct=0.875, interpolation="nearest",
                              mean=[0.0] * 3, std=[1.0] * 3)
        _, picture = preprocess(Image.fromarray(img), pre)
        ys, xs = np.nonzero(picture[..., 0] > 127)
        x0, y0, x1, y1 = box_to_input((150, 60, 330, 200), (400, 300), pre)
        assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1, resize
        assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1, resize


# --- summary ----------------------------------------------------------------------------------------


def hand_made_manifest() -> pd.DataFrame:
    rows = []
    # (method, layer) -> per-image (deletion, insertion)
    values = {("a", "l1"): [(0.1, 0.9), (0.2, 0.8), (0.3, 0.7)],   # ins − del: 0.8, 0.6, 0.4
              ("a", "l2"): [(0.4, 0.6), (0.4, 0.6), (0.4, 0.6)],   # 0.2 each
              ("b", "l1"): [(0.05, 0.5), (0.05, 0.5), (0.05, 0.5)],  # 0.45: best deletion, weaker insertion
              ("b", "l2"): [(0.9, 0.1), (0.9, 0.1), (0.9, 0.1)]}   # −0.8
    for (method, layer), per_image in values.items():
        for i, (d, ins) in enumerate(per_image):
            rows.append({"image": f"img{i}", "model": "m", "method": method, "layer": layer, "status": "ok",
                         "deletion_auc": d, "insertion_auc": ins, "metrics_ms": 10.0})
    rows.append({"image": "img0", "model": "m", "method": "b", "layer": "l2", "status": "error", "deletion_auc": None})
    return pd.DataFrame(rows)


def test_summary_ranks_methods_and_layers_by_insertion_minus_deletion():
    table = summarize(hand_made_manifest())
    assert table.attrs["ranked_by"] == "insertion_minus_deletion"
    assert list(zip(table.method, table.layer)) == [("a", "l1"), ("b", "l1"), ("a", "l2"), ("b", "l2")]
    assert list(table["rank"]) == [1, 2, 3, 4] and list(table.n) == [3, 3, 3, 3]  # the error row is left out
    first = table.iloc[0]
    assert first.insertion_minus_deletion_mean == pytest.approx(0.6)
    assert first.insertion_minus_deletion_std == pytest.approx(0.2)  # std of 0.8, 0.6, 0.4 (ddof 1)
    assert first.deletion_auc_mean == pytest.approx(0.2) and first.metrics_ms_mean == 10.0
    by = table.set_index(["method", "layer"])
    assert by.loc[("b", "l1"), "rank_deletion_auc"] == 1  # lower deletion is better
    assert by.loc[("a", "l1"), "rank_insertion_auc"] == 1
    only_deletion = summarize(hand_made_manifest().drop(columns=["insertion_auc"]))
    assert only_deletion.attrs["ranked_by"] == "deletion_auc" and only_deletion.iloc[0].method == "b"
    assert summarize(hand_made_manifest().drop(columns=["insertion_auc", "deletion_auc"])).empty


def test_summary_ranks_by_the_first_measured_metric_when_none_of_the_preferred_ones_was_measured():
    frame = hand_made_manifest().drop(columns=["insertion_auc", "deletion_auc"])
    frame["road_morf"] = [0.3, 0.3, 0.3, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.5, 0.5, 0.5, None]  # lower is better
    table = summarize(frame)
    assert table.attrs["ranked_by"] == "road_morf"
    assert list(zip(table.method, table.layer))[0] == ("a", "l2") and list(table["rank"]) == [1, 2, 3, 4]


def test_gallery_caption_shows_the_metrics():
    from cnnviz.output.gallery import caption

    row = hand_made_manifest().iloc[0]
    assert "deletion auc 0.100" in caption(row) and "insertion auc 0.900" in caption(row)


# --- configuration ----------------------------------------------------------------------------------


def compose_cfg(overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_metric_configs_match_the_registry_and_the_options():
    files = {p.stem: p for p in (CONF / "metrics").glob("*.yaml")}
    assert set(files) == set(list_metrics())
    for name, p in files.items():
        assert p.read_text().splitlines()[0] == f"# @package metrics.{name}"
        keys = set(compose_cfg([f"metrics={name}"]).metrics[name] or {})
        assert keys == {f.name for f in dataclasses.fields(get_metric(name))}, name
    assert compose_cfg().metrics == {}  # off by default


def test_unknown_metric_name_or_option_is_a_config_error():
    from cnnviz.app.choices import unknown_choices
    from cnnviz.app.plan import build_metrics

    with pytest.raises(ConfigError, match=r"unknown metric 'delet' \(metrics\); close matches: deletion"):
        build_metrics(OmegaConf.create({"delet": {}}), [0.5] * 3, [0.5] * 3)
    with pytest.raises(ConfigError, match=r"metrics\.deletion\.stepz: unknown option.*close matches: steps"):
        build_metrics(OmegaConf.create({"deletion": {"stepz": 3}}), [0.5] * 3, [0.5] * 3)
    with pytest.raises(ConfigError, match=r"metrics\.insertion\.substrate.*close matches: black"):
        build_metrics(OmegaConf.create({"insertion": {"substrate": "blak"}}), [0.5] * 3, [0.5] * 3)
    problems = unknown_choices(["metrics=[deletion,insertoin]"], CONF)
    assert len(problems) == 1 and "close matches: insertion" in problems[0]
    built = build_metrics(compose_cfg(["experiment=compare"]).metrics, [0.5] * 3, [0.25] * 3)
    assert list(built) == ["deletion", "insertion", "completeness", "pointing_game"]
    assert built["deletion"].input_std == [0.25] * 3  # the model's normalisation, for the black substrate


def test_image_box_must_be_four_ordered_numbers():
    from cnnviz.app.plan import image_box

    assert image_box("coffee", [1, 2, 30, 40]) == (1.0, 2.0, 30.0, 40.0) and image_box("coffee", None) is None
    with pytest.raises(ConfigError, match=r"image\.coffee\.box must be \[x0, y0, x1, y1\]"):
        image_box("coffee", [30, 2, 1, 40])


# --- end to end -------------------------------------------------------------------------------------

FEW = ["metrics.deletion.steps=4", "metrics.insertion.steps=4"]


@pytest.fixture(scope="module")
def metrics_sweep(tmp_path_factory, image_cache):
    """A two-job multirun (layers blocks.5 and bn2) with deletion and insertion, few steps."""
    base = tmp_path_factory.mktemp("metrics_sweep")
    sweep = base / "multirun"
    proc = run_cli(["-m", "image=coffee", "method=gradcam", "layer=blocks.5,bn2", "metrics=[deletion,insertion]", *FEW,
                    "metrics.insertion.batch_size=2"], base / "run", image_cache, multirun_dir=sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


@pytest.fixture(scope="module")
def metrics_run(metrics_sweep):
    """The bn2 job's folder: a run like any other."""
    return next(metrics_sweep.glob("image=coffee,layer=bn2,*"))


@pytest.mark.slow  # end to end: run.py / script processes
def test_run_with_deletion_and_insertion_writes_columns_curves_and_summary(metrics_run):
    row = pd.read_csv(metrics_run / "manifest.csv").iloc[0]
    assert row.status == "ok" and 0 <= row.deletion_auc <= 1 and 0 <= row.insertion_auc <= 1 and row.metrics_ms > 0
    assert set(json.loads(row.metric_params)) == {"deletion", "insertion"}
    for key, unperturbed in (("deletion", 0), ("insertion", -1)):
        table = pd.read_csv(metrics_run / row[f"file_csv_{key}_curve"])
        assert list(table.columns) == ["fraction", "probability"] and len(table) == 5
        assert auc(table.fraction, table.probability) == pytest.approx(row[f"{key}_auc"], abs=1e-6)
        assert table.probability.iloc[unperturbed] == pytest.approx(row.target_prob, abs=1e-4)  # p(x)
        assert (metrics_run / row[f"file_plot_{key}_curve"]).is_file()
    summary = pd.read_csv(metrics_run / "summary.csv")
    assert list(summary.method) == ["gradcam"] and summary["rank"].tolist() == [1]
    assert (metrics_run / "summary.png").is_file()
    assert "deletion auc" in (metrics_run / "index.html").read_text()


@pytest.mark.slow  # end to end: run.py / script processes
def test_resume_computes_metrics_switched_on_later(metrics_run, tmp_path, caplog):
    """Metrics are not part of an item's key: resuming with a metric newly on recomputes the item
    and replaces its row; resuming with a subset of the metrics done computes nothing."""
    import shutil

    from cnnviz.app.runner import run

    folder = tmp_path / "run"
    shutil.copytree(metrics_run, folder)
    first = pd.read_csv(folder / "manifest.csv")
    base = ["image=coffee", "method=gradcam", "resume=true"]
    second = run(compose_cfg([*base, "metrics=[deletion,insertion,pointing_game]", *FEW,
                              "image.coffee.box=[150,50,450,300]"]), folder)
    assert len(second) == 1 and second.pointing_game.iloc[0] in (0.0, 1.0)
    assert second.deletion_auc.iloc[0] == pytest.approx(first.deletion_auc.iloc[0], abs=1e-6)
    with caplog.at_level(logging.INFO, logger="cnnviz"):
        third = run(compose_cfg([*base, "metrics=[deletion]", FEW[0]]), folder)
    assert "1 item(s) already complete" in caplog.text and len(third) == 1


@pytest.mark.slow  # end to end: run.py / script processes
def test_multirun_over_two_layers_writes_the_summary_at_the_sweep_root(metrics_sweep):
    summary = pd.read_csv(metrics_sweep / "summary.csv")
    assert sorted(summary.layer) == ["blocks.5", "bn2"] and sorted(summary["rank"]) == [1, 2]
    merged = pd.read_csv(metrics_sweep / "manifest.csv")
    best = merged.assign(d=merged.insertion_auc - merged.deletion_auc).sort_values("d").iloc[-1]
    assert summary.iloc[0].layer == best.layer
    assert (metrics_sweep / "summary.png").is_file()
