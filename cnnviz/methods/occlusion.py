"""Occlusion (Zeiler & Fergus 2014, arXiv:1311.2901 §4.2).

A ``window`` × ``window`` patch (all channels) set to ``baseline`` (in the model's normalised input
space; 0 is the mean colour) slides with ``stride``; each pixel's attribution is the mean, over the
windows that cover it, of the drop in the target score y_c(x) − y_c(x occluded). Pixels that no
window covers get 0. Occluded images are evaluated ``perturbations_per_eval`` at a time under
``torch.inference_mode``, those of the images of a batch side by side (windows × images, image after
image): memory is bounded by ``perturbations_per_eval``, and each image's map is the one a call on it
alone gives. With ``incremental`` (default) the leading convolution / pooling layers
run only on the rectangle each window changes (``cnnviz.methods._occlusion_incremental``; same scores up to float
rounding, checked against full forwards on the first batch of every image, else full forwards; an image's
clean activations are held only while its windows are being computed).

Example::

    attr = get_method("occlusion")(window=15, stride=8)(model, x, target=56)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..core.constraints import param
from ..core.errors import ConfigError
from ._occlusion_incremental import IncrementalOcclusion
from ..speed.fastpath import instrumented
from ..core.maps import result_dtype
from ..core.passes import target_scores
from ..core.registry import register
from .base import PerturbationMethod

log = logging.getLogger("cnnviz")


def _agrees(got: torch.Tensor, want: torch.Tensor) -> bool:
    return torch.allclose(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()) + 1e-6)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    return list(range(0, size - window + 1, stride)) if size >= window else []


@register("occlusion")
@dataclass
class Occlusion(PerturbationMethod):
    main_hyperparameter = ("window", (9, 15, 25))
    window: int = param(15, min=1)
    stride: int = param(8, min=1)
    baseline: float = 0.0
    perturbations_per_eval: int = param(16, min=1)
    incremental: bool = True

    def attribute(self, model, x, target, layer):
        if self.window < 1 or self.stride < 1 or self.perturbations_per_eval < 1:
            raise ConfigError("method.occlusion: window, stride and perturbations_per_eval must be >= 1")
        H, W = x.shape[-2:]
        if self.window > min(H, W):
            raise ConfigError(f"method.occlusion.window={self.window} is larger than the input ({H}x{W})")
        return super().attribute(model, x, target, layer)

    def maps(self, net, forward, x, target, which, logits):
        count, channels, H, W = x.shape
        boxes = [(i, j) for i in window_starts(H, self.window, self.stride) for j in window_starts(W, self.window, self.stride)]
        per_image = len(boxes)
        base = target_scores(target, logits, which)
        total = torch.zeros(count, H, W, dtype=torch.float64, device=x.device)
        covered = torch.zeros(H, W, dtype=torch.float64, device=x.device)  # the same windows on every image
        for i, j in boxes:
            covered[i:i + self.window, j:j + self.window] += 1
        # the model itself runs on contiguous tensors, its fast copy on channels-last ones
        xs = x if net is forward else x.contiguous(memory_format=torch.channels_last)
        # hooks on the model (someone's instrumentation) must see every layer run: full forwards
        use = self.incremental and not instrumented(net)
        fast = IncrementalOcclusion.build(net, xs, self.window, boxes) if use else None
        checked: set[int] = set()
        # one row per (image, window), image-major: the occluded copies of several images share a
        # forward, perturbations_per_eval rows at most, whatever the number of images
        for start in range(0, count * per_image, self.perturbations_per_eval):
            rows = range(start, min(start + self.perturbations_per_eval, count * per_image))
            images = [r // per_image for r in rows]
            corners = [boxes[r % per_image] for r in rows]
            new = set(images) - checked
            if fast is not None and not new:
                logits_chunk = fast.logits(corners, self.baseline, images)
            else:
                batch = x[images]
                for n, (i, j) in enumerate(corners):
                    batch[n, :, i:i + self.window, j:j + self.window] = self.baseline
                logits_chunk = forward(batch)
                # the incremental scores are checked against full forwards on the first batch of
                # every image, as a call on that image alone checks them
                if fast is not None:
                    if _agrees(fast.logits(corners, self.baseline, images), logits_chunk):
                        checked |= new
                    else:
                        log.warning("occlusion: incremental inference disagrees with full forwards on %s; "
                                    "running full forwards", type(net).__name__)
                        fast = None
            drops = (base[images] - target_scores(target, logits_chunk, [which[b] for b in images] if which else [])).double()
            for n, (b, (i, j)) in enumerate(zip(images, corners)):
                total[b, i:i + self.window, j:j + self.window] += drops[n]
            if fast is not None:
                for b in range(images[0], rows.stop // per_image):  # the images whose windows are all done
                    fast.release(b)
        values = torch.where(covered > 0, total / covered.clamp(min=1), torch.zeros_like(total))
        return values.to(result_dtype(x))[:, None].expand(count, channels, H, W).contiguous()
