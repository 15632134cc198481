"""The benchmark's report on hand-made rows: the targets come from the thresholds table, and the
lines keep the wording and verdicts the benchmark has always printed (no peers needed)."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not of the installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import Row  # noqa: E402
from benchmarks.report import table, targets  # noqa: E402
from benchmarks.thresholds import THRESHOLDS, Threshold  # noqa: E402


def bench(rows):
    return SimpleNamespace(rows=rows, outputs={})


def test_a_threshold_holds_in_its_direction():
    assert Threshold("a", 0.6).met(0.6) and not Threshold("a", 0.6).met(0.61)
    assert Threshold("b", 20, at_most=False).met(20) and not Threshold("b", 20, at_most=False).met(19.9)


def test_targets_print_the_limits_of_the_table_with_met_and_missed():
    floor = Row("m", "floor (fwd+bwd to input)", "torch", "floor", ms=100.0, runs=2, times=(100.0, 100.0))
    rows = [floor,
            Row("m", "gradcam @l", "cnnviz", "gradcam", ms=50.0, runs=2, times=(50.0, 50.0)),
            Row("m", "layercam @l", "cnnviz", "layercam", ms=70.0, runs=2, times=(70.0, 70.0)),
            Row("m", "vanilla_backprop", "cnnviz", "vanilla_backprop", ms=100.0, runs=2, times=(100.0, 100.0)),
            Row("m", "gradcam @16 convs, one compute", "cnnviz", "layers16", ms=120.0),
            Row("m", "GradCAM @16 convs, one call per layer", "pytorch-grad-cam", "layers16", ms=3600.0)]
    lines = targets(bench(rows))
    assert lines == [
        "MISSED m: gradient CAMs <= 0.6 x floor: worst 0.70 (gradcam 0.50, layercam 0.70)",
        "MET    m: vanilla/guided/deconvnet/grad_times_image <= 1.1 x floor: worst 1.00 (vanilla_backprop 1.00)",
        "MET    m: 16-layer Grad-CAM <= 1.3 x floor: 1.20",
        "MET    m: 16-layer Grad-CAM >= 20x faster than the per-layer pytorch-grad-cam loop: 30.0x",
    ]
    assert THRESHOLDS["cams_x_floor"].limit == 0.6


def test_the_table_compares_cnnviz_with_the_best_peer_of_its_group():
    rows = [Row("m", "floor", "torch", "floor", ms=10.0, times=(10.0,)),
            Row("m", "gradcam @l", "cnnviz", "gradcam", ms=5.0, runs=2),
            Row("m", "GradCAM @l", "torchcam", "gradcam", ms=8.0, runs=2),
            Row("m", "LayerGradCam @l", "captum", "gradcam", ms=4.0, runs=2)]
    line = next(l for l in table(rows).splitlines() if "cnnviz" in l)
    assert "1.250" in line and "0.50" in line  # 5 / 4 (captum, the fastest peer); 5 / 10 (the floor)


# ---------------------------------------------------------------- the dataset section (issue 23)

import importlib.util  # noqa: E402
import subprocess  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import dataset  # noqa: E402


def _has(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


def tiny_setup(n=4, size=16, batch_size=2):
    """conv -> ReLU -> conv -> GAP -> linear on seeded weights: a network whose Grad-CAM and
    deletion / insertion curves every library computes in milliseconds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    images = dataset.dataset_images(n, size=size)
    x = dataset.to_input(images, [0.5] * 3, [0.5] * 3)
    return dataset.Setup(model=model, layer="2", mean=[0.5] * 3, std=[0.5] * 3, x=x, targets=[0, 1, 2, 3][:n],
                         batch_size=batch_size)


def test_dataset_images_are_deterministic_distinct_crops():
    a, b = dataset.dataset_images(6, size=32), dataset.dataset_images(6, size=32)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert len({im.tobytes() for im in a}) == 6


def test_the_batch_size_is_the_runners_default_else_16(tmp_path):
    (tmp_path / "config.yaml").write_text("defaults:\n  - _self_\nbatch_size: 8\n")
    assert dataset.runner_batch_size(tmp_path / "config.yaml") == 8
    (tmp_path / "config.yaml").write_text("defaults:\n  - _self_\nseed: 0\n")
    assert dataset.runner_batch_size(tmp_path / "config.yaml") == 16


