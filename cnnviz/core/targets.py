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


class OutputScore:
    """A target that is one continuous output of the model, not a class: each image's score is
    ``output[:, index]``, taken as it is (no softmax).

    It is a callable on the model's output, which the call contract already accepts, so every
    technique runs it unchanged and treats it as a raw score: Score-CAM weighs by the output itself
    instead of a softmax probability, and the class-probability metrics (deletion, insertion) skip
    it with a warning instead of measuring a probability that does not exist. ``kind`` and ``label``
    say what the output is (``output`` / ``output 3``; ``similar_to`` / ``similar_to ref.jpg``) and
    ``request`` how it was asked for, which is what the manifest's ``target_request`` records.

    Example: the third output of a regression head, ``OutputScore(3, "output", "output 3", "{output: 3}")``.
    """

    def __init__(self, index: int, kind: str, label: str, request: str):
        self.index, self.kind, self.label, self.request = int(index), str(kind), str(label), str(request)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.ndim != 2 or not 0 <= self.index < output.shape[1]:
            raise ConfigError(f"target {self.request}: the model's output has shape {tuple(output.shape)}, "
                              f"there is no output {self.index}")
        return output[:, self.index]

    def _key(self) -> tuple:
        return (self.index, self.kind, self.label, self.request)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OutputScore) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return self.request

    def __repr__(self) -> str:
        return f"OutputScore({self.index}, {self.kind!r}, {self.label!r}, {self.request!r})"

    def columns(self, output: np.ndarray) -> dict:
        """The manifest's target columns for one image's ``(1, K)`` output: the output index and
        what it is, its value, and no class, prediction or probability (none exists)."""
        return {"target": self.index, "target_name": self.label, "target_kind": self.kind,
                "target_value": float(output[0, self.index]), "target_prob": None,
                "predicted": None, "predicted_name": "", "predicted_prob": None}
