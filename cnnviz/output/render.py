"""Pure rendering: arrays in, uint8 images out. Nothing here sees a model or a config."""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from .options import RenderOptions, colormap_names  # noqa: F401  (the renderers' options, declared once)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _scaled_uint8(a: np.ndarray, lo: float, scale: float) -> np.ndarray:
    """``rint((a - lo) * scale)`` clipped to [0, 255], as uint8, ``a`` a float32 array changed in place.
    Float32 suffices for 256 levels (it differs from float64 by one level, only where a value sits
    within float32 rounding of a .5 tie) and halves the memory traffic of the gradient renders, which
    run for every item."""
    a -= np.float32(lo)
    a *= np.float32(scale)
    np.rint(a, out=a)
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


def _hwc32(g: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> a new C-contiguous float32 ``(H, W, C)`` array (the PNG's own layout)."""
    return np.array(np.transpose(g, (1, 2, 0)), dtype=np.float32, order="C")


def colored_gradient(g: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` gradient -> ``(H, W, 3)`` uint8, min-max over all channels."""
    lo, hi = float(g.min()), float(g.max())
    if not hi > lo:
        return np.zeros((*g.shape[1:], g.shape[0]), np.uint8)
    return _scaled_uint8(_hwc32(g), lo, 255.0 / (hi - lo))


def _percentile(a: np.ndarray, q: float) -> float:
    """``np.percentile(a, q)`` (its default linear interpolation) from one partition at the lower rank
    and the minimum above it: faster than numpy's own, which partitions at both ranks."""
    flat = a.ravel()
    rank = q / 100.0 * (flat.size - 1)
    k = int(np.floor(rank))
    part = np.partition(flat, k)
    lo = float(part[k])
    hi = float(part[k + 1:].min()) if k + 1 < flat.size else lo
    t = rank - k
    return lo + (hi - lo) * t if t < 0.5 else hi - (hi - lo) * (1 - t)


def grayscale_gradient(g: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """Sum of |g| over channels, clipped at the given percentile -> ``(H, W)`` uint8."""
    m = np.abs(g, dtype=np.float32).sum(axis=0, dtype=np.float32)
    top = _percentile(m, percentile)
    top = top if top > 0 else float(m.max())  # a gradient on under 1% of pixels stays visible
    return _scaled_uint8(m, 0.0, 255.0 / top) if top > 0 else np.zeros(m.shape, np.uint8)


def positive_saliency(g: np.ndarray) -> np.ndarray:
    """max(g, 0) / max(g) as ``(H, W, 3)`` uint8."""
    top = float(g.max())
    if not top > 0:
        return np.zeros((*g.shape[1:], g.shape[0]), np.uint8)
    hwc = _hwc32(g)
    np.maximum(hwc, 0, out=hwc)
    return _scaled_uint8(hwc, 0.0, 255.0 / top)


def negative_saliency(g: np.ndarray) -> np.ndarray:
    """max(-g, 0) / max(-g) as ``(H, W, 3)`` uint8."""
    return positive_saliency(-g)


def cam_gray(cam: np.ndarray) -> np.ndarray:
    """``(H, W)`` map min-max normalised to uint8."""
    return _to_uint8(_minmax(cam))


@functools.lru_cache(maxsize=32)
def _lut(cmap: str) -> np.ndarray:
    """The colormap's N colours as uint8 RGB0 packed in one uint32 each, ``(N,)``."""
    from matplotlib import colormaps

    colours = colormaps[cmap]
    rgb0 = np.zeros((colours.N, 4), np.uint8)
    rgb0[:, :3] = _to_uint8(colours(np.arange(colours.N))[:, :3])
    return rgb0.view(np.uint32).ravel()


def _through_colormap(v: np.ndarray, cmap: str) -> np.ndarray:
    """``v`` in [0, 1] -> ``(..., 3)`` uint8, the colours matplotlib's ``colormaps[cmap](v)`` gives
    (it indexes its N-colour table at ``int(v * N)``, 1.0 -> N - 1): a table lookup, much faster."""
    if not np.isfinite(v).all():  # matplotlib's "bad" colour for NaN
        from matplotlib import colormaps

        return _to_uint8(colormaps[cmap](v)[..., :3])
    lut = _lut(cmap)
    index = (v * len(lut)).astype(np.intp)
    np.minimum(index, len(lut) - 1, out=index)
    return lut.take(index).view(np.uint8).reshape(*v.shape, 4)[..., :3]  # one lookup per pixel, not per channel


def colorize(cam: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Min-max normalised map through a matplotlib colormap -> ``(H, W, 3)`` uint8."""
    return _through_colormap(_minmax(cam), cmap)


def cam_heatmap(cam: np.ndarray, cmap: str = "jet") -> np.ndarray:
    return colorize(cam, cmap)


def cam_on_image(cam: np.ndarray, image: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Blend the colorised map over a uint8 ``(H, W, 3)`` image of the same size."""
    if cam.shape != image.shape[:2]:
        raise ValueError(f"map of shape {cam.shape} does not match image of shape {image.shape[:2]}")
    blend = colorize(cam, cmap).astype(np.float32)
    blend *= np.float32(alpha)
    blend += np.multiply(image, np.float32(1 - alpha), dtype=np.float32)
    np.rint(blend, out=blend)
    np.clip(blend, 0, 255, out=blend)
    return blend.astype(np.uint8)


def relevance_heatmap(r: np.ndarray, cmap: str = "seismic") -> np.ndarray:
    """``(C, H, W)`` relevance summed over channels, through a diverging colormap centred on zero:
    the largest |R| maps to the ends, zero to the middle -> ``(H, W, 3)`` uint8."""
    m = r.astype(np.float64).sum(axis=0)
    top = np.abs(m).max()
    return _through_colormap(0.5 + 0.5 * (m / top if top > 0 else m), cmap)


def image_strip(frames: np.ndarray, max_frames: int = 12) -> np.ndarray:
    """``(T, H, W[, 3])`` uint8 frames side by side, at most ``max_frames`` evenly spaced ones
    (first and last always included) -> ``(H, k * W[, 3])`` uint8."""
    frames = np.asarray(frames)
    idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    return np.concatenate(list(frames[idx]), axis=1)


def curve_plot(table: dict, title: str = "") -> np.ndarray:
    """Line plot of a table ``{x: 1-D, y1: 1-D, ...}``: the first column on the x axis, one line per
    other column -> ``(H, W, 3)`` uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
    for name in names[1:]:
        ax.plot(np.asarray(table[names[0]]), np.asarray(table[name]), label=name)
    ax.set_xlabel(names[0])
    if len(names) > 2:
        ax.legend(fontsize=7)
    else:
        ax.set_ylabel(names[1])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def label_legend(labels: np.ndarray, colors: np.ndarray, names: list[str], background: str = "background") -> np.ndarray:
    """A coloured ``(H, W, 3)`` uint8 label map with a legend beside it: one patch per name in
    ``colors`` (``(K, 3)`` uint8), then black for ``background`` -> ``(H', W', 3)`` uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    h, w = labels.shape[:2]
    fig, (ax, side) = plt.subplots(1, 2, figsize=(6.4, 3.2), dpi=100, gridspec_kw={"width_ratios": [w / h, 1.0]})
    ax.imshow(labels, interpolation="nearest")
    ax.axis("off")
    side.axis("off")
    handles = [Patch(facecolor=np.asarray(c) / 255.0, edgecolor="black", label=n) for c, n in zip(colors, names)]
    handles.append(Patch(facecolor="black", edgecolor="black", label=background))
    side.legend(handles=handles, loc="center left", fontsize=8, frameon=False)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


#: the colour boxes are drawn in (pure green: no jet colour blended over a picture is exactly it)
BOX_COLOR = (0, 255, 0)


def draw_boxes(img: np.ndarray, boxes, labels=(), color: tuple[int, int, int] = BOX_COLOR, width: int = 2) -> np.ndarray:
    """A copy of the ``(H, W, 3)`` uint8 ``img`` with each box ``(x0, y0, x1, y1)`` (pixels, x1/y1
    exclusive) outlined ``width`` pixels wide in ``color``, inside the box, and its label (if any)
    written on a filled strip at its top-left corner -> ``(H, W, 3)`` uint8."""
    from PIL import Image, ImageDraw

    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"draw_boxes takes an (H, W, 3) image, got shape {img.shape}")
    h, w = img.shape[:2]
    out = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))
    draw = ImageDraw.Draw(out)
    labels = list(labels) + [""] * (len(boxes) - len(labels))
    for box, label in zip(boxes, labels):
        x0, y0 = int(np.clip(round(box[0]), 0, w - 1)), int(np.clip(round(box[1]), 0, h - 1))
        x1, y1 = int(np.clip(round(box[2]) - 1, x0, w - 1)), int(np.clip(round(box[3]) - 1, y0, h - 1))
        draw.rectangle((x0, y0, x1, y1), outline=color, width=width)
        if label:
            left, top, right, bottom = draw.textbbox((x0 + width, y0 + width), str(label))
            draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=color)
            draw.text((x0 + width, y0 + width), str(label), fill=(0, 0, 0))
    return np.asarray(out, dtype=np.uint8).copy()


def _box_slices(box, h: int, w: int) -> tuple[slice, slice]:
    """Rows and columns of ``box`` (x0, y0, x1, y1; x1/y1 exclusive), whole pixels covering it, at
    least one of each, clipped to an ``h`` x ``w`` map."""
    x0, y0 = int(np.clip(np.floor(box[0]), 0, w - 1)), int(np.clip(np.floor(box[1]), 0, h - 1))
    x1, y1 = int(np.clip(np.ceil(box[2]), x0 + 1, w)), int(np.clip(np.ceil(box[3]), y0 + 1, h))
    return slice(y0, y1), slice(x0, x1)


def normalised_in_box(cam: np.ndarray, box) -> np.ndarray:
    """``(H, W)`` map min-max normalised over the pixels of ``box`` (x0, y0, x1, y1; x1/y1
    exclusive), 0 outside it: how the map ranks the pixels of one detection, whatever it does
    elsewhere -> ``(H, W)`` float64 in [0, 1]."""
    rows, cols = _box_slices(box, *cam.shape)
    out = np.zeros(cam.shape, np.float64)
    out[rows, cols] = _minmax(cam[rows, cols])
    return out


def inside_box(values: np.ndarray, box) -> np.ndarray:
    """``(..., H, W)`` input-space map with every value outside ``box`` set to 0: its renders (which
    scale to the map's range) then scale to the box's values -> same shape and dtype."""
    rows, cols = _box_slices(box, *values.shape[-2:])
    out = np.zeros_like(values)
    out[..., rows, cols] = values[..., rows, cols]
    return out


#: Render kinds a method may list: name -> function(values, upsampled map, image, options).
RENDERERS: dict[str, Callable[..., np.ndarray]] = {
    "color": lambda g, cam, img, o: colored_gradient(g),
    "gray": lambda g, cam, img, o: grayscale_gradient(g),
    "pos_sal": lambda g, cam, img, o: positive_saliency(g),
    "neg_sal": lambda g, cam, img, o: negative_saliency(g),
    "lrp_heatmap": lambda g, cam, img, o: relevance_heatmap(g),
    "cam_gray": lambda g, cam, img, o: cam_gray(cam),
    "cam_heatmap": lambda g, cam, img, o: cam_heatmap(cam, o.colormap),
    "cam_on_image": lambda g, cam, img, o: cam_on_image(cam, img, o.alpha, o.colormap),
}
