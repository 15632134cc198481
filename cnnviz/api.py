"""``explain``: one technique on one model and image, from a notebook or from the runner.

The runner calls the same ``compute`` and ``Explanation.save`` for every item of a sweep, so a
notebook result and a runner result are made by one code path.

Example::

    from cnnviz import explain
    from cnnviz.models.loaders import efficientnet_lite0
    ex = explain(efficientnet_lite0().module, "dog.jpg", method="gradcam", layer="bn2")
    ex.save("out/")   # files + manifest.csv rows, as the runner writes them
    ex.show()         # matplotlib figure
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from .output import render
from .core.attribution import Attribution
from .output.files import atomic_write, npy_bytes, png_bytes, write_png
from .data.images import box_to_original, preprocess, read_image, safe_name, to_rgb
from .output.manifest import Manifest
from .models.loaders import class_name
from .output.writers import extra_files
from .engine import compute
from .methods.base import Method
from .core.registry import get_method
from .methods._segmentation_ops import LabelLegend
from .core.targets import Target


@dataclass(frozen=True)
class RenderOptions:
    """How maps are drawn; checked as the runner's ``render`` config is (a matplotlib colormap name,
    an opacity in [0, 1])."""

    colormap: str = "jet"
    alpha: float = 0.4

    def __post_init__(self):
        from .app.schema import RenderConfig
        from .core.constraints import check_values

        check_values(RenderConfig, {"colormap": self.colormap, "alpha": self.alpha}, "render")


@dataclass(frozen=True)
class Preprocess:
    """Defaults for ``explain``: ImageNet statistics, 224 px centre crop (the runner passes its config)."""

    input_size: int = 224
    resize: str = "center_crop"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)


_INPUTS: dict[Path, tuple[str, str]] = {}
_INPUTS_LOCK = threading.Lock()  # the runner writes the items of one image on several threads


def _write_input(path: Path, picture: np.ndarray) -> str:
    """Write the input picture unless this process already wrote the same picture there (the calls of
    one image share it); its sha256."""
    digest = hashlib.sha256(picture.tobytes() + str(picture.shape).encode()).hexdigest()
    with _INPUTS_LOCK:
        known = _INPUTS.get(path)
        if known is not None and known[0] == digest and path.is_file():
            return known[1]
        sha = write_png(path, picture)
        _INPUTS[path] = (digest, sha)
        return sha


def stem(image: str, method: str, layer: Optional[str], target: Optional[int], with_target: bool) -> str:
    parts = [image, method] + ([layer] if layer else []) + ([f"t{target}"] if with_target else [])
    return "_".join(parts)


@dataclass
class Explanation:
    """The Attributions of one call, with the picture they explain (``(H, W, 3)`` uint8)."""

    image: str
    picture: np.ndarray
    attributions: list[Attribution]
    renders: tuple[str, ...]
    class_names: Sequence[str] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    #: ``"<writer>:<key>"`` specs for files made from ``Attribution.extras`` (``cnnviz.output.writers``)
    writes: tuple[str, ...] = ()
    #: the original image's ``(w, h)`` and the preprocessing that made the picture: a box a technique
    #: returns (``extras["bbox"]``, input pixels) is reported in original pixels; None: in input pixels
    original_size: Optional[tuple[int, int]] = None
    preprocess: Any = None

    def class_name(self, index: Optional[int]) -> str:
        return class_name(self.class_names, index)

    def prediction_columns(self, attr: Attribution) -> dict[str, Any]:
        probs = attr.probabilities[0]
        pred = int(probs.argmax())
        target = attr.target[0] if attr.target else None
        return {
            "target": target, "target_name": self.class_name(target),
            "predicted": pred, "predicted_name": self.class_name(pred), "predicted_prob": float(probs[pred]),
            "target_prob": float(probs[target]) if target is not None else None,
        }

    def write_files(self, attr: Attribution, name: str, out_dir: Path, options: RenderOptions) -> dict[str, Any]:
        """A PNG per render kind, the raw arrays, and the input picture; ``file_*`` / ``sha256_*`` columns."""
        cols: dict[str, Any] = {}

        def put(kind: str, filename: str, data: bytes) -> None:
            cols[f"file_{kind}"] = filename
            cols[f"sha256_{kind}"] = atomic_write(out_dir / filename, data)

        values = attr.values[0]
        cam = attr.upsampled[0] if attr.upsampled is not None else None
        for kind in self.renders:  # (the runner writes several items side by side)
            image = render.RENDERERS[kind](values, cam, self.picture, options)
            cols[f"file_{kind}"] = f"{name}_{kind}.png"
            cols[f"sha256_{kind}"] = write_png(out_dir / cols[f"file_{kind}"], image)
        put("npy", f"{name}.npy", npy_bytes(values))
        if cam is not None:
            put("npy_upsampled", f"{name}_upsampled.npy", npy_bytes(cam))
        for kind, suffix, data in extra_files(self.writes, attr.extras):
            put(kind, f"{name}_{suffix}", data)
        for key, legend in attr.extras.items():  # label maps get the class names only the runner knows
            if isinstance(legend, LabelLegend):
                names = [f"{c} {self.class_name(c)}" for c in legend.classes]
                put(f"png_{key}", f"{name}_{key}.png", png_bytes(render.label_legend(legend.image, legend.colors, names)))
        return cols

    def box_columns(self, attr: Attribution) -> dict[str, Any]:
        """``box_x0`` ... ``box_y1`` in original-image pixels from ``extras["bbox"]`` (input pixels)."""
        box = attr.extras.get("bbox")
        if box is None:
            return {}
        if self.original_size is not None and self.preprocess is not None:
            box = box_to_original(box, self.original_size, self.preprocess)
        return dict(zip(("box_x0", "box_y0", "box_x1", "box_y1"), (int(v) for v in box)))

    def rows(self, out_dir: str | os.PathLike, options: RenderOptions = RenderOptions(), with_target: bool = False) -> list[dict[str, Any]]:
        """Write every file; one manifest row (without run-level columns) per Attribution."""
        out_dir = Path(out_dir)
        input_name = f"{self.image}_input.png"  # the picture once per call, shared by its rows
        picture = {"file_input": input_name, "sha256_input": _write_input(out_dir / input_name, self.picture)}
        out = []
        for attr in self.attributions:
            row = {"image": self.image, "layer": attr.layer, "method": attr.method, "params": attr.params,
                   **self.meta, **self.prediction_columns(attr)}
            name = stem(self.image, attr.method, attr.layer, row["target"], with_target)
            row.update(picture)
            row.update(self.write_files(attr, name, out_dir, options))
            row.update(attr.metrics)
            row.update(self.box_columns(attr))
            row.update(status="ok", error="", warnings="; ".join(attr.warnings), layers_in_call=len(self.attributions))
            out.append(row)
        return out

    def save(self, out_dir: str | os.PathLike, options: RenderOptions = RenderOptions()) -> list[dict[str, Any]]:
        """Write the files and add the rows to ``out_dir/manifest.csv``, as the runner does."""
        manifest = Manifest(Path(out_dir) / "manifest.csv")
        rows = self.rows(out_dir, options)
        for row in rows:
            manifest.add(row)
        return rows

    def show(self, kinds: Optional[Sequence[str]] = None):
        """A matplotlib figure: the picture, then each render kind of each Attribution."""
        import matplotlib.pyplot as plt

        kinds = list(kinds or self.renders)
        n = len(self.attributions)
        fig, axes = plt.subplots(n, len(kinds) + 1, figsize=(3 * (len(kinds) + 1), 3 * n), squeeze=False)
        for r, attr in enumerate(self.attributions):
            cam = attr.upsampled[0] if attr.upsampled is not None else None
            panels = [("input", self.picture)] + [
                (k, render.RENDERERS[k](attr.values[0], cam, self.picture, RenderOptions())) for k in kinds
            ]
            for ax, (title, img) in zip(axes[r], panels):
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
                ax.set_title(f"{attr.method} {attr.layer or ''} {title}".strip(), fontsize=8)
                ax.axis("off")
        fig.tight_layout()
        return fig


ImageLike = Union[str, os.PathLike, Image.Image, torch.Tensor]


def _as_input(image: ImageLike, pre) -> tuple[torch.Tensor, np.ndarray, str, Optional[tuple[int, int]]]:
    """The input, the picture it shows, a name, and the original image's (w, h) (None for a tensor)."""
    if isinstance(image, torch.Tensor):
        x = image if image.ndim == 4 else image[None]
        mean = torch.tensor(list(pre.mean)).view(1, -1, 1, 1)
        std = torch.tensor(list(pre.std)).view(1, -1, 1, 1)
        pixels = (x[:1].detach().cpu().float() * std + mean).clamp(0, 1)
        return x, (pixels[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "tensor", None
    if isinstance(image, Image.Image):
        rgb = to_rgb(image)  # upright: an EXIF orientation of 5-8 swaps width and height
        x, picture = preprocess(rgb, pre)
        return x, picture, "image", rgb.size
    img, _ = read_image(image, "image")
    x, picture = preprocess(img, pre)
    return x, picture, safe_name(Path(image).stem), img.size


def explain(
    model: nn.Module,
    image: ImageLike,
    method: Union[str, Method] = "gradcam",
    layer: Union[None, str, Sequence[str]] = None,
    target: Target = None,
    preprocess_config: Any = None,
    class_names: Sequence[str] = (),
    name: Optional[str] = None,
    **params: Any,
) -> Explanation:
    """Run one technique on any ``nn.Module`` and an image (a path, a PIL image, or a normalised
    ``(1, 3, H, W)`` tensor). ``params`` are the technique's hyperparameters."""
    pre = preprocess_config or Preprocess()
    m = get_method(method)(**params) if isinstance(method, str) else method
    for key in ("input_mean", "input_std"):
        if hasattr(m, key) and getattr(m, key) is None:
            setattr(m, key, [float(v) for v in (pre.mean if key == "input_mean" else pre.std)])
    x, picture, default_name, size = _as_input(image, pre)
    device = next(model.parameters(), torch.empty(0)).device
    layers = [layer] if isinstance(layer, str) else list(layer or [])
    if m.needs_layer and not layers:
        raise ValueError(f"{m.name} needs layer=<dotted module name>")
    attrs = compute(m, model, x.to(device), target, layers)
    return Explanation(safe_name(name or default_name), picture, attrs, m.renders, class_names, writes=m.writes,
                       original_size=size, preprocess=pre)
