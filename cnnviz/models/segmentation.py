"""Semantic segmentation networks as the model under study: a class and a region of the output.

A segmentation network gives per-pixel logits ``(B, C, H, W)`` (torchvision's return a dict,
``{"out": ..., "aux": ...}``). ``RegionLogits`` wraps one so that its forward returns
``(B, C)``: each class's logit summed over a region of the input — every technique, target and
manifest column of cnnviz then applies unchanged, and explaining class c explains
Σ_{(i, j) ∈ region} y_c(i, j). The wrapper takes over the network's children under their own
names, so layers keep torchvision's names (``layer=backbone.layer4``).

In a config the region comes with the target, ``target: {class: 15, region: ...}``::

    region: all                        # every pixel (the default)
    region: {box: [x0, y0, x1, y1]}    # model-input pixels (the *_input.png picture), x1/y1 exclusive
    region: {mask: /path/mask.png}     # non-zero pixels of an image the size of the model input

Example::

    loaded = torchvision_segmentation("fcn_resnet50", weights=None)      # seeded random init, offline
    model = loaded.module.with_region(Region.from_box((40, 60, 120, 160)))
    attr = get_method("gradcam")()(model, x, target=15, layer="backbone.layer4")
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError, close_matches, unknown
from ..output.files import file_sha256
from .loaders import LoadedModel, _seeded, torchvision_weights
from .registry import model_loader

REGION_FORMS = "region: all | region: {box: [x0, y0, x1, y1]} | region: {mask: FILE}"


@dataclass(frozen=True)
class Region:
    """Where the logits are summed: ``all``, a ``box`` (x0, y0, x1, y1; input pixels, end
    exclusive) or a boolean ``mask`` of the input's size."""

    kind: str = "all"
    box: Optional[tuple[int, int, int, int]] = None
    mask: Optional[np.ndarray] = dataclasses.field(default=None, compare=False)
    source: str = ""

    @staticmethod
    def from_box(box) -> "Region":
        return Region("box", tuple(int(v) for v in box))

    def same_as(self, other: "Region") -> bool:
        return (self.kind, self.box) == (other.kind, other.box) and (
            self.mask is None if other.mask is None else self.mask is not None and np.array_equal(self.mask, other.mask))

    @property
    def label(self) -> str:
        """A short description for the manifest's model column."""
        if self.kind == "box":
            return "box[" + ",".join(str(v) for v in self.box) + "]"
        return f"mask[{self.source}]" if self.kind == "mask" else "all"

    def check_size(self, height: int, width: int, where: str = "target.region") -> None:
        """ConfigError when the region does not fit an input of ``height`` x ``width``."""
        if self.kind == "box":
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ConfigError(
                    f"{where}.box {list(self.box)} does not fit the {width}x{height} model input: "
                    f"need 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} (input pixels, x1/y1 exclusive)"
                )
        if self.kind == "mask":
            h, w = self.mask.shape
            if (h, w) != (height, width):
                raise ConfigError(
                    f"{where}.mask: '{self.source}' is {w}x{h} but the model input is {width}x{height}; "
                    f"give a mask of the input's size (model.preprocess.input_size)"
                )
            if not self.mask.any():
                raise ConfigError(f"{where}.mask: '{self.source}' has no non-zero pixel, the region is empty")

    def weights(self, height: int, width: int, device) -> Optional[torch.Tensor]:
        """``(H, W)`` 0/1 weights, or None for every pixel."""
        if self.kind == "all":
            return None
        self.check_size(height, width)
        if self.kind == "box":
            x0, y0, x1, y1 = self.box
            w = torch.zeros(height, width, device=device)
            w[y0:y1, x0:x1] = 1.0
            return w
        return torch.as_tensor(self.mask, dtype=torch.float32, device=device)


