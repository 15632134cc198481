"""The result type every technique returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class Attribution:
    """Raw, signed result of one technique on a batch.

    ``values``: gradient-like methods give ``(B, 3, H, W)`` in input space; CAM methods give
    ``(B, h, w)`` at the layer's resolution (the paper's map, e.g. after Grad-CAM's ReLU, never
    normalised). ``upsampled``: CAM maps resized to the input's ``(H, W)``, else ``None``.
    """

    method: str
    values: np.ndarray
    logits: np.ndarray
    target: tuple[int, ...]
    layer: Optional[str] = None
    upsampled: Optional[np.ndarray] = None
    params: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    #: scalar diagnostics that become manifest columns (e.g. integrated gradients' completeness gap)
    metrics: dict[str, float] = field(default_factory=dict)
    #: further raw results written as files by ``cnnviz.outputs`` (``writes`` specs name them):
    #: uint8 images ``(H, W[, 3])``, frame stacks ``(T, H, W, 3)``, tables ``{column: 1-D array}``
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def is_cam(self) -> bool:
        return self.upsampled is not None

    @property
    def probabilities(self) -> np.ndarray:
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
