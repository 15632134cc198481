"""Weakly supervised object segmentation and localisation from a saliency map (Simonyan, Vedaldi &
Zisserman 2013, arXiv:1312.6034, §6).

    S = saliency of the target class (``source``; vanilla backprop: S_ij = max_c |∂y/∂x_cij|)
    seeds: S >= q_fg quantile -> foreground, S <= q_bg quantile -> background, the rest probable
           foreground / background (split at the (q_fg + q_bg) / 2 quantile)
    mask  = largest connected component of GrabCut(picture, seeds)      box = its bounding box

GrabCut (Rother et al. 2004, OpenCV ``grabCut`` with ``GC_INIT_WITH_MASK``, ``iterations`` rounds)
fits colour models to the seeds and cuts the graph; OpenCV's RNG is seeded with ``seed``, so the
result is deterministic. ``blur`` (not in the paper; 0 turns it off) smooths the saliency with a
Gaussian of that many input pixels before seeding: a raw gradient's top 5 % are scattered pixels,
and GrabCut's hard seeds would keep them scattered.

``source`` may be any registered technique: an input-space map is reduced with max_c |·|, a CAM
gives its upsampled map (``layer`` is then the CAM's layer). ``values`` holds the map that seeded
GrabCut, repeated over the input's channels; ``extras`` the object mask, the mask overlay, the box
drawn on the picture, the seeds (item 0 of the batch) and ``bbox``, the box in input pixels, which
the manifest reports in original-image pixels (``box_x0`` … ``box_y1``).

Example::

    attr = get_method("weakly_supervised_segmentation")(input_mean=[.5] * 3, input_std=[.5] * 3)(model, x, 243)
    attr.extras["bbox"], attr.metrics["mask_area_fraction"]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np

from ..core.attribution import Attribution
from ..core.constraints import param
from ..core.errors import ConfigError, unknown
from ..core.registry import register
from . import get_method, list_methods
from ..methods import _segmentation_ops as seg
from .base import Method

#: seed colours for the ``seeds`` image: background, foreground, probable background, probable foreground
SEED_COLOURS = np.array([[0, 0, 0], [255, 255, 255], [70, 70, 140], [230, 160, 60]], dtype=np.uint8)
MASK_COLOUR = (255, 40, 40)
BOX_COLOUR = (255, 0, 0)


def source_method(owner: str, source: str, params: dict[str, Any], mean, std) -> Method:
    """The technique ``source`` with ``params``, given the normalisation when it takes one."""
    try:
        cls = get_method(source)
    except ConfigError:
        raise unknown("method", f"method.{owner}.source", source, list_methods()) from None
    if getattr(cls, "is_segmentation", False):
        raise ConfigError(f"method.{owner}.source: '{source}' is itself a segmentation; choose a saliency or CAM technique")
    if not cls.uses_target:
        raise ConfigError(f"method.{owner}.source: '{source}' does not explain a class; choose a technique that uses the target")
    names = {f.name for f in dataclasses.fields(cls)}
    params = dict(params or {})
    bad = sorted(set(params) - names)
    if bad:
        raise ConfigError(f"method.{owner}.source_params: {bad} are not hyperparameters of {source}; valid: {', '.join(sorted(names)) or 'none'}")
    for key, value in (("input_mean", mean), ("input_std", std)):  # pixel-space sources learn the normalisation
        if key in names and params.get(key) is None:
            params[key] = value
    return cls(**params)


def blurred(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Each ``(H, W)`` map of a ``(B, H, W)`` stack smoothed by a Gaussian of ``sigma`` pixels."""
    if sigma <= 0:
        return maps
    import cv2

    dtype = np.float64 if maps.dtype == np.float64 else np.float32  # the input's precision (maps.result_dtype)
    return np.stack([cv2.GaussianBlur(np.ascontiguousarray(m, dtype=dtype), (0, 0), float(sigma)) for m in maps])


@dataclass
class Sourced(Method):
    """A segmentation built on the map of another technique, ``source`` with ``source_params``."""

    #: one image's segmentation, its pictures and area (extras, metrics) per call
    batch_rows: ClassVar[bool] = False

    is_segmentation = True
    source: str = "vanilla_backprop"
    source_params: dict[str, Any] = field(default_factory=dict)
    input_mean: Optional[list[float]] = None
    input_std: Optional[list[float]] = param(None, gt=0)

    def __post_init__(self):
        super().__post_init__()
        # a CAM source needs a layer: the runner then asks for one as for the CAM itself
        self.needs_layer = self.source_method().needs_layer

    def source_method(self) -> Method:
        return source_method(self.name, self.source, self.source_params, self.input_mean, self.input_std)

    def check(self, model):
        self.source_method().check(model)


@register("weakly_supervised_segmentation")
@dataclass
class WeaklySupervisedSegmentation(Sourced):
    renders = ("gray",)
    writes = ("png:overlay", "png:mask", "png:box", "png:seeds")
    q_fg: float = param(0.95, min=0, max=1)
    q_bg: float = param(0.30, min=0, max=1)
    blur: float = param(6.0, min=0)
    iterations: int = param(5, min=1)
    seed: int = param(0, min=0)

    def check_params(self):
        seg.check_quantiles(self.q_fg, self.q_bg, f"method.{self.name}")

    def check(self, model):
        seg.check_quantiles(self.q_fg, self.q_bg, f"method.{self.name}")
        self.source_method().check(model)

    def attribute(self, model, x, target, layer):
        seg.check_quantiles(self.q_fg, self.q_bg, f"method.{self.name}")
        source = self.source_method()
        attr = source(model, x, target, layer=layer if source.needs_layer else None)
        saliency = blurred(seg.saliency_map(attr.values, attr.upsampled), self.blur)
        # files and columns describe the first image of a batch, as for every technique
        picture = seg.pictures(x[:1], self.input_mean, self.input_std)[0]
        seeds = seg.quantile_seeds(saliency[0], self.q_fg, self.q_bg)
        mask, notes = seg.grabcut(picture, seeds, self.iterations, self.seed)
        obj = seg.largest_component(mask)
        box = seg.bounding_box(obj)
        warnings = list(attr.warnings) + list(notes)
        extras: dict[str, Any] = {
            "mask": obj.astype(np.uint8) * 255,
            "overlay": seg.draw_box(seg.blend(picture, MASK_COLOUR, obj, 0.5), box, BOX_COLOUR),
            "box": seg.draw_box(picture, box, BOX_COLOUR),
            "seeds": SEED_COLOURS[seeds],
        }
        if box is None:
            warnings.append(f"{self.name}: the segmentation is empty, no box")
        else:
            extras["bbox"] = box  # input pixels; the manifest reports it in original-image pixels
        return Attribution(
            method=self.name,
            values=np.repeat(saliency[:, None], x.shape[1], axis=1),
            logits=attr.logits,
            target=attr.target,
            layer=attr.layer,
            params=self.params(),
            warnings=tuple(warnings),
            metrics={"mask_area_fraction": float(obj.mean())},
            extras=extras,
        )
