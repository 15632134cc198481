"""The benchmark's report on hand-made rows: the targets come from the thresholds table, and the
lines keep the wording and verdicts the benchmark has always printed (no peers needed)."""
from __future__ import annotations

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
