"""Images/s of the classic four and of Grad-CAM alone through ``engine.compute_batch`` at several
batch sizes: the measurement behind the runner's default ``batch_size`` (docs/performance.md).

    python -m benchmarks.batch_sizes [--n 64] [--sizes 1,4,8,16,32]

Every size runs over the same images twice, the order of the sizes rotated between the two rounds,
after one warm-up call per size, so the machine's drift falls on all sizes alike.
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.dataset import cnnviz_methods, default_setup, engine_rows
from benchmarks.settings import CLASSIC4


def images_per_s(n: int, sizes: tuple[int, ...], names, setup) -> dict[int, float]:
    methods, layers = cnnviz_methods(names, setup)
    x, t = setup.x, setup.targets
    for b in sizes:
        engine_rows(methods, setup, x[:b], t[:b], layers)
    total = dict.fromkeys(sizes, 0.0)
    for rep in range(2):
        for b in sizes[rep % len(sizes):] + sizes[:rep % len(sizes)]:
            t0 = time.perf_counter()
            for lo in range(0, n, b):
                engine_rows(methods, setup, x[lo:lo + b], t[lo:lo + b], layers)
            total[b] += time.perf_counter() - t0
    return {b: 2 * n / total[b] for b in sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--sizes", default="1,4,8,16,32")
    args = ap.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    setup = default_setup(args.n, batch_size=max(sizes))
    print(f"{args.n} images, efficientnet_lite0 @ {setup.layer}, {torch.get_num_threads()} threads")
    for label, names in (("classic four", CLASSIC4), ("Grad-CAM", ["gradcam"])):
        for b, rate in images_per_s(args.n, sizes, names, setup).items():
            print(f"{label:<13} batch {b:>3}: {rate:7.2f} images/s", flush=True)


if __name__ == "__main__":
    main()
