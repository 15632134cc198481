"""Score-CAM (Wang et al. 2020, arXiv:1910.01279).

    M_k = minmax(upsample(A_k))             (channels with constant A_k are skipped: weight 0)
    s_k = softmax(f(x ⊙ M_k))_c              (a callable target is applied to the logits instead)
    map = ReLU(Σ_k s_k A_k)

Masked inputs are evaluated ``batch_size`` channels at a time under ``torch.inference_mode``:
memory is bounded by the batch, never all C masked images at once.

Example::

    attr = get_method("scorecam")(batch_size=16)(model, x, target=243, layer="bn2")
"""
from dataclasses import dataclass

import torch

from ..core.constraints import param
from ..core.errors import ConfigError
from ..core.hooks import model_state_kept
from ..speed.fastpath import forward_fn
from ..core.maps import upsample
from ..core.passes import target_scores
from ..core.registry import register
from .base import CAMMethod


@register("scorecam")
@dataclass
class ScoreCAM(CAMMethod):
    many_passes = True
    uses_gradients = False
    batch_size: int = param(16, min=1)

    def layer_map(self, model, x, p, layer, target):
        if self.batch_size < 1:
            raise ConfigError("method.scorecam.batch_size must be >= 1")
        acts = p.activations[layer]
        size = tuple(x.shape[-2:])
        maps = []
        net, forward = forward_fn(model, x, [layer])
        with model_state_kept(net):
            for b in range(acts.shape[0]):
                a = acts[b]
                lo, hi = a.flatten(1).amin(dim=1), a.flatten(1).amax(dim=1)
                scores = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
                varying = torch.nonzero(hi > lo)[:, 0]
                for chunk in varying.split(self.batch_size):
                    up = upsample(a[chunk], size)
                    up_lo = up.flatten(1).amin(dim=1).view(-1, 1, 1)
                    up_hi = up.flatten(1).amax(dim=1).view(-1, 1, 1)
                    masks = (up - up_lo) / (up_hi - up_lo).clamp(min=torch.finfo(up.dtype).tiny)
                    logits = forward(x[b : b + 1] * masks[:, None])
                    probs = logits if callable(target) else logits.softmax(dim=-1)
                    scores[chunk] = target_scores(target, probs, p.target[b : b + 1]).to(scores.dtype)
                maps.append(torch.einsum("c,chw->hw", scores, a))
        return torch.stack(maps)
