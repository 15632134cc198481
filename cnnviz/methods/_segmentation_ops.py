"""Segmentation from saliency: pure array helpers (numpy / OpenCV), no model, no config.

The steps of Simonyan et al. 2013 §6 (weakly supervised object localisation) — saliency map,
quantile seeds, GrabCut, largest connected component, bounding box — and the per-pixel labelling of
class-evidence maps. Boxes are ``(x0, y0, x1, y1)`` in pixel-edge coordinates: ``x0`` is the left
edge of the leftmost column, ``x1`` the right edge of the rightmost one, so the width is
``x1 - x0`` and a box scales with the image.

Example::

    seeds = quantile_seeds(saliency, q_fg=0.95, q_bg=0.30)
    mask, warnings = grabcut(picture, seeds, iterations=5, seed=0)
    obj = largest_component(mask)
    bounding_box(obj)   # (x0, y0, x1, y1) or None for an empty mask
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.inputspace import stats

# OpenCV's GrabCut labels (cv2.GC_BGD ... cv2.GC_PR_FGD), fixed by its API
BGD, FGD, PR_BGD, PR_FGD = 0, 1, 2, 3
#: GrabCut fits a 5-component Gaussian mixture to each side and k-means needs as many samples
GMM_COMPONENTS = 5

Box = tuple[int, int, int, int]


def saliency_map(values: np.ndarray, upsampled: Optional[np.ndarray]) -> np.ndarray:
    """``(B, H, W)`` map from an Attribution's arrays: a CAM's upsampled map as it is; an input-space
    ``(B, C, H, W)`` gradient reduced as Simonyan et al. do, ``max_c |g_c|``."""
    # float64 maps (from a float64 input) stay float64, the rest become float32
    dtype = np.float64 if np.asarray(values).dtype == np.float64 else np.float32
    if upsampled is not None:
        return np.asarray(upsampled, dtype=dtype)
    values = np.asarray(values)
    if values.ndim != 4:
        raise ConfigError(f"a saliency source must give (B, C, H, W) input-space values or an upsampled map, got shape {values.shape}")
    return np.abs(values).max(axis=1).astype(dtype)


def check_quantiles(q_fg: float, q_bg: float, where: str) -> None:
    if not 0.0 <= q_bg < q_fg <= 1.0:
        raise ConfigError(f"{where}: need 0 <= q_bg < q_fg <= 1, got q_bg={q_bg}, q_fg={q_fg}")


def quantile_seeds(saliency: np.ndarray, q_fg: float = 0.95, q_bg: float = 0.30) -> np.ndarray:
    """GrabCut's initial labels from an ``(H, W)`` saliency map (Simonyan et al. 2013 §6):
    foreground (``FGD``) at or above the ``q_fg`` quantile, background (``BGD``) at or below the
    ``q_bg`` quantile, and between them probable foreground above the midpoint quantile
    ``(q_fg + q_bg) / 2``, probable background below it. A pixel tied with the background level is
    background (CAMs after a ReLU have many zeros)."""
    s = np.asarray(saliency, dtype=np.float64)
    t_fg, t_mid, t_bg = np.quantile(s, [q_fg, (q_fg + q_bg) / 2, q_bg])
    seeds = np.where(s > t_mid, PR_FGD, PR_BGD).astype(np.uint8)
    seeds[(s >= t_fg) & (s > t_bg)] = FGD
    seeds[s <= t_bg] = BGD
    return seeds


def grabcut(picture: np.ndarray, seeds: np.ndarray, iterations: int = 5, seed: int = 0) -> tuple[np.ndarray, tuple[str, ...]]:
    """OpenCV's GrabCut (Rother et al. 2004) on a uint8 ``(H, W, 3)`` picture from the ``seeds``
    labels (``GC_INIT_WITH_MASK``); returns the foreground mask (definite or probable) and warnings.
    Deterministic given ``seed`` (GrabCut's k-means initialisation draws from OpenCV's RNG).

    When one side has fewer than 5 pixels the colour models cannot be fitted: the seeds' own
    foreground is returned, with a warning saying so."""
    import cv2

    seeds = np.ascontiguousarray(seeds, dtype=np.uint8)
    fg_side = int(np.isin(seeds, (FGD, PR_FGD)).sum())
    bg_side = int(np.isin(seeds, (BGD, PR_BGD)).sum())
    if fg_side < GMM_COMPONENTS or bg_side < GMM_COMPONENTS or iterations < 1:
        why = (f"iterations={iterations}" if iterations < 1 else
               f"{fg_side} foreground / {bg_side} background seed pixels (GrabCut needs >= {GMM_COMPONENTS} each)")
        return np.isin(seeds, (FGD, PR_FGD)), (f"GrabCut skipped ({why}); the mask is the seeds' foreground",)
    mask = seeds.copy()
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(int(seed))
    cv2.grabCut(np.ascontiguousarray(picture, dtype=np.uint8), mask, None, bgd_model, fgd_model, int(iterations),
                cv2.GC_INIT_WITH_MASK)
    return np.isin(mask, (FGD, PR_FGD)), ()


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (all False when the mask is empty);
    among equal sizes the first in scan order."""
    import cv2

    count, labels, statistics, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    biggest = 1 + int(np.argmax(statistics[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def bounding_box(mask: np.ndarray) -> Optional[Box]:
    """``(x0, y0, x1, y1)`` pixel-edge box of the True pixels, ``None`` when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def pictures(x: torch.Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> np.ndarray:
    """uint8 ``(B, H, W, 3)`` pictures a normalised input shows, p = x·std + mean (``None``: the
    input is pixels in [0, 1] already, as in ``cnnviz.core.inputspace``)."""
    m, s = stats(x, mean, std)
    p = (x.detach() * s + m).clamp(0, 1)
    return (p.permute(0, 2, 3, 1).cpu().double().numpy() * 255.0).round().astype(np.uint8)


# --- drawing on arrays (uint8 in, uint8 out), for the files a segmentation writes ----------------

#: Label colours: background black, then the ten colours of matplotlib's tab10 (cycled).
PALETTE = np.array(
    [[0, 0, 0], [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
     [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]],
    dtype=np.uint8,
)


def slot_colors(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 colours of label slots 1..n (slot 0 is the background)."""
    return PALETTE[1 + np.arange(n) % (len(PALETTE) - 1)]


def colour_labels(slots: np.ndarray) -> np.ndarray:
    """``(H, W)`` slot indices (0 = background, k = k-th class) -> ``(H, W, 3)`` uint8 colours."""
    colors = np.concatenate([PALETTE[:1], slot_colors(int(slots.max(initial=0)))])
    return colors[slots]


def blend(picture: np.ndarray, colours: np.ndarray, where: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``picture`` with ``colours`` (``(H, W, 3)`` or one RGB triple) blended in at ``alpha`` where
    ``where`` is True."""
    out = picture.astype(np.float64)
    colours = np.broadcast_to(np.asarray(colours, dtype=np.float64), out.shape)
    out[where] = (1 - alpha) * out[where] + alpha * colours[where]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_box(picture: np.ndarray, box: Optional[Box], colour: Sequence[int] = (255, 0, 0), width: int = 2) -> np.ndarray:
    """A copy of ``picture`` with the box's outline drawn inside its edges (``width`` pixels)."""
    out = picture.copy()
    if box is None:
        return out
    x0, y0, x1, y1 = box
    w = max(1, min(width, (x1 - x0 + 1) // 2, (y1 - y0 + 1) // 2))
    for rows, cols in ((slice(y0, y0 + w), slice(x0, x1)), (slice(y1 - w, y1), slice(x0, x1)),
                       (slice(y0, y1), slice(x0, x0 + w)), (slice(y0, y1), slice(x1 - w, x1))):
        out[rows, cols] = colour
    return out


@dataclass(frozen=True)
class LabelLegend:
    """A coloured label map and the class each colour stands for. A technique does not know class
    names; the ``legend`` writer (a ``"legend:<key>"`` spec in ``writes``, ``cnnviz.output.writers``)
    draws the legend with the names the item carries (``<stem>_<key>.png``)."""

    image: np.ndarray  # (H, W, 3) uint8, as ``colour_labels`` makes it
    classes: tuple[int, ...]
    colors: np.ndarray  # (K, 3) uint8, the colour of ``classes[k]``


def label_slots(evidence: np.ndarray, threshold: float) -> np.ndarray:
    """Per-pixel labels from ``(K, H, W)`` evidence normalised to [0, 1]: ``1 + argmax_k`` where
    the largest evidence reaches ``threshold``, else 0 (background). Ties go to the earlier class."""
    top = evidence.max(axis=0)
    return np.where(top >= threshold, 1 + evidence.argmax(axis=0), 0).astype(np.int64)


def normalise(maps: np.ndarray) -> np.ndarray:
    """Each ``(h, w)`` map of a ``(K, h, w)`` stack divided by its maximum after clipping at zero
    (class evidence is its positive part); an all-zero map stays zero."""
    maps = np.clip(np.asarray(maps, dtype=np.float64), 0, None)
    top = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(top > 0, maps / np.where(top > 0, top, 1), 0.0)
