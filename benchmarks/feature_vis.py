"""Class visualisations judged by a number adversarial texture cannot game (issue 26), next to lucent.

    python -m benchmarks.feature_vis [--targets 130 11] [--steps N] [--lucent-steps 256] [--views 32] [--seeds 3] [--settings classic fft]

Each setting makes one image per target on efficientnet_lite0 (embedded weights, 224 px, mean = std =
0.5) in its setting's number of Adam steps (cnnviz: ``--steps``, by default the class model's own; lucent:
``--lucent-steps``, 256), seeds 0..``seeds``-1, then scores it on ``views`` random views the optimiser
never used: a random resized crop (50-90 % of the area, aspect 3/4..4/3), a rotation in ±15°, a
horizontal flip half the time, and brightness / contrast / saturation factors in 0.8..1.2 (one seeded
draw list, the same views for every setting). Per setting and target it prints the time, p(target)
averaged over the views, the median rank of the target among the 1000 classes, and the same two numbers
from a different network (efficientnet_lite2, its own 260 px input, embedded weights): transferability.
With several seeds each number is the mean over the images, ± their standard deviation; one image's
score moves a lot with the seed, so compare settings over several.

Settings: ``classic`` (cnnviz, parametrization=pixel: Simonyan et al.'s setting as ``class_model`` runs it,
30 steps from the mean colour), ``fft`` (cnnviz's ``class_model`` defaults: decorrelated Fourier image,
sigmoid, its transforms), ``lucent`` (torch-lucent 0.1.8's ``render_vis``: ``param.image(224, fft=True, decorrelate=True)``, its
``standard_transforms`` followed by the model's normalisation, the logit as objective; skipped with a
note when lucent is not importable: ``pip install torch-lucent decorator kornia ipython``). The rows run
one after another in this process, on the same threads, so their times are comparable: the last line
compares the time per step of cnnviz's default and lucent.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cnnviz import get_method  # noqa: E402
from cnnviz.models.loaders import efficientnet_lite0, efficientnet_lite2  # noqa: E402

SIZE, TRANSFER_SIZE = 224, 260
HALF = [0.5] * 3
CLASSIC = {"parametrization": "pixel"}


def views(n: int, seed: int = 1234) -> list[dict]:
    """``n`` seeded view parameters (crop box as fractions, angle, flip, colour factors)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        area, aspect = rng.uniform(0.5, 0.9), math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        h, w = min(1.0, math.sqrt(area / aspect)), min(1.0, math.sqrt(area * aspect))
        out.append({"top": rng.uniform(0, 1 - h), "left": rng.uniform(0, 1 - w), "h": h, "w": w,
                    "angle": rng.uniform(-15, 15), "flip": bool(rng.random() < 0.5),
                    "brightness": rng.uniform(0.8, 1.2), "contrast": rng.uniform(0.8, 1.2),
                    "saturation": rng.uniform(0.8, 1.2)})
    return out


def view(pixels: torch.Tensor, v: dict, size: int) -> torch.Tensor:
    """One view of ``pixels`` ``(1, 3, H, W)`` in [0, 1], resized to ``size``."""
    H, W = pixels.shape[-2:]
    top, left, h, w = int(v["top"] * H), int(v["left"] * W), max(1, int(v["h"] * H)), max(1, int(v["w"] * W))
    out = TF.resized_crop(pixels, top, left, h, w, [size, size], antialias=True)
    out = TF.rotate(out, v["angle"], interpolation=TF.InterpolationMode.BILINEAR, fill=[0.5, 0.5, 0.5])
    if v["flip"]:
        out = TF.hflip(out)
    out = TF.adjust_brightness(out, v["brightness"])
    out = TF.adjust_contrast(out, v["contrast"])
    return TF.adjust_saturation(out, v["saturation"]).clamp(0, 1)


@torch.no_grad()
def held_out(model: torch.nn.Module, pixels: torch.Tensor, target: int, vs: list[dict], size: int) -> tuple[float, float]:
    """p(target) averaged over the views and the target's median rank (0: top-1). The model is scored
    in eval mode (a model left in train mode would normalise by the views' own batch statistics) and
    left in the mode it came in."""
    batch = torch.cat([view(pixels, v, size) for v in vs])
    was_training = model.training
    try:
        with torch.no_grad():
            probs = model.eval()((batch - 0.5) / 0.5).softmax(-1)
    finally:
        model.train(was_training)
    ranks = (probs > probs[:, target:target + 1]).sum(1).float()
    return float(probs[:, target].mean()), float(ranks.median())


