"""Incremental inference for occlusion (after Nakandala, Kumar & Papakonstantinou 2019, "Incremental
and Approximate Inference for Faster Occlusion-based Deep CNN Explanations", SIGMOD; exact variant).

An occluded image differs from the clean one inside its window only. Through a chain of local layers
(convolutions, pooling, element-wise layers) the difference stays inside a rectangle that grows by each
layer's receptive field, so each such layer is evaluated on that rectangle only: cut from the clean
activation padded as the layer pads, with the occluded images' rectangles of the layer before pasted
in. Once the rectangle covers more than ``max_fraction`` of the map, the occluded images' activations
(the clean one with the rectangles pasted in) go through the rest of the network as a batch.

Applies where the model's input goes first into an ``nn.Sequential`` that starts with such layers
(VGG and AlexNet ``features``, the stems of many others). On vgg19 with 15 px windows the first four
convolution blocks shrink to their rectangles: about a fifth of the convolution work is left.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.hooks import removing

log = logging.getLogger("cnnviz")

POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardtanh, nn.Hardswish, nn.Sigmoid,
             nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Window:
    """A local layer's geometry: output o reads padded-input rows o*stride ... o*stride + span - 1."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: float

    def span(self, axis: int) -> int:
        return self.dilation[axis] * (self.kernel[axis] - 1) + 1


def geometry(m: nn.Module) -> Optional[Window]:
    """The layer's window; ``None`` for an element-wise layer. Raises ``TypeError`` for anything else."""
    if isinstance(m, POINTWISE):
        return None
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return Window(_pair(m.kernel_size), _pair(m.stride), _pair(m.padding), _pair(m.dilation), 0.0)
    if isinstance(m, nn.MaxPool2d) and not m.ceil_mode:
        return Window(_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), _pair(m.dilation),
                      -math.inf)
    if isinstance(m, nn.AvgPool2d) and not m.ceil_mode and m.count_include_pad and m.divisor_override is None:
        return Window(_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), (1, 1), 0.0)
    raise TypeError(type(m).__name__)


def _local(m: nn.Module) -> bool:
    try:
        geometry(m)
        return True
    except TypeError:
        return False


def _apply(m: nn.Module, g: Optional[Window], h: torch.Tensor) -> torch.Tensor:
    """The layer on an already padded region (padding 0)."""
    if g is None:
        return m(h)
    if isinstance(m, nn.Conv2d):
        return F.conv2d(h, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
    if isinstance(m, nn.MaxPool2d):
        return F.max_pool2d(h, m.kernel_size, m.stride or m.kernel_size, 0, m.dilation)
    return F.avg_pool2d(h, m.kernel_size, m.stride or m.kernel_size, 0)


def _pad(a: torch.Tensor, g: Window) -> torch.Tensor:
    ph, pw = g.padding
    if not (ph or pw):
        return a
    return F.pad(a, (pw, pw, ph, ph), value=g.pad_value)


def entry_sequential(model: nn.Module, x: torch.Tensor) -> Optional[tuple[str, nn.Sequential]]:
    """The ``nn.Sequential`` that receives the model's input itself, called once, whose first child is
    a local layer: ``(dotted name, module)``, or ``None``."""
    seen: dict[str, list] = {}
    candidates = {n: m for n, m in model.named_modules() if n and isinstance(m, nn.Sequential) and len(m) and _local(m[0])}
    if not candidates:
        return None
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.setdefault(n, []).append(args[0] if args else None))
               for n, m in candidates.items()]
    with removing(handles), torch.no_grad():
        model(x)
    hits = [n for n, inputs in seen.items() if len(inputs) == 1 and inputs[0] is x]
    return (hits[0], candidates[hits[0]]) if hits else None


@contextmanager
def _swapped(model: nn.Module, name: str, replacement: nn.Module) -> Iterator[None]:
    original = model.get_submodule(name)
    model.set_submodule(name, replacement)
    try:
        yield
    finally:
        model.set_submodule(name, original)


class _Resume(nn.Module):
    """Stands in for the entry Sequential: ignores its input, runs the remaining children on ``start``."""

    def __init__(self, rest: Sequence[nn.Module], start: torch.Tensor):
        super().__init__()
        self.rest, self.start = list(rest), start

    def forward(self, _ignored):
        h = self.start
        for m in self.rest:
            h = m(h)
        return h


