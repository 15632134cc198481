"""ROAD, RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci 2022, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods", ICML, arXiv:2202.00449).

Deletion with a substrate that leaks no shape: the removed pixels are filled by *noisy linear
imputation*, each removed pixel the weighted mean of its 8 neighbours (weight 1/6 for the four
direct neighbours, 1/12 for the four diagonal ones; neighbours outside the image are left out),
which for all removed pixels together is one sparse linear system per image and percentage,

    for every removed pixel i:   Σ_{j ∈ N(i)} w_ij · (y_i − y_j) = 0,   y_j = x_j for kept pixels j

solved for all channels at once (one LU factorisation, one right-hand side per channel), then
Gaussian noise of standard deviation ``noise`` is added to the imputed pixels (the paper's 0.01).
The system is a weighted graph Laplacian with the kept pixels as boundary, so it has one solution
as long as one pixel is kept (percentages below 100).

Pixels are ranked by the map (``base.saliency``; ties in a seeded random order). MoRF removes the
``p`` % most salient pixels, LeRF the ``p`` % least salient, for each ``p`` in ``percentages``
(the paper's 10, 20, …, 90). The curves are the target's softmax probability on the imputed
images; the columns are their means over the percentages: ``road_morf`` (lower is better: removing
the evidence kills the class) and ``road_lerf`` (higher is better). The paper reports accuracy
over a data set at each percentage; per image the probability is the natural analogue, and the
mean of the rows' curves is the data set's curve.

Imputation happens in the model's (normalised) input space: the linear part commutes with the
per-channel normalisation, the noise's scale is that of the model's input. The imputed images of
every map go through the model together, ``batch_size`` per forward pass.

Example::

    morf, lerf = road_curves(model, x, cam, target=243, percentages=[10, 50, 90])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..core.constraints import param
from ..core.errors import ConfigError
from .base import Metric, MetricResult, Sample, register_metric, saliency
from .perturbation import _check_map, _direct, ranking

#: (row offset, column offset, weight) of the 8 neighbours, the paper's weights (they sum to 1)
NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6),
              (0, 1, 1 / 6), (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12))
ORDERS = ("morf", "lerf")


def imputation_system(image: np.ndarray, removed: np.ndarray):
    """``(A, b, unknown)`` of the linear imputation of ``image`` ``(C, H, W)`` where the boolean
    ``removed`` ``(H, W)`` is set: ``A`` sparse ``(m, m)``, ``b`` ``(m, C)``, ``unknown`` the flat
    indices of the ``m`` removed pixels, so that ``A @ y = b`` is the system of the module docstring."""
    from scipy import sparse

    c, h, w = image.shape
    flat = image.reshape(c, h * w)
    unknown = np.flatnonzero(removed)
    m = unknown.size
    pos = np.full(h * w, -1, dtype=np.int64)
    pos[unknown] = np.arange(m)
    r, col = np.divmod(unknown, w)
    diag = np.zeros(m)
    rows, cols, data = [], [], []
    b = np.zeros((m, c))
    for dr, dc, weight in NEIGHBOURS:
        rr, cc = r + dr, col + dc
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        i = np.flatnonzero(inside)
        j = rr[inside] * w + cc[inside]
        diag[i] += weight
        hole = pos[j] >= 0
        rows.append(i[hole])
        cols.append(pos[j[hole]])
        data.append(np.full(int(hole.sum()), -weight))
        np.add.at(b, i[~hole], weight * flat[:, j[~hole]].T)
    rows.append(np.arange(m))
    cols.append(np.arange(m))
    data.append(diag)
    a = sparse.csc_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m))
    return a, b, unknown


def impute(image: np.ndarray, removed: np.ndarray, noise: float = 0.01,
           rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """``image`` ``(C, H, W)`` with the ``removed`` pixels replaced by noisy linear imputation
    (float64); ``noise`` 0 gives the plain linear imputation."""
    from scipy.sparse.linalg import splu

    image = np.asarray(image, dtype=np.float64)
    removed = np.asarray(removed, dtype=bool)
    if removed.shape != image.shape[1:]:
        raise ValueError(f"removed-pixel mask of shape {removed.shape} does not match the image's {image.shape[1:]}")
    out = image.copy()
    if not removed.any():
        return out
    if removed.all():
        raise ValueError("every pixel is removed: linear imputation needs at least one kept pixel (percentages < 100)")
    a, b, unknown = imputation_system(image, removed)
    # one factorisation for every channel; A is symmetric positive definite (symmetric weights, kept
    # pixels on the boundary), so SuperLU's symmetric mode without pivoting is exact and twice as fast
    y = splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}).solve(b)
    if noise > 0:
        y = y + noise * (rng or np.random.default_rng(0)).standard_normal(y.shape)
    out.reshape(image.shape[0], -1)[:, unknown] = y.T
    return out


def road_inputs(x: torch.Tensor, saliency_map: np.ndarray, percentages: Sequence[float], noise: float = 0.01,
                seed: int = 0) -> torch.Tensor:
    """The imputed copies of ``x`` ``(1, C, H, W)``: MoRF at each percentage, then LeRF at each,
    ``(2 · len(percentages), C, H, W)`` like ``x``. The noise is drawn from ``seed`` alone, so a map
    gets the same images whatever else is measured with it."""
    _check_map(saliency_map, x)
    h, w = saliency_map.shape
    order = ranking(saliency_map, seed)  # most salient first
    image = x[0].detach().double().cpu().numpy()
    rng = np.random.default_rng(seed)
    out = []
    for kind in ORDERS:
        ranked = order if kind == "morf" else order[::-1]
        for p in percentages:
            removed = np.zeros(h * w, dtype=bool)
            removed[ranked[:int(round(p / 100 * h * w))]] = True
            out.append(impute(image, removed.reshape(h, w), noise, rng))
    return torch.from_numpy(np.stack(out)).to(device=x.device, dtype=x.dtype)


def target_scores(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, target: int,
                  batch_size: int, scores: bool = False) -> np.ndarray:
    """The target's softmax probability (``scores``: the raw output) of each image, float64,
    ``batch_size`` images per forward pass."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        with torch.no_grad():
            logits = forward(images[start:start + batch_size]).double()
        if not 0 <= int(target) < logits.shape[-1]:
            raise IndexError(f"target class {target} is out of range for a model with {logits.shape[-1]} classes")
        p = logits if scores else torch.softmax(logits, dim=-1)
        out.append(p[:, int(target)].cpu().numpy())
    return np.concatenate(out)


