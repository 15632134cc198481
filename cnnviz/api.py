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

import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from .output import items, render
from .core.attribution import Attribution
from .data.images import box_to_original, preprocess, read_image, safe_name, to_rgb
from .output.manifest import Manifest
from .output.render import RenderOptions
from .output.writers import class_name, outputs
from .engine import compute
from .methods.base import Method
from .methods import get_method
from .speed import Speed
from .core.targets import Target


@dataclass(frozen=True)
class Preprocess:
    """Defaults for ``explain``: ImageNet statistics, 224 px centre crop (the runner passes its config)."""

    input_size: int = 224
    resize: str = "center_crop"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)


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
    #: notes about the input (e.g. only an animation's first frame is used), added to each row's warnings
    warnings: tuple[str, ...] = ()
    #: the target when it brings its own manifest columns (``cnnviz.core.targets.OutputScore``: a
    #: continuous output or a similarity, not a class); anything else is ignored
    target_kind: Any = None

    def class_name(self, index: Optional[int]) -> str:
        return class_name(self.class_names, index)

    def call(self) -> items.Call:
        """What the writers need (``cnnviz.output.items``): the renders and writes as writer specs,
        the class names and the box mapping as data."""
        to_original = None
        if self.original_size is not None and self.preprocess is not None:
            size, pre = self.original_size, self.preprocess
            to_original = lambda box: box_to_original(box, size, pre)  # noqa: E731
        kind = self.target_kind if hasattr(self.target_kind, "columns") else None
        return items.Call(self.image, self.picture, self.attributions, outputs(self.renders, self.writes),
                          self.class_names, self.meta, to_original, self.warnings, kind)

    def rows(self, out_dir: str | os.PathLike, options: RenderOptions = RenderOptions(), with_target: bool = False) -> list[dict[str, Any]]:
        """Write every file; one manifest row (without run-level columns) per Attribution."""
        return items.rows(self.call(), Path(out_dir), options, with_target)

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
    fast_copy: bool = False,
    speed: Optional[Speed] = None,
    token_grid: Optional[Sequence[int]] = None,
    **params: Any,
) -> Explanation:
    """Run one technique on any ``nn.Module`` and an image (a path, a PIL image, or a normalised
    ``(1, 3, H, W)`` tensor). ``params`` are the technique's hyperparameters.

    ``target``: a class index, None (top-1), a callable on the model's output, or a dict target
    (``cnnviz.models.outputs``): ``{"output": 3}`` (continuous output 3 of a regression model),
    ``{"similar_to": "ref.jpg"}`` (cosine similarity of the pooled features to the reference's,
    preprocessed like ``image``; a PIL image or a normalised tensor also serve; ``"layer"`` names the
    embedding module where the model's own is not found), ``{"output": "b", "class": 2}`` (class 2
    of output ``b`` of a model returning a dict or tuple). Layer names are the model's own in every case.

    ``token_grid``: ``(h, w)`` of a transformer's patch tokens where it cannot be inferred
    (``cnnviz.core.tokens``); set on the model for this call only.

    Accelerations are off unless asked: ``fast_copy=True`` runs the model's BatchNorm-folded
    channels-last copy (same function, other rounding; ``cnnviz.speed.fastpath``); ``speed`` gives all
    of them (``cnnviz.speed.Speed``) and then ``fast_copy`` must be left False."""
    if speed is not None and fast_copy:
        raise ValueError("give fast_copy=True or speed=Speed(fast_copy=True, ...), not both")
    speed = speed if speed is not None else Speed(fast_copy=fast_copy)
    pre = preprocess_config or Preprocess()
    m = get_method(method)(**params) if isinstance(method, str) else method
    for key in ("input_mean", "input_std"):
        if hasattr(m, key) and getattr(m, key) is None:
            setattr(m, key, [float(v) for v in (pre.mean if key == "input_mean" else pre.std)])
    x, picture, default_name, size = _as_input(image, pre)
    model, target = _target_kind(model, target, pre, x)
    device = next(model.parameters(), torch.empty(0)).device
    layers = [layer] if isinstance(layer, str) else list(layer or [])
    if m.needs_layer and not layers:
        raise ValueError(f"{m.name} needs layer=<dotted module name>")
    from .core.tokens import token_grid as grid_scope

    with grid_scope(model, token_grid) if token_grid else nullcontext():
        attrs = compute(m, model, x.to(device), target, layers, speed)
    return Explanation(safe_name(name or default_name), picture, attrs, m.renders, class_names, writes=m.writes,
                       original_size=size, preprocess=pre, target_kind=target)


def _target_kind(model: nn.Module, target: Target, pre, x: torch.Tensor) -> tuple[nn.Module, Target]:
    """For a dict target (``cnnviz.models.outputs``): the module to explain and the one target it
    gives; any other target comes back with the model unchanged."""
    if not (isinstance(target, dict) or isinstance(target, list) and any(isinstance(t, dict) for t in target)):
        return model, target
    from .models.outputs import probe_output, resolve_target

    resolved = resolve_target(model, target, lambda ref: reference_input(ref, pre), probe_output(int(pre.input_size), x))
    if resolved is None:
        raise ValueError(f"target {target}: not a target explain() knows; a dict target is {{'output': k}}, "
                         "{'similar_to': image} or {'output': name, 'class': c}")
    if len(resolved.targets) != 1:
        raise ValueError(f"explain() explains one target per call, got {len(resolved.targets)}: call it once per target")
    return resolved.module, resolved.targets[0]


def reference_input(ref: ImageLike, pre) -> torch.Tensor:
    """A reference image named in a target (``{similar_to: ...}``) as the normalised ``(1, 3, H, W)``
    input it makes: a path or PIL image preprocessed as the inputs are, a tensor taken as already
    normalised; errors name ``target.similar_to``."""
    if isinstance(ref, torch.Tensor):
        return ref if ref.ndim == 4 else ref[None]
    img = to_rgb(ref, "target.similar_to") if isinstance(ref, Image.Image) else read_image(ref, "target.similar_to")[0]
    return preprocess(img, pre)[0]
