"""The result type every technique returns."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


class NonFiniteError(ValueError):
    """A technique met NaN or ±Inf: in the model's logits or in the map it computed.

    Raised where every ``Attribution`` is built, so no technique can hand on a map that would be
    drawn as a blank picture or turn every later number (probabilities, metrics) into NaN.
    """


def non_finite_counts(a: np.ndarray) -> Optional[str]:
    """``"3 NaN, 1 +Inf of 120 values"`` for an array holding non-finite values, else None."""
    if a.dtype.kind not in "fc" or np.isfinite(a).all():
        return None
    parts = [f"{int(n)} {label}" for n, label in ((np.isnan(a).sum(), "NaN"), (np.isposinf(a).sum(), "+Inf"),
                                                  (np.isneginf(a).sum(), "-Inf")) if n]
    return f"{', '.join(parts)} of {a.size} values"


def check_logits(logits: Any, method: str, layer: Optional[str] = None) -> None:
    """Raise ``NonFiniteError`` when ``logits`` (an array or a tensor) hold NaN or ±Inf. Techniques
    that compute more from the logits than the Attribution holds call it right after the forward."""
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().numpy()
    bad = non_finite_counts(np.asarray(logits))
    if bad:
        where = method + (f" at layer '{layer}'" if layer else "")
        raise NonFiniteError(
            f"{where}: the model's logits are not finite ({bad}); the model overflows or its weights hold NaN/Inf "
            "for this input: check the weights (a checkpoint saved after training diverged?) and the input's scale")


@dataclass(frozen=True)
class Attribution:
    """Raw, signed result of one technique on a batch.

    ``values``: gradient-like methods give ``(B, 3, H, W)`` in input space; CAM methods give
    ``(B, h, w)`` at the layer's resolution (the paper's map, e.g. after Grad-CAM's ReLU, never
    normalised). ``upsampled``: CAM maps resized to the input's ``(H, W)``, else ``None``. The
    arrays have the input's precision: float64 for a float64 input, float32 otherwise.

    Logits, values and the upsampled map must be finite: building an Attribution with NaN or ±Inf
    in them raises ``NonFiniteError`` naming the technique and the layer.
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
    #: further raw results written as files by ``cnnviz.output.writers`` (``writes`` specs name them):
    #: uint8 images ``(H, W[, 3])``, frame stacks ``(T, H, W, 3)``, tables ``{column: 1-D array}``
    extras: dict[str, Any] = field(default_factory=dict)
    #: for a batch of several images: what belongs to one image alone, one dict per row with any of
    #: ``warnings`` (tuple of str: all of that image's warnings, in place of the batch's, which may
    #: name images by their index), ``metrics`` and ``extras`` (added to the batch's, the row's winning)
    per_row: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        check_logits(self.logits, self.method, self.layer)  # the cause first: a map from such logits means nothing
        where = f"{self.method}" + (f" at layer '{self.layer}'" if self.layer else "")
        for label, array in (("map", self.values), ("upsampled map", self.upsampled)):
            bad = None if array is None else non_finite_counts(np.asarray(array))
            if bad:
                raise NonFiniteError(
                    f"{where}: the {label} is not finite ({bad}); the activations or gradients it is computed from "
                    "overflow or hold NaN: choose another layer (layer=...) or check the model's weights")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def row(self, i: int) -> "Attribution":
        """Image ``i`` of the batch as an Attribution of its own (a batch of one): its map, logits,
        target and upsampled map, its warnings (``per_row``'s, else the batch's), and the batch's
        metrics and extras updated with its own. The Attribution of a batch of one is returned as it is."""
        if len(self) == 1 and not self.per_row:
            if i not in (0, -1):
                raise IndexError(f"row {i} of a batch of 1")
            return self
        own = self.per_row[i] if self.per_row else {}
        return dataclasses.replace(
            self, values=self.values[i:i + 1], logits=self.logits[i:i + 1],
            target=self.target[i:i + 1] if len(self.target) == len(self) else self.target,
            upsampled=None if self.upsampled is None else self.upsampled[i:i + 1],
            warnings=tuple(own["warnings"]) if "warnings" in own else self.warnings,
            metrics={**self.metrics, **own.get("metrics", {})}, extras={**self.extras, **own.get("extras", {})},
            per_row=())

    def rows(self) -> list["Attribution"]:
        """Every image of the batch as its own Attribution (``row``)."""
        return [self.row(i) for i in range(len(self))]

    @property
    def is_cam(self) -> bool:
        return self.upsampled is not None

    @property
    def probabilities(self) -> np.ndarray:
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
