"""Layer outputs that are not ``(B, C, H, W)`` maps, seen as one: transformer tokens and channels-last maps.

A class activation map is Σ_k w_k A_k over a ``(B, C, h, w)`` activation. Vision transformers emit
``(B, N, C)`` tokens (ViT, DeiT: ``num_prefix_tokens`` class / distillation / register tokens first,
then the ``h·w`` patch tokens in row-major order), and Swin or ConvNeXt's MLPs emit channels-last
``(B, h, w, C)`` maps. ``layout_of`` says which a layer's output is, from the model and the input size;
``Layout.spatial`` turns it into the ``(B, C, h, w)`` view the CAMs compute on. The view is a
reshape (and for tokens a slice), linear, so the same view serves the activations and the gradients
of one shared pass, and it is a view in the strict sense (no copy): writing into it (Ablation-CAM
zeroing a channel) writes into the layer's own output.

Rules, in order (``layout_of``):

- ``(B, C, H, W)`` is channels-first unless the model or module says otherwise: a convolution's
  output is channels-first; an ``nn.Linear`` applied to a 4-D tensor acts on its last dimension, so
  its output is channels-last; a timm model declaring ``output_fmt = 'NHWC'`` (Swin) is channels-last
  after its patch embedding; otherwise the reading whose two spatial sides have the input's aspect
  ratio wins (channels-first when both fit, as for every CNN before).
- ``(B, N, C)`` tokens: the grid ``(h, w)`` is ``model.token_grid`` (config) / ``token_grid(model,
  grid)`` (library) when set, else the patch embedding's grid for this input size (timm
  ``patch_embed.dynamic_feat_size``, or input size // ``patch_embed.patch_size``), else the one
  factorisation of the patch-token count with the input's aspect ratio (a square for a square
  input). The prefix tokens are ``model.num_prefix_tokens`` (timm), else those left over when the
  grid is known, else none. ``patch_embed``, ``num_prefix_tokens`` and ``output_fmt`` are read from
  the innermost module above the layer that has them, so a wrapped network is read as itself. A grid that does not account for the tokens is a ``ConfigError`` naming
  ``model.token_grid``: a wrong guess never becomes a map.

Example::

    with token_grid(model, (14, 14)):        # only where the grid cannot be inferred
        attr = get_method("gradcam")()(model, x, target=1, layer="blocks.11")
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .layers import resolve_layer

#: the attribute carrying a grid set by configuration (``model.token_grid``) or by ``token_grid``
GRID_ATTR = "cnnviz_token_grid"

KINDS = ("nchw", "nhwc", "tokens")

_HINT = ("set model.token_grid=[h,w] (the library: with cnnviz.core.tokens.token_grid(model, (h, w)): ...), "
         "or choose a layer whose output is a (B, C, H, W) map")


@dataclass(frozen=True)
class Layout:
    """How a layer's output holds a spatial map: ``kind`` (``nchw``, ``nhwc`` or ``tokens``), and
    for tokens the number of leading prefix tokens and the ``(h, w)`` grid of the rest."""

    kind: str = "nchw"
    prefix: int = 0
    grid: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Layout.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    def spatial(self, t: torch.Tensor) -> torch.Tensor:
        """The ``(B, C, h, w)`` view of a layer output in this layout (no copy)."""
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        return t[:, self.prefix:, :].unflatten(1, self.grid).permute(0, 3, 1, 2)


NCHW = Layout()


@contextmanager
def token_grid(model: nn.Module, grid: Optional[Sequence[int]]) -> Iterator[nn.Module]:
    """Use the token grid ``(h, w)`` for ``model``'s token outputs inside the ``with`` block (None:
    infer it); the model is left as it was after."""
    had, before = hasattr(model, GRID_ATTR), getattr(model, GRID_ATTR, None)
    set_token_grid(model, grid)
    try:
        yield model
    finally:
        if had:
            setattr(model, GRID_ATTR, before)
        else:
            model.__dict__.pop(GRID_ATTR, None)


def set_token_grid(model: nn.Module, grid: Optional[Sequence[int]]) -> None:
    """Record ``grid`` on a model cnnviz loaded itself (the runner's ``model.token_grid``)."""
    setattr(model, GRID_ATTR, check_grid(grid))


def check_grid(grid: Optional[Sequence[int]]) -> Optional[tuple[int, int]]:
    if grid is None:
        return None
    values = list(grid)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(f"model.token_grid must be two positive integers [h, w] (or null to infer it), got {grid!r}")
    return int(values[0]), int(values[1])


def _fits(h: int, w: int, height: int, width: int) -> bool:
    """Whether an ``h x w`` grid has the input's aspect ratio, to within one cell's rounding."""
    return h >= 1 and w >= 1 and abs(h * width - w * height) <= max(height, width)


def _channels_last(model: nn.Module, module: nn.Module, t: torch.Tensor, height: int, width: int) -> bool:
    if isinstance(module, nn.modules.conv._ConvNd):
        return False
    if isinstance(module, nn.Linear):
        return True
    if getattr(model, "output_fmt", None) == "NHWC":
        return True
    _, c, h, w = t.shape
    return not _fits(h, w, height, width) and _fits(c, h, height, width)


def _patch_grid(model: nn.Module, height: int, width: int) -> Optional[tuple[int, int]]:
    embed = getattr(model, "patch_embed", None)
    if embed is None:
        return None
    if hasattr(embed, "dynamic_feat_size"):
        return tuple(int(v) for v in embed.dynamic_feat_size((height, width)))
    patch = getattr(embed, "patch_size", None)
    if patch is None:
        return None
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return height // ph, width // pw


def _factor_grid(n: int, height: int, width: int) -> Optional[tuple[int, int]]:
    """The one ``h x w = n`` with the input's aspect ratio, or None (none, or several)."""
    if n < 1:
        return None
    if height == width:
        side = math.isqrt(n)
        return (side, side) if side * side == n else None
    found = [(h, n // h) for h in range(1, n + 1) if n % h == 0 and _fits(h, n // h, height, width)]
    return found[0] if len(found) == 1 else None


_DECLARES = ("patch_embed", "num_prefix_tokens", "output_fmt")


def _owner(model: nn.Module, layer: str) -> nn.Module:
    """The innermost module above ``layer`` that declares its token layout (timm's ``patch_embed``,
    ``num_prefix_tokens``, ``output_fmt``), so that a network wrapped by another (a target's wrapper,
    a backbone inside a detector) is read from its own attributes; ``model`` when none does."""
    modules = dict(model.named_modules())
    parts = layer.split(".")
    for i in range(len(parts) - 1, 0, -1):
        m = modules.get(".".join(parts[:i]))
        if m is not None and any(hasattr(m, a) for a in _DECLARES):
            return m
    return model


def layout_of(model: nn.Module, layer: str, t: torch.Tensor, input_shape: Sequence[int]) -> Layout:
    """The layout of ``t``, layer ``layer``'s output for an input of shape ``(B, C, H, W)``; a
    ``ConfigError`` (naming ``model.token_grid`` where it helps) when no spatial map can be read from it."""
    batch, height, width = int(input_shape[0]), int(input_shape[-2]), int(input_shape[-1])
    shape = tuple(t.shape)
    if t.ndim not in (3, 4) or shape[0] != batch:
        why = (f"its first dimension is not the batch of {batch} (e.g. attention windows)" if t.ndim in (3, 4)
               else "it is neither a (B, C, H, W) / (B, H, W, C) map nor (B, N, C) tokens")
        raise ConfigError(f"layer '{layer}' outputs {shape}: {why}; choose a block or a convolutional layer (layer=...)")
    module = resolve_layer(model, layer)
    owner = _owner(model, layer)
    if t.ndim == 4:
        return Layout("nhwc") if _channels_last(owner, module, t, height, width) else NCHW
    if isinstance(module, (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        raise ConfigError(f"layer '{layer}' is a 1-D {type(module).__name__} with output {shape} (B, C, L), not "
                          "tokens or a 2-D map; choose a block or a convolutional layer (layer=...)")
    n = shape[1]
    explicit = getattr(model, GRID_ATTR, None)
    grid = explicit or _patch_grid(owner, height, width)
    declared = getattr(owner, "num_prefix_tokens", None)
    if grid is None:
        prefix = int(declared or 0)
        grid = _factor_grid(n - prefix, height, width)
        if grid is None:
            raise ConfigError(
                f"layer '{layer}' outputs {n} tokens ({prefix} prefix) for a {height}x{width} input and the token grid "
                f"cannot be inferred from the model (no patch_embed, and {n - prefix} tokens have no single grid of "
                f"the input's aspect ratio); {_HINT}")
    h, w = grid
    prefix = n - h * w
    if prefix < 0 or (declared is not None and prefix != int(declared)):
        source = "model.token_grid" if explicit else "the model's patch embedding"
        expected = f", the model declares {int(declared)} prefix tokens" if declared is not None else ""
        raise ConfigError(
            f"layer '{layer}' outputs {n} tokens, which a {h}x{w} grid (from {source}) does not account for"
            f"{expected}; {_HINT}")
    return Layout("tokens", prefix, (h, w))


def spatial_view(model: nn.Module, layer: str, t: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
    """``t`` as ``(B, C, h, w)``: ``layout_of(...).spatial(t)``."""
    return layout_of(model, layer, t, input_shape).spatial(t)
