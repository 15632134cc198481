"""Time every CAM technique on the embedded model next to one plain forward+backward pass.

    python scripts/bench_cams.py [--repeats 5] [--threads 2] [--layers bn2]

Prints one table: technique, median ms, ratio to the floor (forward + backward of the target logit
down to the input), measured side by side in this run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cnnviz import get_method, list_methods  # noqa: E402
from cnnviz.models import efficientnet_lite0  # noqa: E402


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
    ap.add_argument("--layers", nargs="+", default=["bn2"])
    ap.add_argument("--methods", nargs="+", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = efficientnet_lite0().module.eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    target = 243
    names = args.methods or [n for n in list_methods() if get_method(n).kind == "cam"]
    base = median_ms(lambda: floor(model, x, target), args.repeats)
    print(f"efficientnet_lite0, 1x3x224x224, {args.threads} threads, layers {args.layers}, median of {args.repeats}")
    print(f"{'technique':<22}{'ms':>10}{'x floor':>10}")
    print(f"{'floor (fwd+bwd)':<22}{base:>10.1f}{1.0:>10.2f}")
    for name in names:
        method = get_method(name)()
        reps = 1 if name == "scorecam" else args.repeats
        ms = median_ms(lambda: method.attribute_layers(model, x, target, args.layers), reps)
        print(f"{name:<22}{ms:>10.1f}{ms / base:>10.2f}")


if __name__ == "__main__":
    main()