class IncrementalOcclusion:
    """Logits of occluded copies of the images of a batch ``x`` (B, C, H, W), ``window`` px square
    windows at given top-left corners, computed incrementally; the copies of several images may share
    one call. Build with ``IncrementalOcclusion.build`` (None where the model has no local entry
    chain or the rectangles would not be smaller than the maps).

    An image's clean activations through the chain are computed when its first window is asked for
    and held until ``release``: memory follows the images in flight, not the length of the batch."""

    def __init__(self, model, name, seq, x, window, cut, sizes):
        self.model, self.name, self.seq, self.x, self.window = model, name, seq, x, window
        self.cut, self.sizes = cut, sizes
        self.geoms = [geometry(m) for m in list(seq)[:cut]]
        #: image index -> (clean activations before / after each chain layer, the padded ones)
        self.states: dict[int, tuple[list[torch.Tensor], list[Optional[torch.Tensor]]]] = {}

    @classmethod
    def build(cls, model: nn.Module, x: torch.Tensor, window: int, corners: Sequence[tuple[int, int]],
              max_fraction: float = 0.5) -> Optional["IncrementalOcclusion"]:
        # the chain and where it stops depend on the geometry alone: found on the first image
        x1 = x[:1]
        found = entry_sequential(model, x1)
        if found is None:
            return None
        name, seq = found
        clean, sizes = [x1], []
        dirty = [[(i, i + window - 1), (j, j + window - 1)] for i, j in corners]
        cut, h = 0, x1
        for m in seq:
            try:
                g = geometry(m)
            except TypeError:  # the first layer that is not local ends the chain
                break
            out = m(h.clone()) if g is None else m(h)  # element-wise layers may work in place
            if g is not None:
                dirty = [[_dirty(iv, g, ax, out.shape[2 + ax]) for ax, iv in enumerate(d)] for d in dirty]
            size = tuple(max(d[ax][1] - d[ax][0] + 1 for d in dirty) for ax in (0, 1))
            if size[0] * size[1] > max_fraction * out.shape[2] * out.shape[3]:
                break
            cut, h = cut + 1, out
            clean.append(out)
            sizes.append(size)
        if not any(geometry(m) is not None for m in list(seq)[:cut]):
            return None
        fast = cls(model, name, seq, x, window, cut, sizes)
        fast.states[0] = fast._padded(clean)
        return fast

    def _padded(self, clean: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[Optional[torch.Tensor]]]:
        return clean, [None if g is None else _pad(a, g) for g, a in zip(self.geoms, clean)]

    def activations(self, image: int) -> list[torch.Tensor]:
        """The clean activations of image ``image`` before the chain and after each of its layers."""
        if image not in self.states:
            h = self.x[image:image + 1]
            clean = [h]
            for m, g in zip(list(self.seq)[:self.cut], self.geoms):
                h = m(h.clone()) if g is None else m(h)  # element-wise layers may work in place
                clean.append(h)
            self.states[image] = self._padded(clean)
        return self.states[image][0]

    def release(self, image: int) -> None:
        """Forget image ``image``'s clean activations (its windows are done)."""
        self.states.pop(image, None)

    def logits(self, corners: Sequence[tuple[int, int]], baseline: float,
               images: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Logits of the copies of image ``images[n]`` (all image 0 by default) occluded at ``corners[n]``."""
        n, channels = len(corners), self.x.shape[1]
        images = [0] * n if images is None else [int(b) for b in images]
        clean = {b: self.activations(b) for b in dict.fromkeys(images)}
        patch = torch.full((n, channels, self.window, self.window), float(baseline), dtype=self.x.dtype, device=self.x.device)
        where = [(i, i + self.window - 1, j, j + self.window - 1) for i, j in corners]  # dirty rows / cols, inclusive
        pos = list(corners)  # top-left corner of each patch in the current map
        for layer, (m, g) in enumerate(zip(list(self.seq)[:self.cut], self.geoms)):
            if g is None:
                patch = m(patch)
                continue
            out_h, out_w = clean[images[0]][layer + 1].shape[2:]
            size_h, size_w = self.sizes[layer]
            where = [(*_dirty((r0, r1), g, 0, out_h), *_dirty((c0, c1), g, 1, out_w)) for r0, r1, c0, c1 in where]
            new_pos = [(min(r0, out_h - size_h), min(c0, out_w - size_w)) for r0, _, c0, _ in where]
            reg_h = (size_h - 1) * g.stride[0] + g.span(0)
            reg_w = (size_w - 1) * g.stride[1] + g.span(1)
            regions = []
            for b, (y, x), (py, px), p in zip(images, new_pos, pos, patch):
                source = self.states[b][1][layer]
                ry, rx = y * g.stride[0], x * g.stride[1]  # region origin in padded coordinates
                region = source[0, :, ry:ry + reg_h, rx:rx + reg_w].clone()
                # the patch, in padded coordinates, clipped to the region
                ty, tx = py + g.padding[0] - ry, px + g.padding[1] - rx
                y0, x0 = max(ty, 0), max(tx, 0)
                y1, x1 = min(ty + p.shape[1], reg_h), min(tx + p.shape[2], reg_w)
                if y1 > y0 and x1 > x0:
                    region[:, y0:y1, x0:x1] = p[:, y0 - ty:y1 - ty, x0 - tx:x1 - tx]
                regions.append(region)
            patch = _apply(m, g, torch.stack(regions))
            pos = new_pos
        start = torch.cat([clean[b][self.cut] for b in images])
        for row, (y, x) in enumerate(pos):
            start[row, :, y:y + patch.shape[2], x:x + patch.shape[3]] = patch[row]
        # each row's clean image goes in: a model that reads its input again past the chain then
        # disagrees with full forwards (and is caught by the caller's check) instead of failing
        with _swapped(self.model, self.name, _Resume(list(self.seq)[self.cut:], start)):
            return self.model(self.x[images])


def _dirty(interval: tuple[int, int], g: Window, axis: int, out_size: int) -> tuple[int, int]:
    """Output indices whose window reads any of the (unpadded) input indices ``interval``."""
    lo, hi = interval
    s, p, span = g.stride[axis], g.padding[axis], g.span(axis)
    first = max(0, -(-(lo + p - span + 1) // s))
    last = min(out_size - 1, (hi + p) // s)
    return first, last
