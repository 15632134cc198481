"""Transformation robustness: random pad, jitter, scale and rotate applied to the image before each
forward pass of an optimisation technique.

Olah et al. 2017 ("Feature Visualization", Distill, section "Transformation robustness"): an image
that excites a unit only at one exact alignment is adversarial texture; asking it to excite the
unit under small random translations, scalings and rotations removes most high-frequency
patterns, because they do not survive resampling. The transforms act on pixels in ``[0, 1]``
(before the model's normalisation), so a constant pad of 0.5 is mid-grey whatever the model.

A stack is an ordered tuple of steps, each drawing its random choice from the ``torch.Generator``
it is given (on the CPU), once per call for the whole batch (so the batch stays one tensor even
when the scale changes its size). The same generator state gives the same output; an empty stack
is the identity. Every step is differentiable with respect to the image (padding, cropping,
bilinear resampling), so gradients flow back to the parameters.

Example (the stack Olah et al. describe: pad, jitter, scale, rotate, jitter)::

    stack = build_transforms([{"pad": 12}, {"jitter": 8}, {"scale": [0.95, 1.0, 1.05]},
                              {"rotate": [-5, 0, 5]}, {"jitter": 4}])
    out = stack(pixels, torch.Generator().manual_seed(0))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError, unknown

PAD_MODES = ("constant", "reflect", "replicate")


def _pick(values: Sequence[Any], generator: torch.Generator) -> Any:
    return values[int(torch.randint(len(values), (1,), generator=generator))]


@dataclass(frozen=True)
class Pad:
    """Pad ``pixels`` on every side: ``constant`` (``value``, mid-grey by default), ``reflect`` or
    ``replicate``. Not random; it gives the later jitter and rotation room without showing edges."""

    pixels: int
    mode: str = "constant"
    value: float = 0.5

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.pixels == 0:
            return img
        pad = (self.pixels,) * 4
        if self.mode == "constant":
            return F.pad(img, pad, mode="constant", value=float(self.value))
        return F.pad(img, pad, mode=self.mode)


@dataclass(frozen=True)
class Jitter:
    """Integer translation by up to ``pixels`` in each direction: a random ``(H − d) x (W − d)``
    crop, offsets uniform in ``[0, d]``. The image shrinks by ``d`` (no wrap-around seam, unlike a
    roll); a ``Pad`` before it compensates."""

    pixels: int

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.pixels == 0:
            return img
        h, w = img.shape[-2:]
        dy = int(torch.randint(self.pixels + 1, (1,), generator=generator))
        dx = int(torch.randint(self.pixels + 1, (1,), generator=generator))
        return img[..., dy:dy + h - self.pixels, dx:dx + w - self.pixels]


@dataclass(frozen=True)
class Scale:
    """Resize by a factor drawn uniformly from ``factors`` (bilinear; factor 1 returns the image
    unchanged)."""

    factors: tuple[float, ...]

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        factor = float(_pick(self.factors, generator))
        if factor == 1.0:
            return img
        h, w = img.shape[-2:]
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        return F.interpolate(img, size=size, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class Rotate:
    """Rotate about the centre by an angle (degrees, counter-clockwise on screen) drawn uniformly
    from ``degrees``; bilinear sampling, corners that come from outside the image are filled by the
    nearest border pixel. Angle 0 returns the image unchanged."""

    degrees: tuple[float, ...]

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        angle = float(_pick(self.degrees, generator))
        if angle == 0.0:
            return img
        return rotate(img, angle)


def rotate(img: torch.Tensor, degrees: float) -> torch.Tensor:
    """``img`` rotated by ``degrees`` about its centre, in pixel units (a non-square image is not
    sheared: ``affine_grid`` works in coordinates normalised to [-1, 1] per axis, so the off-diagonal
    terms carry the aspect ratio)."""
    h, w = img.shape[-2:]
    # the output pixel at (x, y) samples the input at theta·(x, y); with y pointing down on screen,
    # this theta turns the picture counter-clockwise (as torch.rot90 does for 90 degrees)
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=img.dtype, device=img.device)
    grid = F.affine_grid(theta.expand(img.shape[0], 2, 3), list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class TransformStack:
    """The steps in order; ``stack(img, generator)`` applies them all."""

    steps: tuple = ()

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            img = step(img, generator)
        return img

    def __len__(self) -> int:
        return len(self.steps)


#: the step kinds a config may name, each with the key holding its main argument
STEPS = {"pad": Pad, "jitter": Jitter, "scale": Scale, "rotate": Rotate}


def _as_list(value: Any, where: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    if not values:
        raise ConfigError(f"{where} needs at least one value, e.g. [0.95, 1.0, 1.05]")
    return values


def build_step(spec: Mapping[str, Any], key: str) -> Any:
    """One step from a mapping such as ``{"pad": 12, "mode": "reflect"}``, ``{"jitter": 8}``,
    ``{"scale": [0.9, 1.1]}``, ``{"rotate": [-5, 5]}``."""
    kinds = [k for k in spec if k in STEPS]
    if len(kinds) != 1:
        extra = [k for k in spec if k not in STEPS and k not in ("mode", "value")]
        if extra and not kinds:
            raise unknown("transform", key, extra[0], STEPS)
        raise ConfigError(f"{key} must name exactly one of {', '.join(STEPS)}, got {dict(spec)}")
    kind = kinds[0]
    others = set(spec) - {kind} - ({"mode", "value"} if kind == "pad" else set())
    if others:
        raise ConfigError(f"{key}: '{kind}' takes no option {', '.join(sorted(others))}"
                          + ("; pad takes mode and value" if kind != "pad" else ""))
    value = spec[kind]
    if kind in ("pad", "jitter"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{key}.{kind} must be a whole number of pixels >= 0, got {value!r}")
        if kind == "jitter":
            return Jitter(int(value))
        mode = spec.get("mode", "constant")
        if mode not in PAD_MODES:
            raise unknown("pad mode", f"{key}.mode", mode, PAD_MODES)
        return Pad(int(value), mode, float(spec.get("value", 0.5)))
    values = _as_list(value, f"{key}.{kind}")
    if kind == "scale" and min(values) <= 0:
        raise ConfigError(f"{key}.scale factors must be > 0, got {list(values)}")
    return STEPS[kind](values)


def build_transforms(specs: Sequence[Mapping[str, Any]] | None, key: str = "transforms") -> TransformStack:
    """A ``TransformStack`` from a list of step mappings (``None`` or ``[]``: the identity)."""
    return TransformStack(tuple(build_step(s, f"{key}[{i}]") for i, s in enumerate(specs or ())))


def standard_transforms() -> TransformStack:
    """The stack of Olah et al. 2017's robustness section: pad 12 (grey), jitter 8, scale by a
    factor in 0.9..1.1 (step 0.02), rotate by -10..10 degrees (step 1), jitter 4."""
    return TransformStack((
        Pad(12), Jitter(8),
        Scale(tuple(1 + (i - 5) / 50 for i in range(11))),
        Rotate(tuple(float(d) for d in range(-10, 11))),
        Jitter(4),
    ))


def robust_transforms() -> TransformStack:
    """A stronger stack of the same kinds for class visualisations: pad 16 (grey), jitter 16, scale by a
    factor in 0.8..1.2 (step 0.05), rotate by -15..15 degrees (step 3), jitter 8. Olah et al. note that
    stronger transformations give images that are less tied to one alignment; on efficientnet_lite0 it
    raises the images' scores on views the optimiser never saw and on another network
    (``benchmarks/feature_vis.py``, docs/performance.md)."""
    return TransformStack((
        Pad(16), Jitter(16),
        Scale(tuple(round(0.8 + 0.05 * i, 2) for i in range(9))),
        Rotate(tuple(float(d) for d in range(-15, 16, 3))),
        Jitter(8),
    ))


#: the stacks a config may name instead of listing steps
NAMED = {"standard": standard_transforms, "robust": robust_transforms}
