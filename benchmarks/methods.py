"""Time every technique on a model next to one plain forward+backward pass, in one run.

    python -m benchmarks.methods [--model efficientnet_lite0|vgg19] [--repeats 5] [--threads 2]
                                  [--layers bn2] [--methods gradcam scorecam ...] [--space layer|input]

Prints one table: technique, median ms, ratio to the floor (forward + backward of the target logit
down to the input), measured side by side in this run.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cnnviz import get_method, list_methods  # noqa: E402
from cnnviz.engine import compute  # noqa: E402
from benchmarks.suites import runner_speed  # noqa: E402
from cnnviz.models.loaders import efficientnet_lite0, torchvision_model  # noqa: E402

MODELS = {  # name -> (loader, default layer, normalisation)
    "efficientnet_lite0": (efficientnet_lite0, "bn2", [0.5] * 3, [0.5] * 3),
    "vgg19": (lambda: torchvision_model("vgg19", None), "features.35", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}
SLOW = {"scorecam", "occlusion"}  # one timed repeat


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def floor(model, x, target):
    model.eval()
    xi = x.clone().requires_grad_(True)
    torch.autograd.grad(model(xi)[0, target], xi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", choices=sorted(MODELS), default="efficientnet_lite0")
    ap.add_argument("--layers", nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--space", choices=["layer", "input"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load, default_layer, mean, std = MODELS[args.model]
    layers = args.layers or [default_layer]
    model = load().module.eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    target = 243
    names = args.methods or [n for n in list_methods() if args.space in (None, get_method(n).map_space)]
    base = median_ms(lambda: floor(model, x, target), args.repeats)
    speed = runner_speed(args.model)  # the accelerations run.py uses (the library API has them off)
    print(f"{args.model}, 1x3x224x224, {args.threads} threads, layers {layers}, median of {args.repeats}")
    print(f"{'technique':<24}{'ms':>10}{'x floor':>10}")
    print(f"{'floor (fwd+bwd)':<24}{base:>10.1f}{1.0:>10.2f}")
    for name in names:
        cls = get_method(name)
        fields = {f.name for f in dataclasses.fields(cls)}
        method = cls(**{k: v for k, v in (("input_mean", mean), ("input_std", std)) if k in fields})
        reps = 1 if name in SLOW else args.repeats
        try:
            ms = median_ms(lambda: compute(method, model, x, target, layers, speed=speed), reps)
        except Exception as e:  # e.g. cam on a model without a GAP -> linear head
            print(f"{name:<24}{'n/a':>10}    {type(e).__name__}: {str(e)[:70]}")
            continue
        print(f"{name:<24}{ms:>10.1f}{ms / base:>10.2f}")


if __name__ == "__main__":
    main()