def test_the_section_prints_four_ratio_lines_with_met_and_missed():
    res = {"classic4": {"batched_s": 10.0, "loop_s": 16.0, "n": 256, "batch_size": 16, "max_diff": 0.0},
           "gradcam": {"n": 256, "cnnviz_s": 4.0, "pytorch-grad-cam_s": 10.0, "torchcam_s": 6.0,
                       "pytorch-grad-cam_corr": 0.999, "torchcam_corr": 0.9995, "torchcam_mode": "batch"},
           "perturbation": {"n": 64, "steps": 49, "cnnviz_s": 2.0, "quantus_s": 9.0, "curve_diff": 1e-6,
                            "auc_diff": 1e-5, "tol": 1e-4, "api": "Metric.batch"},
           "process": {"n": 256, "wall_s": 11.0, "load_s": 1.0, "compute_s": 9.0, "overhead": 1.1}}
    lines = [l for l in dataset.target_lines(res) if l.startswith(("MET", "MISSED"))]
    assert len(lines) == 4  # classic four, Grad-CAM (both peers), deletion + insertion, whole process
    verdicts = [l.split()[0] for l in lines]
    assert verdicts == ["MET", "MISSED", "MISSED", "MET"]  # Grad-CAM: 2.5x one peer, 1.5x the other
    assert "1.60x" in lines[0] and "2.50x" in lines[1] and "1.50x" in lines[1] and "4.50x" in lines[2]
    assert "1.100" in lines[3]
    assert dataset.THRESHOLDS["dataset_classic4_x_loop"].limit == 1.5


def test_classic_four_batched_equals_the_one_image_loop_on_a_tiny_model():
    res = dataset.classic4(tiny_setup())
    assert res["batched_s"] > 0 and res["loop_s"] > 0
    assert res["max_diff"] < 1e-5


@pytest.mark.skipif(not _has("pytorch_grad_cam", "torchcam"), reason="needs the [bench] extra")
def test_gradcam_agrees_with_pytorch_grad_cam_and_torchcam_on_a_tiny_model():
    res = dataset.gradcam_peers(tiny_setup())
    assert res["pytorch-grad-cam_corr"] > 0.99 and res["torchcam_corr"] > 0.99
    assert res["torchcam_mode"] in ("batch", "loop")


@pytest.mark.skipif(not _has("quantus"), reason="needs quantus (pip install quantus)")
def test_deletion_and_insertion_equal_quantus_pixel_flipping_on_a_tiny_model():
    had = hasattr(np, "trapz")
    setup = tiny_setup(size=16)
    maps = dataset.gradcam_maps(setup)
    res = dataset.perturbation_vs_quantus(setup, maps, steps=4)
    assert res["curve_diff"] < res["tol"] and res["auc_diff"] < res["tol"] * 4
    assert hasattr(np, "trapz") == had  # the numpy patch is undone


@pytest.mark.slow
def test_the_dataset_section_runs_end_to_end_in_a_tiny_configuration():
    pytest.importorskip("quantus")
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("torchcam")
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--items", "dataset", "--dataset-images", "4",
                          "--dataset-maps", "2", "--dataset-steps", "16"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [l.strip() for l in out.stdout.splitlines() if l.strip().startswith(("MET", "MISSED"))]
    assert len(lines) == 4, out.stdout
    assert [l.split()[1] for l in lines] == ["dataset:"] * 4


# --- the feature-visualisation scorer (benchmarks/feature_vis.py) ------------------------------------

def test_the_held_out_views_are_seeded_and_an_identity_view_is_the_image_itself():
    import torch

    from benchmarks.feature_vis import held_out, view, views

    assert views(5) == views(5) and views(5) != views(5, seed=2)
    for v in views(50):
        assert 0.5 - 1e-9 <= v["h"] * v["w"] <= 0.9 + 1e-9 or min(v["h"], v["w"]) == 1.0
        assert v["top"] + v["h"] <= 1 + 1e-9 and v["left"] + v["w"] <= 1 + 1e-9 and abs(v["angle"]) <= 15
    pixels = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    identity = {"top": 0.0, "left": 0.0, "h": 1.0, "w": 1.0, "angle": 0.0, "flip": False,
                "brightness": 1.0, "contrast": 1.0, "saturation": 1.0}
    assert torch.allclose(view(pixels, identity, 16), pixels, atol=1e-6)
    assert torch.allclose(view(pixels, {**identity, "flip": True}, 16), pixels.flip(-1), atol=1e-6)

    class Fixed(torch.nn.Module):  # class 2 wins on every view, class 0 comes second
        def forward(self, x):
            return torch.tensor([[1.0, 0.0, 3.0]]).expand(x.shape[0], 3)

    p, rank = held_out(Fixed(), pixels, 0, views(4), 16)
    assert rank == 1 and abs(p - math.exp(1) / (math.exp(1) + 1 + math.exp(3))) < 1e-6

    # a model handed over in train mode is scored as in eval mode (BatchNorm's running statistics, not
    # the views' own) and handed back in train mode
    torch.manual_seed(0)
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4))
    bn[0].running_mean.fill_(0.3)
    bn[0].running_var.fill_(2.0)
    want = held_out(bn.eval(), pixels, 1, views(4), 16)
    assert held_out(bn.train(), pixels, 1, views(4), 16) == want and bn.training and bn[0].training
