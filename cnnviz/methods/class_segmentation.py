"""Semantic segmentation from class evidence, after Noh, Hong & Han 2015 ("Learning Deconvolution
Network for Semantic Segmentation", arXiv:1505.04366), without training: per-class evidence maps
of a classifier labelled pixel by pixel.

    E_c = evidence map of class c (``source``: deconvnet, guided_gradcam or any CAM), c in C
    Ê_c = max(E_c, 0) / max_ij max(E_c, 0)                     (each class peaks at 1)
    label(i, j) = argmax_c Ê_c(i, j)   if max_c Ê_c(i, j) >= threshold,   else background

C is ``classes`` when given, else the ``top_k`` predicted classes of each image; the ``target`` is
not used. An input-space source is reduced with max_c |·| per pixel and, with ``blur`` > 0,
smoothed by a Gaussian of that many pixels (deconvnet and guided maps are sparse). ``values`` holds
max_c Ê_c repeated over the input's channels; ``extras`` the coloured label map, its overlay on the
picture, the label map of class indices (-1 = background) and a ``LabelLegend``, which the
runner draws with the class names; ``metrics`` the fraction of pixels of each class
(``fraction_<class index>``, ``fraction_background``), all for item 0 of the batch.

Example::

    attr = get_method("class_segmentation")(top_k=5)(model, x, layer="bn2")
    attr.extras["label_map"]   # (H, W) class indices, -1 where no class reaches the threshold
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..core.attribution import Attribution
from ..core.constraints import param
from ..core.errors import ConfigError
from ..core.hooks import model_state_kept
from ..core.maps import numpy_dtype, to_numpy
from ..core.registry import register
from ..methods import _segmentation_ops as seg
from .weakly_supervised_segmentation import Sourced, blurred


@register("class_segmentation")
@dataclass
class ClassSegmentation(Sourced):
    renders = ("gray",)
    writes = ("png:overlay", "png:labels", "npy:label_map", "legend:legend")
    uses_target = False
    needs_layer = True  # for the default source, gradcam; follows the source per instance
    source: str = "gradcam"
    top_k: int = param(5, min=1)
    classes: Optional[list[int]] = param(None, min=0)
    threshold: float = param(0.2, min=0, max=1)
    blur: float = param(0.0, min=0)

    def class_lists(self, logits: torch.Tensor) -> list[list[int]]:
        n = logits.shape[1]
        if self.classes:
            bad = [c for c in self.classes if not 0 <= int(c) < n]
            if bad:
                raise ConfigError(f"method.{self.name}.classes: {bad} out of range, the model has {n} classes (0..{n - 1})")
            return [list(dict.fromkeys(int(c) for c in self.classes))] * logits.shape[0]
        if self.top_k < 1:
            raise ConfigError(f"method.{self.name}.top_k must be >= 1 (or set classes=[...])")
        return logits.topk(min(self.top_k, n), dim=1).indices.tolist()

    def attribute(self, model, x, target, layer):
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"method.{self.name}.threshold must be in [0, 1] (evidence is normalised to peak at 1)")
        source = self.source_method()
        with model_state_kept(model), torch.no_grad():
            logits = model(x.detach())
        pictures = seg.pictures(x, self.input_mean, self.input_std)
        values, extras, metrics, warnings = [], {}, {}, []
        for b, classes in enumerate(self.class_lists(logits)):
            maps = []
            for c in classes:  # one image, one class per call: the source explains exactly that logit
                a = source(model, x[b:b + 1], c, layer=layer if source.needs_layer else None)
                maps.append(seg.saliency_map(a.values, a.upsampled)[0])
                warnings += [w for w in a.warnings if b == 0]
            evidence = seg.normalise(blurred(np.stack(maps), self.blur))
            slots = seg.label_slots(evidence, self.threshold)
            values.append(evidence.max(axis=0))
            if b:
                continue  # files and columns describe the first image, as for every technique
            colours = seg.colour_labels(slots)
            extras["labels"] = colours
            extras["overlay"] = seg.blend(pictures[b], colours, slots > 0, 0.5)
            extras["label_map"] = np.asarray([-1] + classes, dtype=np.int16)[slots]
            extras["legend"] = seg.LabelLegend(colours, tuple(classes), seg.slot_colors(len(classes)))
            metrics["fraction_background"] = float((slots == 0).mean())
            metrics.update({f"fraction_{c}": float((slots == k + 1).mean()) for k, c in enumerate(classes)})
        values = np.stack(values).astype(numpy_dtype(x))
        return Attribution(
            method=self.name,
            values=np.repeat(values[:, None], x.shape[1], axis=1),
            logits=to_numpy(logits),
            target=(),
            layer=layer if source.needs_layer else None,
            params=self.params(),
            warnings=tuple(dict.fromkeys(warnings)),
            metrics=metrics,
            extras=extras,
        )
