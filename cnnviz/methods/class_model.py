"""Class model visualisation (Simonyan, Vedaldi & Zisserman 2013, "Deep Inside Convolutional
Networks", arXiv:1312.6034, §2).

    I* = argmax_I  S_c(I) − λ ‖I‖₂²

``S_c`` is the class *logit* (not the softmax, which could rise by lowering the other classes),
``I`` the image in the model's normalised input space, started from ``init``: ``mean`` (0 in
normalised space, the dataset's mean colour: the paper's zero image of mean-subtracted input),
``zero`` (black pixels) or ``noise`` (seeded). The optimiser is built once for all ``steps`` and the
image stays a float tensor throughout, clamped to valid pixels after each step. ``λ`` multiplies
the plain sum of squares, as in the paper, so it scales with the image size. ``target`` None means
the top-1 class of the input ``x``, which is otherwise only used for its shape and device.

Example::

    attr = get_method("class_model")(input_mean=[.5] * 3, input_std=[.5] * 3)(model, x, 130)
    attr.metrics["target_prob_after"], attr.extras["final"]   # probability, uint8 picture
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..core.constraints import param
from ..core.errors import ConfigError, unknown
from ..core.passes import target_scores
from ..core.registry import register
from ..core.targets import class_indices
from .optimization import OptimizationMethod, start_image

INITS = ("mean", "zero", "noise")


@dataclass
class ClassScoreMethod(OptimizationMethod):
    """Shared by the class models: the target's per-image logit and the before / after metrics."""

    def prepare(self, model, x, target, layer, logits, read):
        idx = class_indices(target, logits)  # checks the range
        return {"target_spec": target,
                "indices": None if idx is None else [int(i) for i in idx],
                "target": () if idx is None else tuple(int(i) for i in idx)}

    def scores(self, model, img, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(img)
        return target_scores(ctx["target_spec"], logits, ctx["indices"] or []), logits

    def metrics(self, model, x, start, final, ctx):
        out = {}
        for when, img in (("before", start), ("after", final)):
            score, logits = self.scores(model, img, ctx)
            out[f"target_logit_{when}"] = float(score[0])
            if ctx["indices"] is not None:  # a callable target has no class probability
                out[f"target_prob_{when}"] = float(logits.softmax(-1)[0, ctx["indices"][0]])
        return out


@register("class_model")
@dataclass
class ClassModel(ClassScoreMethod):
    parametrization: str = "fft"
    steps: Optional[int] = None
    lr: Optional[float] = None
    snapshot_every: Optional[int] = None
    l2_weight: Optional[float] = param(None, min=0)
    init: str = param("mean", choices=INITS, kind="start image")

    #: ``pixel``: the paper's setting (Simonyan et al. §2); ``fft`` (the default): Olah et al.'s
    #: decorrelated Fourier image under the ``robust`` transforms, where the L2 penalty is not needed (the
    #: sigmoid bounds the pixels); 512 steps, because the images made in 256 still vary a lot with the
    #: seed on views the optimiser never saw (benchmarks/feature_vis.py, docs/performance.md)
    SETTINGS = {"pixel": {"steps": 30, "lr": 0.05, "snapshot_every": 3, "l2_weight": 1e-3},
                "fft": {"steps": 512, "lr": 0.05, "snapshot_every": 32, "l2_weight": 0.0, "transforms": "robust"}}

    def check_params(self):
        super().check_params()
        if self.init not in INITS:
            raise unknown("start image", self.key("init"), self.init, INITS)
        if self.l2_weight < 0:
            raise ConfigError(f"{self.key('l2_weight')} must be >= 0, got {self.l2_weight}")

    def start(self, x, generator):
        return start_image(x, self.init, self.input_mean, self.input_std, generator)

    def losses(self, model, img, ctx, generator):
        score, _ = self.scores(model, img, ctx)
        l2 = img.pow(2).flatten(1).sum(1)
        return -score + self.l2_weight * l2, {"score": score, "l2": l2}
