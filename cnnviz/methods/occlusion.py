"""Occlusion (Zeiler & Fergus 2014, arXiv:1311.2901 §4.2).

A ``window`` × ``window`` patch (all channels) set to ``baseline`` (in the model's normalised input
space; 0 is the mean colour) slides with ``stride``; each pixel's attribution is the mean, over the
windows that cover it, of the drop in the target score y_c(x) − y_c(x occluded). Pixels that no
window covers get 0. Occluded images are evaluated ``perturbations_per_eval`` at a time under
``torch.inference_mode``. With ``incremental`` (default) the leading convolution / pooling layers
run only on the rectangle each window changes (``cnnviz.methods._occlusion_incremental``; same scores up to float
rounding, checked against full forwards on the first batch of every image, else full forwards).

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

    def image_map(self, net, forward, x, b, target, which, logits):
        H, W = x.shape[-2:]
        boxes = [(i, j) for i in window_starts(H, self.window, self.stride) for j in window_starts(W, self.window, self.stride)]
        base = target_scores(target, logits[b:b + 1], which)[0]
        total = torch.zeros(H, W, dtype=torch.float64, device=x.device)
        count = torch.zeros(H, W, dtype=torch.float64, device=x.device)
        # the model itself runs on contiguous tensors, its fast copy on channels-last ones
        x1 = x[b:b + 1] if net is forward else x[b:b + 1].contiguous(memory_format=torch.channels_last)
        # hooks on the model (someone's instrumentation) must see every layer run: full forwards
        use = self.incremental and not instrumented(net)
        fast = IncrementalOcclusion.build(net, x1, self.window, boxes) if use else None
        for start in range(0, len(boxes), self.perturbations_per_eval):
            chunk = boxes[start:start + self.perturbations_per_eval]
            if fast is not None and start > 0:
                logits_chunk = fast.logits(chunk, self.baseline)
            else:
                batch = x[b:b + 1].repeat(len(chunk), 1, 1, 1)
                for n, (i, j) in enumerate(chunk):
                    batch[n, :, i:i + self.window, j:j + self.window] = self.baseline
                logits_chunk = forward(batch)
                if fast is not None and not _agrees(fast.logits(chunk, self.baseline), logits_chunk):
                    log.warning("occlusion: incremental inference disagrees with full forwards on %s; "
                                "running full forwards", type(net).__name__)
                    fast = None
            drops = (base - target_scores(target, logits_chunk, which)).double()
            for n, (i, j) in enumerate(chunk):
                total[i:i + self.window, j:j + self.window] += drops[n]
                count[i:i + self.window, j:j + self.window] += 1
        values = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
        return values.to(result_dtype(x)).expand(x.shape[1], H, W)
