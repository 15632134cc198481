"""The random-map baseline: a control, not an explanation.

Each pixel gets an independent uniform draw in [0, 1), the same in every channel, from a generator
seeded by ``seed`` and the image's own bytes: one image gets the same map alone or in any batch, and
two images get different maps. A technique that does no better than this map on a metric (pointing
game, relevance mass, deletion / insertion, ROAD) shows no evidence of explaining the model on it;
its pointing-game accuracy is, in expectation, the share of the input the object covers (a uniform
argmax). The control of Adebayo et al. 2018 and of the ROAD / Quantus benchmarks.

Example::

    attr = get_method("random_baseline")(seed=0)(model, x, target=3)
    attr.values.shape  # (B, 3, H, W), values in [0, 1)
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from ..core.constraints import param
from ..core.maps import result_dtype
from ..core.registry import register
from .base import PerturbationMethod


@register("random_baseline")
@dataclass
class RandomBaseline(PerturbationMethod):
    renders = ("color", "gray")
    concurrent_safe = True  # one forward for the logits; the map never touches the model
    many_passes = False
    seed: int = param(0, min=0)

    def maps(self, net, forward, x, target, which, logits):
        out = torch.empty(x.shape, dtype=result_dtype(x))
        for b in range(x.shape[0]):
            image = x[b].detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
            draw = np.random.default_rng([self.seed, zlib.crc32(image)]).random(tuple(x.shape[2:]))
            out[b] = torch.from_numpy(draw).to(out.dtype).expand(x.shape[1], -1, -1)
        return out
