"""The metric contract, its inputs, and the strict registry of metric names."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, TypeVar

import numpy as np
import torch
from torch import nn

from ..core.constraints import check_fields
from ..core.registry import Registry


@dataclass(frozen=True)
class Sample:
    """What a metric sees of one map: no config, no technique object.

    ``values``: the raw map of one image, ``(C, H, W)`` for input-space techniques or ``(h, w)`` for
    CAMs; ``cam``: a CAM's map upsampled to the input's ``(H, W)``, else ``None``. ``x``: the
    normalised ``(1, C, H, W)`` input. ``forward``: logits of a batch, without gradients.
    ``explain``: the same technique's map (as ``saliency`` reduces it) on another model, for the
    randomisation test. ``baseline``: the technique's reference input (integrated gradients).
    ``mask``: boolean ``(H, W)`` object region in input pixels (pointing game). ``explain_input``:
    the same technique, model, layer and class on other inputs ``(n, C, H, W)`` -> their raw maps
    as ``values`` / ``cam`` hold them, ``(n, C, H, W)`` for input-space techniques or ``(n, H, W)``
    for CAMs upsampled (max-sensitivity, which needs maps of perturbed inputs).
    """

    method: str
    values: np.ndarray
    cam: Optional[np.ndarray]
    x: torch.Tensor
    target: Optional[int]
    forward: Callable[[torch.Tensor], torch.Tensor]
    model: Optional[nn.Module] = None
    explain: Optional[Callable[[nn.Module], np.ndarray]] = None
    baseline: Optional[torch.Tensor] = None
    mask: Optional[np.ndarray] = None
    explain_input: Optional[Callable[[torch.Tensor], np.ndarray]] = None


@dataclass
class MetricResult:
    #: manifest columns; an empty dict means "does not apply to this map"
    values: dict[str, float] = field(default_factory=dict)
    #: raw results for the ``writes`` specs (tables ``{column: 1-D array}``)
    extras: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    #: what the metric raised on this sample (``Metric.batch``); the caller records it as the row's
    #: warning, so one map that cannot be measured does not cost the others their numbers
    error: Optional[Exception] = None


def saliency(sample: Sample, reduce: str = "abs") -> np.ndarray:
    """The ``(H, W)`` map a metric ranks pixels by: a CAM's upsampled map as it is; an input-space
    map reduced over channels, ``abs`` = Σ_c |g_c| (the gray render before clipping: evidence of
    either sign), ``signed`` = Σ_c g_c (positive evidence first, for IG / LRP relevance)."""
    if sample.cam is not None:
        return np.nan_to_num(sample.cam.astype(np.float64))
    v = sample.values.astype(np.float64)
    if v.ndim == 2:
        return np.nan_to_num(v)
    return np.nan_to_num(np.abs(v).sum(axis=0) if reduce == "abs" else v.sum(axis=0))


@dataclass
class Metric:
    """A metric: its dataclass fields are its options."""

    name: ClassVar[str] = ""
    #: manifest columns this metric can fill (the summary and the gallery read them)
    columns: ClassVar[tuple[str, ...]] = ()
    #: ``"<writer>:<key>"`` specs for its extras, see ``cnnviz.output.writers``
    writes: ClassVar[tuple[str, ...]] = ()
    #: True: larger values are better (used to rank in the summary)
    higher_is_better: ClassVar[dict[str, bool]] = {}
    #: True: the metric compares maps with those of a second model of the same architecture (the data
    #: randomization test's copy trained on shuffled labels), which it cannot build itself, since
    #: metrics see no config: the caller loads it with ``model.weights`` = ``reference_weights()`` and
    #: hands it over with ``bind`` before measuring (``evaluate.bind_references``)
    needs_reference_model: ClassVar[bool] = False

    def __post_init__(self) -> None:
        # the library API refuses what the runner refuses, under the same config key
        check_fields(self, f"metrics.{self.name or type(self).__name__}")
        self.check()

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def reference_weights(self) -> Optional[str]:
        """The ``model.weights`` value of the reference model (``needs_reference_model``), else None."""
        return None

    def bind(self, reference: nn.Module) -> "Metric":
        """Hand over the reference model (``needs_reference_model``); returns the metric."""
        raise TypeError(f"metric {self.name or type(self).__name__} compares no second model; nothing to bind")

    def check(self) -> None:
        """Raise ``ConfigError`` for options that cannot work together, before any work is done;
        each field's own range or choices are declared with ``constraints.param``."""

    def __call__(self, sample: Sample) -> MetricResult:
        raise NotImplementedError

    def batch(self, samples: list[Sample]) -> list[MetricResult]:
        """One result per sample, in order, each equal to ``self(sample)``. A sample on which the
        metric raises gets a result carrying the exception (``error``) and the others are still
        measured. Metrics whose model calls can be shared between maps (deletion, insertion)
        override this to run the samples together."""
        out = []
        for sample in samples:
            try:
                out.append(self(sample))
            except Exception as e:  # this sample's failure only; the caller turns it into its row's warning
                out.append(MetricResult(error=e))
        return out


M = TypeVar("M", bound=type)


def _load() -> None:
    from .. import metrics  # noqa: F401  (importing registers every metric)


METRICS = Registry("metric", "metrics", _load)


def register_metric(name: str) -> Callable[[M], M]:
    """Class decorator adding a metric under ``name``; a duplicate name raises."""
    return METRICS.register(name)


def get_metric(name: str) -> type:
    """The metric class registered as ``name``; an unknown name lists close matches."""
    return METRICS.get(name)


def list_metrics() -> list[str]:
    return METRICS.names()


def metric_columns() -> dict[str, bool]:
    """Every metric column of every registered metric -> whether higher is better."""
    out: dict[str, bool] = {}
    for cls in (METRICS.get(n) for n in METRICS.names()):
        for col in cls.columns:
            out[col] = cls.higher_is_better.get(col, True)
    return out