def cnnviz_image(model, target: int, steps: Optional[int], setting: dict, seed: int = 0) -> tuple[torch.Tensor, int]:
    """The class model's image (pixels) and the number of steps it took (None: the setting's own)."""
    m = get_method("class_model")(input_mean=HALF, input_std=HALF, steps=steps, seed=seed, **setting)
    attr = m(model, torch.zeros(1, 3, SIZE, SIZE), target)
    return torch.from_numpy(attr.values).float() * 0.5 + 0.5, m.steps


def lucent_image(model, target: int, steps: int, seed: int = 0) -> torch.Tensor:
    from lucent.optvis import objectives, param, render, transform

    torch.manual_seed(seed)  # lucent's start
    np.random.seed(seed)  # lucent's transforms draw from numpy's global generator
    normalise = lambda x: (x - 0.5) / 0.5  # noqa: E731
    images = render.render_vis(
        model, objectives.channel("classifier", target), lambda: param.image(SIZE, fft=True, decorrelate=True),
        transforms=transform.standard_transforms + [normalise], thresholds=(steps,), preprocess=False,
        show_image=False, progress=False)
    return torch.from_numpy(np.asarray(images[-1])).permute(0, 3, 1, 2).float()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, nargs="+", default=[130])
    ap.add_argument("--steps", type=int, default=None, help="cnnviz's steps (default: class_model's own)")
    ap.add_argument("--lucent-steps", type=int, default=256)
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=1, help="images per setting and target (seeds 0..n-1): mean ± sd")
    ap.add_argument("--lr", type=float, default=None, help="cnnviz fft's Adam learning rate (default: class_model's; lucent keeps its 0.05)")
    ap.add_argument("--settings", nargs="+", default=["classic", "fft", "lucent"], choices=["classic", "fft", "lucent"])
    ap.add_argument("--save", type=Path, default=None, help="a folder for the images (PNG)")
    args = ap.parse_args(argv)

    model = efficientnet_lite0().module.eval()
    other = efficientnet_lite2().module.eval()
    for p in (*model.parameters(), *other.parameters()):
        p.requires_grad_(False)
    vs = views(args.views)
    print(f"efficientnet_lite0, {args.views} held-out views; transfer: efficientnet_lite2; "
          f"{torch.get_num_threads()} threads")
    print(f"{'setting':8} {'target':>6} {'steps':>5} {'time s':>7} {'p(target)':>11} {'rank':>9} {'lite2 p':>11} {'rank':>9}")
    times: dict[str, float] = {}
    steps_run: dict[str, int] = {}
    for name in args.settings:
        for target in args.targets:
            scores, took = [], 0.0
            try:
                for seed in range(args.seeds):
                    start = time.perf_counter()
                    if name == "lucent":
                        pixels, steps = lucent_image(model, target, args.lucent_steps, seed), args.lucent_steps
                    else:
                        fft = {} if args.lr is None else {"lr": args.lr}
                        pixels, steps = cnnviz_image(model, target, args.steps, fft if name == "fft" else CLASSIC, seed)
                    took += time.perf_counter() - start
                    steps_run[name] = steps_run.get(name, 0) + steps
                    resized = F.interpolate(pixels, size=(TRANSFER_SIZE,) * 2, mode="bilinear", align_corners=False)
                    scores.append((*held_out(model, pixels, target, vs, SIZE),
                                   *held_out(other, resized, target, vs, TRANSFER_SIZE)))
                    if args.save:
                        from PIL import Image

                        args.save.mkdir(parents=True, exist_ok=True)
                        Image.fromarray((pixels[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
                            args.save / f"{name}_{target}_seed{seed}.png")
            except ImportError as e:
                print(f"{name:8} skipped: {e}")
                break
            times[name] = times.get(name, 0.0) + took
            a = np.asarray(scores)
            cell = lambda j, f: f"{a[:, j].mean():{f}}" + (f"±{a[:, j].std():.2f}" if len(a) > 1 else "")  # noqa: E731
            print(f"{name:8} {target:6d} {steps:5d} {took / len(a):7.1f} {cell(0, '.3f'):>11} {cell(1, '.0f'):>9} "
                  f"{cell(2, '.3f'):>11} {cell(3, '.0f'):>9}", flush=True)
    if "fft" in times and "lucent" in times:
        per_step = {k: times[k] / steps_run[k] for k in ("fft", "lucent")}
        print(f"time per step: cnnviz fft {1e3 * per_step['fft']:.1f} ms, lucent {1e3 * per_step['lucent']:.1f} ms; "
              f"ratio cnnviz / lucent {per_step['fft'] / per_step['lucent']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
