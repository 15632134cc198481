"""Score-CAM (Wang et al. 2020, arXiv:1910.01279).

    M_k = minmax(upsample(A_k))             (channels with constant A_k are skipped: weight 0)
    s_k = softmax(f(x ⊙ M_k))_c              (a callable target is applied to the logits instead, and a
                                              model with ``output_is_score`` is read without softmax)
    map = ReLU(Σ_k s_k A_k)

Masked inputs are evaluated ``batch_size`` at a time under ``torch.inference_mode``, the masked
copies of the images of a batch side by side (masks × images, image after image): memory is bounded
by ``batch_size``, never all C masked images at once, and each image's map is the one a call on it
alone gives.

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
        flat = acts.flatten(2)
        # one row per (image, varying channel), image-major: the masked copies of several images
        # share a forward, batch_size rows at most, whatever the number of images
        rows = torch.nonzero(flat.amax(dim=2) > flat.amin(dim=2))
        scores = torch.zeros(acts.shape[:2], dtype=acts.dtype, device=acts.device)
        net, forward = forward_fn(model, x, [layer])
        with model_state_kept(net):
            for chunk in rows.split(self.batch_size):
                image, channel = chunk[:, 0], chunk[:, 1]
                up = upsample(acts[image, channel], size)
                up_lo = up.flatten(1).amin(dim=1).view(-1, 1, 1)
                up_hi = up.flatten(1).amax(dim=1).view(-1, 1, 1)
                masks = (up - up_lo) / (up_hi - up_lo).clamp(min=torch.finfo(up.dtype).tiny)
                logits = forward(x[image] * masks[:, None])
                # a callable target, or a model whose outputs are scores already (a detection's), is
                # read as it is: a softmax across detections would mean nothing
                direct = callable(target) or bool(getattr(model, "output_is_score", False))
                probs = logits if direct else logits.softmax(dim=-1)
                which = [p.target[b] for b in image.tolist()] if p.target else []
                scores[image, channel] = target_scores(target, probs, which).to(scores.dtype)
        return torch.einsum("bc,bchw->bhw", scores, acts)
