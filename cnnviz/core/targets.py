"""What a technique explains: a class index per image, or any callable on the logits."""
from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from .errors import ConfigError

Target = Union[None, int, Sequence[Optional[int]], Callable[[torch.Tensor], torch.Tensor]]


def class_indices(target: Target, logits: torch.Tensor) -> Optional[torch.Tensor]:
    """Per-image class indices ``(B,)``; ``None`` for a callable target; top-1 for ``None``, and
    for a ``None`` entry of a list (the images of a batch without a class of their own)."""
    if callable(target):
        return None
    batch, classes = logits.shape[0], logits.shape[-1]
    if target is None:
        return logits.argmax(dim=-1)
    scalar = isinstance(target, numbers.Integral) or (not isinstance(target, (list, tuple)) and np.ndim(target) == 0)
    if not scalar and len(target) != batch:
        raise ConfigError(f"target has {len(target)} entries for a batch of {batch} images")
    top = logits.argmax(dim=-1)
    idx = [int(target)] * batch if scalar else [int(top[i]) if t is None else int(t) for i, t in enumerate(target)]
    for t in idx:
        if not 0 <= t < classes:
            raise ConfigError(
                f"target {t} is out of range: the model has {classes} classes, "
                f"valid targets are 0..{classes - 1} (set target=<int> or target=null for top-1)"
            )
    return torch.as_tensor(idx, device=logits.device)


def target_score(target: Target, logits: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The scalar to differentiate (summed over the batch, whose images are independent in eval
    mode) and the class indices it used."""
    if callable(target):
        return target(logits).sum(), ()
    idx = class_indices(target, logits)
    return logits.gather(-1, idx[:, None]).sum(), tuple(int(i) for i in idx)