class RegionLogits(nn.Module):
    """``forward(x) -> (B, C)``: the wrapped network's per-pixel logits (its ``"out"`` entry when
    it returns a dict), resized bilinearly to the input when they are smaller, summed over
    ``region``. The network's children become this module's, under the same names.

    The region is fixed for the wrapper's life (``with_region`` gives another wrapper of the same
    network): what caches a model by identity (``cnnviz.speed.fastpath``'s folded copy) stays right."""

    def __init__(self, net: nn.Module, region: Region = Region()):
        super().__init__()
        if any(True for _ in net.named_parameters(recurse=False)) or any(True for _ in net.named_buffers(recurse=False)):
            raise ValueError("RegionLogits wraps networks whose parameters all live in child modules")
        for name, child in net.named_children():
            self.add_module(name, child)
        # the network itself is held outside the module tree: its children are ours already,
        # and listing it again would give every layer a second name
        self._net = (net,)
        self._region = region

    @property
    def net(self) -> nn.Module:
        return self._net[0]

    @property
    def region(self) -> Region:
        return self._region

    def with_region(self, region: Region) -> "RegionLogits":
        """This wrapper when it sums over ``region`` already, else a new one around the same network."""
        return self if self._region.same_as(region) else RegionLogits(self.net, region)

    def train(self, mode: bool = True) -> "RegionLogits":
        super().train(mode)
        self.net.training = mode  # the network's own flag, in case its forward reads it
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, dict):
            if "out" not in out:
                raise ValueError(f"the segmentation network returned a dict without 'out' (keys: {list(out)})")
            out = out["out"]
        if out.ndim != 4:
            raise ValueError(f"a segmentation network must give (B, C, H, W) logits, got shape {tuple(out.shape)}")
        if tuple(out.shape[-2:]) != tuple(x.shape[-2:]):
            out = F.interpolate(out, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        w = self.region.weights(out.shape[-2], out.shape[-1], out.device)
        return out.sum(dim=(2, 3)) if w is None else torch.einsum("bchw,hw->bc", out, w.to(out.dtype))


# --- from the config (plain containers: the app converts OmegaConf nodes) ---------------------


def parse_region(spec: Any, where: str = "target.region") -> Region:
    """A ``Region`` from its config form (``REGION_FORMS``); ConfigError naming the key otherwise."""
    if spec is None or spec == "all":
        return Region()
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: '{spec}' is not a region; use {REGION_FORMS}")
    (kind, value), = spec.items()
    if kind == "box":
        if (not isinstance(value, (list, tuple)) or len(value) != 4
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"{where}.box must be four integers [x0, y0, x1, y1] (model-input pixels), got {value}")
        x0, y0, x1, y1 = value
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise ConfigError(f"{where}.box {value} is empty or negative: need 0 <= x0 < x1 and 0 <= y0 < y1")
        return Region.from_box(value)
    if kind == "mask":
        path = Path(str(value)).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}.mask: file '{path}' does not exist; give an image whose non-zero pixels are the region")
        from PIL import Image

        try:
            with Image.open(path) as img:
                mask = np.asarray(img.convert("L")) > 0
        except OSError as e:
            raise ConfigError(f"{where}.mask: '{path}' is not a readable image ({e})") from None
        return Region("mask", mask=mask, source=str(path))
    raise unknown("region kind", where, str(kind), ["all", "box", "mask"])


TARGET_KEYS = ("class", "region")


def split_region_target(target: Any) -> tuple[Any, Optional[Region]]:
    """``target: {class: c, region: ...}`` -> (c, Region); any other target comes back unchanged
    with ``None``. In a list, every dict must name the same region (one region per run)."""
    items = target if isinstance(target, list) else [target]
    if not any(isinstance(t, dict) for t in items):
        return target, None
    classes, regions = [], []
    for t in items:
        if not isinstance(t, dict):
            classes.append(t)
            continue
        for key in t:
            if key not in TARGET_KEYS:
                near = close_matches(str(key), TARGET_KEYS)
                hint = f"; close matches: {', '.join(near)}" if near else ""
                raise ConfigError(f"target.{key}: unknown key{hint}; a region target is {{class: <int>, region: ...}}")
        if "class" not in t:
            raise ConfigError("target: a region target needs a class, e.g. target={class:15,region:all}")
        classes.append(t["class"])
        regions.append(parse_region(t.get("region")))
    if len({r.label for r in regions}) > 1:
        raise ConfigError("target: every target of a run must name the same region; run the regions as separate jobs (-m)")
    return (classes if isinstance(target, list) else classes[0]), regions[0]


def apply_region(loaded: LoadedModel, region: Optional[Region], pre) -> LoadedModel:
    """Set the region on a segmentation model (``all`` when the target names none) and return the
    model named with it for the manifest; a region for any other model is a ConfigError."""
    module = loaded.module
    if not isinstance(module, RegionLogits):
        if region is not None:
            raise ConfigError(
                f"target.region needs a segmentation model (model=torchvision_segmentation); "
                f"{loaded.name} gives class logits. Use target=<class index>"
            )
        return loaded
    region = region or Region()
    if pre.resize != "keep_aspect":  # otherwise the input size depends on the image: checked per call
        region.check_size(int(pre.input_size), int(pre.input_size))
    name = loaded.name if region.kind == "all" else f"{loaded.name}@{region.label}"
    # the cached model keeps its wrapper; this plan gets one for its region
    return dataclasses.replace(loaded, module=module.with_region(region), name=name)


# --- the loader ----------------------------------------------------------------------------


@model_loader
def torchvision_segmentation(name: str = "fcn_resnet50", weights: Optional[str] = "COCO_WITH_VOC_LABELS_V1",
                             seed: int = 0) -> LoadedModel:
    """A torchvision segmentation network (``fcn_resnet50``, ``deeplabv3_resnet50``,
    ``lraspp_mobilenet_v3_large`` …) wrapped in ``RegionLogits``; ``weights`` is an enum name
    (``COCO_WITH_VOC_LABELS_V1``) or null for a seeded random init (no backbone download either)."""
    import torchvision.models as tvm
    import torchvision.models.segmentation as tvseg

    names = tvm.list_models(module=tvseg)
    if name not in names:
        raise unknown("torchvision segmentation network", "model.name", str(name), names)
    enum = tvm.get_model_weights(name)
    categories = list(enum.DEFAULT.meta.get("categories") or [])
    if weights is None:
        net = _seeded(seed, lambda: tvm.get_model(name, weights=None, weights_backbone=None))
        return LoadedModel(RegionLogits(net), name, f"random(seed={seed})", None, categories)
    w, cached = torchvision_weights(name, weights)
    net = tvm.get_model(name, weights=w)  # reads the cached file
    return LoadedModel(RegionLogits(net), name, weights, file_sha256(cached), list(w.meta.get("categories") or []),
                       origin=f"model.weights: {name} {weights} '{cached}'")
