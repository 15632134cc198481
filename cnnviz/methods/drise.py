"""D-RISE (Petsiuk et al. 2021, "Black-box Explanation of Object Detectors via Saliency Maps"), and
RISE (Petsiuk et al. 2018) on a classifier: saliency from randomly masked copies of the input.

    M_i = crop_{shift_i}(upsample_bilinear(B_i)),  B_i ∈ {0, 1}^{s×s}, P(B_i = 1) = p   (i = 1..N)
    w_i = score of the target on x ⊙ M_i
    S   = (1 / N) Σ_i w_i M_i

``cell_size`` is RISE's s (the masks' grid has s × s cells); each cell is ceil(H / s) × ceil(W / s)
input pixels, the grid is upsampled bilinearly to (s + 1) cells and cropped at a random shift of
less than one cell, so the masks' edges fall anywhere. Masked-out pixels become 0 in the model's
input space: black for a detector (``cnnviz.models.detection``, input pixels in [0, 1]), the dataset
mean for a classifier fed normalised inputs.

The score w_i: a model whose outputs are scores already (``output_is_score = True``: the detection
wrapper, whose output k is D-RISE's similarity max_j IoU · p_j[class_k] to detection k) is read as
it is — D-RISE; any other model's logits go through a softmax and w_i is the target class's
probability — RISE. A callable target is applied to the outputs. The (1 / N) makes the raw map an
average, comparable across ``n_masks`` (the papers' sums differ by that constant only).

Masks come from a generator seeded with ``seed``, the same masks for every image (so a batch gives
each image the map it gets alone), ``batch`` masked copies per forward under ``torch.inference_mode``.

Example::

    attr = get_method("drise")(n_masks=500, cell_size=8)(model, x, target=0)
    attr.values.shape   # (B, 3, H, W): the same map in every channel (an input-space map, as occlusion's)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..core.constraints import param
from ..core.passes import target_scores
from ..core.registry import register
from .base import PerturbationMethod


def rise_draws(n: int, cells: int, p: float, size: tuple[int, int], generator: torch.Generator):
    """The random part of ``n`` RISE masks: ``(n, s, s)`` Bernoulli(p) grids and ``(n,)`` y and x
    shifts below one cell. Drawn for all masks at once (small), so the masks do not depend on how
    they are later batched."""
    ch, cw = math.ceil(size[0] / cells), math.ceil(size[1] / cells)
    grids = torch.rand(n, cells, cells, generator=generator) < p
    return grids, torch.randint(0, ch, (n,), generator=generator), torch.randint(0, cw, (n,), generator=generator)


def rise_masks(grids: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size: tuple[int, int],
               device=None, dtype=torch.float32) -> torch.Tensor:
    """``(n, H, W)`` masks in [0, 1]: the s × s grids upsampled bilinearly to (s + 1) cells of
    ceil(H / s) × ceil(W / s) pixels, cropped to H × W at the shifts ``(dy, dx)``."""
    h, w = size
    cells = grids.shape[-1]
    ch, cw = math.ceil(h / cells), math.ceil(w / cells)
    up = F.interpolate(grids[:, None].to(device=device, dtype=dtype), size=((cells + 1) * ch, (cells + 1) * cw),
                       mode="bilinear", align_corners=False)
    return torch.stack([up[i, 0, int(dy[i]):int(dy[i]) + h, int(dx[i]):int(dx[i]) + w] for i in range(len(grids))])


@register("drise")
@dataclass
class DRISE(PerturbationMethod):
    main_hyperparameter = ("cell_size", (8, 16, 32))  # RISE's s: the mask grid
    renders: ClassVar[tuple[str, ...]] = ("color", "gray", "pos_sal")
    #: N, the number of masks
    n_masks: int = param(1000, min=1)
    #: s: each mask is a grid of s × s cells
    cell_size: int = param(16, min=1)
    #: probability that a cell is kept
    p: float = param(0.5, gt=0, max=1)
    seed: int = param(0, min=0)
    #: masked copies per forward
    batch: int = param(16, min=1)

    def maps(self, net, forward, x, target, which, logits):
        direct = bool(getattr(net, "output_is_score", False))
        size = tuple(x.shape[-2:])
        maps = torch.zeros(x.shape[0], *size, dtype=x.dtype, device=x.device)
        grids, dy, dx = rise_draws(self.n_masks, self.cell_size, self.p, size, torch.Generator().manual_seed(self.seed))
        for start in range(0, self.n_masks, self.batch):
            part = slice(start, min(start + self.batch, self.n_masks))
            masks = rise_masks(grids[part], dy[part], dx[part], size, x.device, x.dtype)
            for b in range(x.shape[0]):  # every image under the same masks
                out = forward(x[b:b + 1] * masks[:, None])
                scores = out if (direct or callable(target)) else out.softmax(dim=-1)
                w = target_scores(target, scores, which[b:b + 1] * len(masks) if which else []).to(x.dtype)
                maps[b] += torch.einsum("n,nhw->hw", w, masks)
        maps /= self.n_masks
        # the masks cover every channel alike: the same map in each, shaped like the input
        return maps[:, None].expand(-1, x.shape[1], -1, -1).contiguous()