def road_curves(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, saliency_map: np.ndarray,
                target: int, percentages: Sequence[float] = tuple(range(10, 100, 10)), noise: float = 0.01,
                seed: int = 0, batch_size: int = 16, scores: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(MoRF curve, LeRF curve)``: the target probability at each percentage of removed pixels."""
    probs = target_scores(forward, road_inputs(x, saliency_map, percentages, noise, seed), target, batch_size, scores)
    return probs[:len(percentages)], probs[len(percentages):]


@register_metric("road")
@dataclass
class Road(Metric):
    columns = ("road_morf", "road_lerf")
    higher_is_better = {"road_morf": False, "road_lerf": True}
    writes = ("csv:road_curve", "plot:road_curve")
    #: percent of the pixels removed at each point of the curves, each in (0, 100)
    percentages: list[float] = param(default_factory=lambda: [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0],
                                     gt=0, lt=100)
    #: standard deviation of the Gaussian noise added to the imputed pixels (model input space)
    noise: float = param(0.01, min=0)
    batch_size: int = param(16, min=1)
    #: how an input-space map (C, H, W) becomes one value per pixel, see ``base.saliency``
    reduce: str = param("abs", choices=("abs", "signed"), kind="reduction")
    #: order of pixels with equal map values, and the imputation noise
    seed: int = param(0, min=0)

    def check(self) -> None:
        if not self.percentages:
            raise ConfigError("metrics.road.percentages is empty; give percents in (0, 100), e.g. [10, 20, 30]")
        bad = [p for p in self.percentages if not 0 < float(p) < 100]
        if bad:
            raise ConfigError(f"metrics.road.percentages must lie in (0, 100) (100 % leaves nothing to impute from), "
                              f"got {bad}")

    def _prepare(self, sample: Sample) -> torch.Tensor:
        x = sample.x[:1].detach()
        return road_inputs(x, saliency(sample, self.reduce), [float(p) for p in self.percentages], self.noise, self.seed)

    def _result(self, probs: np.ndarray) -> MetricResult:
        n = len(self.percentages)
        morf, lerf = probs[:n].copy(), probs[n:].copy()
        return MetricResult({"road_morf": float(morf.mean()), "road_lerf": float(lerf.mean())},
                            {"road_curve": {"percentage": np.array([float(p) for p in self.percentages]),
                                            "morf": morf, "lerf": lerf}})

    def __call__(self, sample: Sample) -> MetricResult:
        if sample.target is None:
            return MetricResult(warnings=("road: needs a class target, skipped",))
        return self._result(target_scores(sample.forward, self._prepare(sample), sample.target, self.batch_size,
                                          _direct(sample)))

    def batch(self, samples: list[Sample]) -> list[MetricResult]:
        """The imputed images of every sample with the same ``forward`` go through the model
        together, ``batch_size`` per pass; a sample that cannot be prepared is left out with its
        error, and if a shared pass fails each of its samples is measured alone."""
        results: list[Optional[MetricResult]] = [None] * len(samples)
        groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for i, sample in enumerate(samples):
            if sample.target is None:
                results[i] = MetricResult(warnings=("road: needs a class target, skipped",))
                continue
            try:
                images = self._prepare(sample)
            except Exception as e:  # this sample's own failure
                results[i] = MetricResult(error=e)
                continue
            key = (sample.forward, tuple(images.shape[1:]), images.device, images.dtype, _direct(sample))
            groups.setdefault(key, []).append((i, images))
        for (forward, *_, direct), members in groups.items():
            try:
                every = torch.cat([images for _, images in members])
                logits = []
                for start in range(0, every.shape[0], self.batch_size):
                    with torch.no_grad():
                        logits.append(forward(every[start:start + self.batch_size]).double())
                out = torch.cat(logits)
                per = 2 * len(self.percentages)
                for k, (i, _) in enumerate(members):
                    target = int(samples[i].target)
                    if not 0 <= target < out.shape[-1]:
                        raise IndexError(f"target class {target} is out of range for a model with {out.shape[-1]} classes")
                    rows = out[k * per:(k + 1) * per]
                    p = rows if direct else torch.softmax(rows, dim=-1)
                    results[i] = self._result(p[:, target].cpu().numpy())
            except Exception:
                # a shared pass has no single culprit: alone, each sample fails or succeeds on its own
                for i, res in zip((i for i, _ in members), Metric.batch(self, [samples[i] for i, _ in members])):
                    results[i] = res
        return results  # type: ignore[return-value]  (every index was filled above)
