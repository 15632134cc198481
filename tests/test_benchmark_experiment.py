"""``python run.py experiment=benchmark``: every technique that explains a classifier's class on an
image, on the ground-truth benchmark, beside the random-map baseline; and the baseline itself."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cnnviz.methods import get_method, list_methods
from cnnviz.methods.optimization import OptimizationMethod

from conftest import ROOT, TinyCNN, ok, run_cli

#: registered techniques the benchmark leaves out, and why (conf/experiment/benchmark.yaml says the same)
LEFT_OUT = {
    "layer_activation_guided": "explains a layer's activation, not a class",
    "class_segmentation": "gives regions of a segmentation model, not a map",
    "weakly_supervised_segmentation": "gives a segmentation mask, not a map",
    "drise": "explains a detector's detections",
}


def _benchmark_methods() -> list[str]:
    defaults = yaml.safe_load((ROOT / "conf" / "experiment" / "benchmark.yaml").read_text())["defaults"]
    return next(d["override /method"] for d in defaults if isinstance(d, dict) and "override /method" in d)


def test_the_benchmark_runs_every_technique_that_explains_a_class_on_an_image():
    listed = _benchmark_methods()
    assert len(listed) == len(set(listed))
    applies = {n for n in list_methods()
               if get_method(n).uses_target and get_method(n).model_family is None
               and not issubclass(get_method(n), OptimizationMethod) and n not in LEFT_OUT}
    assert set(listed) == applies, f"missing: {sorted(applies - set(listed))}, extra: {sorted(set(listed) - applies)}"
    assert listed[0] == "random_baseline"  # the control comes first in the table's inputs


def test_the_random_baseline_is_uniform_seeded_by_image_and_the_same_in_a_batch():
    model = TinyCNN().eval()
    torch.manual_seed(0)
    x = torch.randn(3, 3, 16, 16)
    method = get_method("random_baseline")(seed=0)
    batch = method(model, x, [0, 1, 2]).values
    alone = np.concatenate([method(model, x[i:i + 1], [i]).values for i in range(3)])
    np.testing.assert_array_equal(batch, alone)  # an image's map does not depend on its batch
    assert batch.shape == (3, 3, 16, 16) and (batch >= 0).all() and (batch < 1).all()
    np.testing.assert_array_equal(batch[:, 0], batch[:, 2])  # one draw per pixel, every channel
    assert not np.array_equal(batch[0], batch[1])  # another image, another draw
    assert not np.array_equal(get_method("random_baseline")(seed=1)(model, x[:1], [0]).values, batch[:1])
    flat = batch[:, 0].ravel()
    # uniform on [0, 1): mean 1/2 and variance 1/12, within 5 standard errors over 768 draws
    assert abs(flat.mean() - 0.5) < 5 * np.sqrt(1 / 12 / flat.size)
    assert abs(flat.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / flat.size)


def test_the_random_baselines_pointing_game_hits_as_often_as_the_object_is_large():
    """A uniform argmax lands on the object with probability |object| / |image|: over 2000 images
    the hit rate is within 4 binomial standard errors of the area share."""
    from cnnviz.metrics.pointing_game import pointing_game

    model = TinyCNN().eval()
    mask = np.zeros((16, 16), bool)
    mask[2:8, 3:13] = True  # 60 of 256 pixels
    method = get_method("random_baseline")(seed=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 3, 16, 16, generator=g)
    maps = method(model, x, [0] * len(x)).values[:, 0]
    hits = np.mean([pointing_game(m, mask, tolerance=0) for m in maps])
    p = mask.mean()
    assert abs(hits - p) < 4 * np.sqrt(p * (1 - p) / len(x))


@pytest.mark.slow
def test_experiment_benchmark_ranks_the_techniques_against_the_random_baseline(image_cache, tmp_path):
    """End to end on the trained benchmark CNN (trained once per test session, cached), with fewer
    images and techniques than the default; every metric of the benchmark fills its columns, the
    table is printed, and Grad-CAM finds the object far more often than the random map."""
    run = tmp_path / "run"
    out = ok(run_cli(["experiment=benchmark", "image.benchmark.limit=8",
                      "method=[random_baseline,gradcam,guided_backprop,vanilla_backprop]"], run, image_cache,
                     timeout=900))
    frame = pd.read_csv(run / "manifest.csv")
    assert len(frame) == 8 * 4 and (frame["status"] == "ok").all(), frame["error"].dropna().tolist()
    assert frame["target"].tolist() == [i % 4 for i in range(8) for _ in range(4)]
    for column in ("pointing_game", "relevance_mass", "relevance_rank", "deletion_auc", "insertion_auc",
                   "road_morf", "average_drop", "sanity_spearman", "data_sanity_spearman"):
        assert frame[column].notna().all(), column
    assert "ranked by" in out.stdout and "random_baseline" in out.stdout
    table = pd.read_csv(run / "summary.csv").set_index("method")
    assert table.loc["gradcam", "pointing_game_mean"] >= table.loc["random_baseline", "pointing_game_mean"] + 0.4
    assert table.loc["gradcam", "relevance_mass_mean"] > 2 * table.loc["random_baseline", "relevance_mass_mean"]
    # the random map does not depend on the model at all: randomizing the model leaves it as it was
    assert table.loc["random_baseline", "sanity_spearman_mean"] == pytest.approx(1.0)
    assert (run / "summary.html").is_file()
