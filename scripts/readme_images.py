"""The README's feature-visualisation strips, made with the default settings on the embedded model.

    python scripts/readme_images.py [--out docs/images] [--filter 5]

Writes three labelled PNG strips:

- ``class_models.png``: class visualisations (``class_model``, defaults) of flamingo (130), goldfinch (11),
  barn spider (73) and espresso (967), above the same with ``parametrization=pixel`` (Simonyan et al.'s
  setting), each captioned with p(target) of the model;
- ``channels.png``: ``filter_visualization`` of channel ``--filter`` at blocks.2, blocks.4 and blocks.6;
- ``inversions.png``: the input (chelsea) and ``inverted_representation`` from blocks.2, blocks.4 and
  blocks.6, each captioned with the relative feature distance reached.

Everything is seeded (seed 0), so a rerun on the same machine gives the same pictures.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cnnviz import get_method  # noqa: E402
from cnnviz.api import Preprocess  # noqa: E402
from cnnviz.data.images import preprocess, read_skimage  # noqa: E402
from cnnviz.models.loaders import efficientnet_lite0  # noqa: E402

HALF = {"input_mean": [0.5] * 3, "input_std": [0.5] * 3}
CLASSES = {130: "flamingo", 11: "goldfinch", 73: "barn spider", 967: "espresso"}
LAYERS = ("blocks.2", "blocks.4", "blocks.6")


def captioned(picture: np.ndarray, text: str, size: int = 160) -> np.ndarray:
    """``picture`` resized to ``size`` with ``text`` on a white band below it."""
    img = Image.fromarray(picture).resize((size, size), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size + 18), "white")
    canvas.paste(img, (0, 0))
    ImageDraw.Draw(canvas).text((4, size + 3), text, fill="black")
    return np.asarray(canvas)


def strip(tiles: list[np.ndarray], gap: int = 4) -> np.ndarray:
    h = max(t.shape[0] for t in tiles)
    pad = np.full((h, gap, 3), 255, np.uint8)
    parts = []
    for t in tiles:
        parts += [np.pad(t, ((0, h - t.shape[0]), (0, 0), (0, 0)), constant_values=255), pad]
    return np.concatenate(parts[:-1], axis=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--filter", type=int, default=5)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = efficientnet_lite0().module.eval()
    grey = torch.zeros(1, 3, 224, 224)

    rows = []
    for setting, label in (({}, "default (fft)"), ({"parametrization": "pixel"}, "pixel (paper)")):
        tiles = []
        for target, name in CLASSES.items():
            attr = get_method("class_model")(**HALF, **setting)(model, grey, target)
            tiles.append(captioned(attr.extras["final"], f"{name} p={attr.metrics['target_prob_after']:.2f} {label}"))
            print(f"class_model {label} {name}: p {attr.metrics['target_prob_after']:.3f}", flush=True)
        rows.append(strip(tiles))
    Image.fromarray(np.concatenate([rows[0], np.full((6, rows[0].shape[1], 3), 255, np.uint8), rows[1]])).save(
        args.out / "class_models.png")

    tiles = []
    for layer in LAYERS:
        attr = get_method("filter_visualization")(**HALF, filter=args.filter)(model, grey, None, layer=layer)
        tiles.append(captioned(attr.extras["final"], f"{layer} channel {args.filter}"))
        print(f"filter_visualization {layer}: activation {attr.metrics['filter_activation_after']:.2f}", flush=True)
    Image.fromarray(strip(tiles)).save(args.out / "channels.png")

    x, _ = preprocess(read_skimage("chelsea")[0], Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3))
    tiles = [captioned((((x[0].permute(1, 2, 0) * 0.5 + 0.5).clamp(0, 1)) * 255).round().byte().numpy(), "input")]
    for layer in LAYERS:
        attr = get_method("inverted_representation")(**HALF)(model, x, None, layer=layer)
        distance = attr.metrics["relative_feature_distance"]
        tiles.append(captioned(attr.extras["final"], f"{layer} distance {distance:.2f}"))
        print(f"inverted_representation {layer}: relative feature distance {distance:.3f}", flush=True)
    Image.fromarray(strip(tiles)).save(args.out / "inversions.png")
    print(f"wrote {args.out}/class_models.png, channels.png, inversions.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
