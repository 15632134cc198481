"""Average Drop and Increase in Confidence (Chattopadhay, Sarkar, Howlader & Balasubramanian 2018,
"Grad-CAM++", WACV, arXiv:1710.11063; reported the same way by Score-CAM, Wang et al. 2020).

The map, min-max scaled to [0, 1] (a CAM upsampled to the input), multiplies the input; with
``Y`` the target's softmax probability on the image and ``O`` on the masked image:

    average_drop           = 100 · max(0, Y − O) / Y          (percent; lower is better)
    increase_in_confidence = 100 · 1[O > Y]                   (0 or 100; higher is better)
    confidence_change      = 100 · (O − Y) / Y                (percent, signed; higher is better)

so the mean of each of the first two columns over images is the percentage the papers tabulate.
The third is both in one number per image (Average Drop is its negative part, the increase its
sign), which still tells maps apart when both keep or raise the confidence (drop 0). ``space: input``
multiplies the model's normalised input (as torchcam's ``ClassificationMetric`` does, which masks
the preprocessed tensor); ``space: pixel`` multiplies the image in pixel values and normalises it
again (``input_mean`` / ``input_std``, filled from the model's preprocessing by the runner), as
Grad-CAM++ describes it ("the image multiplied by the explanation map"). The two differ: in input
space a zero weight turns a pixel into the data set's mean colour, in pixel space into black.
torchcam also reports fractions rather than percent and adds 1e-7 to ``Y``; the formulas are
otherwise the same. A constant map explains nothing and is skipped with a warning.

Example::

    confidence_change(model, x, cam, target=243)   # {"average_drop": ..., "increase_in_confidence": ...}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..core.constraints import param
from ..core.errors import ConfigError
from .base import Metric, MetricResult, Sample, register_metric, saliency
from .perturbation import _check_map, _direct

SPACES = ("input", "pixel")


def unit_scaled(saliency_map: np.ndarray) -> Optional[np.ndarray]:
    """The map min-max scaled to [0, 1]; ``None`` when it is constant."""
    s = np.nan_to_num(np.asarray(saliency_map, dtype=np.float64))
    lo, hi = s.min(), s.max()
    return None if hi <= lo else (s - lo) / (hi - lo)


def masked_input(x: torch.Tensor, weights: np.ndarray, space: str = "input", mean=None, std=None) -> torch.Tensor:
    """``x`` ``(1, C, H, W)`` multiplied by ``weights`` ``(H, W)`` in the model's input space or,
    ``space='pixel'``, in pixel values (``x · std + mean``) and normalised again."""
    w = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    if space == "input":
        return x * w
    if mean is None or std is None:
        raise ConfigError("metrics.confidence_change.space=pixel needs input_mean and input_std "
                          "(the runner fills them from model.preprocess; give them in the library API)")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return ((x * s + m) * w - m) / s


def change(y: float, o: float) -> dict[str, float]:
    """The three columns from the target's probability on the image (``y``) and on the masked image (``o``)."""
    return {"confidence_change": 100.0 * (o - y) / y if y > 0 else float("nan"),
            "average_drop": 100.0 * max(0.0, y - o) / y if y > 0 else float("nan"),
            "increase_in_confidence": 100.0 * float(o > y)}


def _pair(x: torch.Tensor, saliency_map: np.ndarray, space: str, mean, std) -> torch.Tensor:
    """``x`` and ``x`` masked by the [0, 1]-scaled map, ``(2, C, H, W)``."""
    _check_map(saliency_map, x)
    weights = unit_scaled(saliency_map)
    if weights is None:
        raise ValueError("the map is constant: it weights every pixel alike")
    x = x[:1].detach()
    return torch.cat([x, masked_input(x, weights, space, mean, std)])


def _columns(logits: torch.Tensor, target: int, scores: bool) -> dict[str, float]:
    """The columns from the logits of an image and its masked copy ``(2, classes)``."""
    if not 0 <= int(target) < logits.shape[-1]:
        raise IndexError(f"target class {target} is out of range for a model with {logits.shape[-1]} classes")
    p = logits.double() if scores else torch.softmax(logits.double(), dim=-1)
    y, o = (float(v) for v in p[:, int(target)])
    return {**change(y, o), "confidence_image": y, "confidence_masked": o}


def confidence_change(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, saliency_map: np.ndarray,
                      target: int, space: str = "input", mean=None, std=None, scores: bool = False) -> dict[str, float]:
    """Average Drop, Increase in Confidence and the signed change of one map (see the module
    docstring), plus the two probabilities ``confidence_image`` (Y) and ``confidence_masked`` (O)."""
    with torch.no_grad():
        logits = forward(_pair(x, saliency_map, space, mean, std))
    return _columns(logits, target, scores)


@register_metric("confidence_change")
@dataclass
class ConfidenceChange(Metric):
    columns = ("confidence_change", "average_drop", "increase_in_confidence")
    higher_is_better = {"confidence_change": True, "average_drop": False, "increase_in_confidence": True}
    #: input: multiply the model's normalised input (torchcam); pixel: the image's pixel values (Grad-CAM++)
    space: str = param("input", choices=SPACES, kind="space")
    #: how an input-space map (C, H, W) becomes one value per pixel, see ``base.saliency``
    reduce: str = param("abs", choices=("abs", "signed"), kind="reduction")
    input_mean: Optional[list[float]] = None
    input_std: Optional[list[float]] = param(None, gt=0)

    def check(self) -> None:
        if self.space not in SPACES:
            raise ConfigError(f"metrics.confidence_change.space must be one of {', '.join(SPACES)}, got '{self.space}'")

    def __call__(self, sample: Sample) -> MetricResult:
        if sample.target is None:
            return MetricResult(warnings=("confidence_change: needs a class target, skipped",))
        weights = saliency(sample, self.reduce)
        if unit_scaled(weights) is None:
            return MetricResult(warnings=("confidence_change: the map is constant, skipped",))
        return MetricResult(confidence_change(sample.forward, sample.x[:1].detach(), weights, sample.target, self.space,
                                              self.input_mean, self.input_std, _direct(sample)))

    def batch(self, samples: list[Sample]) -> list[MetricResult]:
        """Every sample's image and masked image with the same ``forward`` in one model pass; if
        that pass fails, each of its samples is measured alone."""
        results: list[Optional[MetricResult]] = [None] * len(samples)
        groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for i, sample in enumerate(samples):
            weights = saliency(sample, self.reduce) if sample.target is not None else None
            if weights is None or unit_scaled(weights) is None:
                results[i] = self(sample)  # the skip and its warning, no model call
                continue
            try:
                pair = _pair(sample.x, weights, self.space, self.input_mean, self.input_std)
            except Exception as e:  # this sample's own failure
                results[i] = MetricResult(error=e)
                continue
            groups.setdefault((sample.forward, tuple(pair.shape), pair.device, pair.dtype, _direct(sample)), []).append((i, pair))
        for (forward, *_, direct), members in groups.items():
            try:
                with torch.no_grad():
                    logits = forward(torch.cat([pair for _, pair in members]))
                for k, (i, _) in enumerate(members):
                    results[i] = MetricResult(_columns(logits[2 * k:2 * k + 2], samples[i].target, direct))
            except Exception:
                # a shared pass has no single culprit: alone, each sample fails or succeeds on its own
                for i, res in zip((i for i, _ in members), Metric.batch(self, [samples[i] for i, _ in members])):
                    results[i] = res
        return results  # type: ignore[return-value]  (every index was filled above)
