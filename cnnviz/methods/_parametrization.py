"""Image parametrizations for the optimisation techniques: the learnable parameters are not
necessarily the pixels.

Mordvintsev et al. 2018 ("Differentiable Image Parameterizations", Distill) and Olah et al. 2017
("Feature Visualization", Distill, section "Preconditioning and Parameterization") observe that
steepest descent on raw pixels is dominated by high frequencies: the gradient of a CNN is mostly
high-frequency, so the image becomes adversarial texture. Describing the image in a space whose
directions are closer to *decorrelated* makes the same optimiser follow a better-conditioned
gradient, and the result shows structure. Two such changes of variables are used:

* spatial: the image is the inverse real FFT of per-channel Fourier coefficients, each scaled by
  ``1 / max(f, 1/size)^decay`` (``f``: the frequency in cycles per pixel; one constant factor per
  size keeps the latent image's variance independent of the size, see ``spectrum_scale``). With decay 1 every
  frequency then has about equal energy in a natural-image sense (natural spectra fall as 1/f),
  so a unit step on a coefficient moves the image by an amount that matches natural statistics.
* colour: a latent "colour" vector ``z`` becomes the pixel colour ``M z``, where ``M`` is a square
  root of ImageNet's RGB covariance (``M Mᵀ ∝ Σ``), so independent latent coordinates give
  natural colour correlations.

The pipeline, from parameters to the model's input::

    params --spatial (pixel: identity | fft: irfft2(scale·c))--> z (B,3,H,W)
           --colour (decorrelate: M z per pixel)-->             v
           --squash (sigmoid(v) | clamp(v, 0, 1))-->            pixels in [0, 1]
           --normalise ((pixels − mean)/std)-->                 the model's input

Every step but ``clamp`` outside ``[0, 1]`` is invertible, and ``from_image`` inverts it:
``to_image(from_image(p)) == p`` for pixels ``p`` strictly inside ``(0, 1)`` (in float64 to
~1e-12). The FFT coefficients have redundant entries (the imaginary parts of the DC and Nyquist
bins of a real image are always 0), so ``from_image`` returns the canonical ones: for any params,
``from_image(to_image(params))`` is their projection onto the canonical set, and canonical params
round-trip exactly.

Example::

    p = Parametrization(kind="fft", decorrelate=True, squash="sigmoid")
    params = p.init(batch=2, size=64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    x = p.to_input(params, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])  # (2,3,64,64)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from ..core.errors import ConfigError, unknown
from ..core.inputspace import stats

KINDS = ("pixel", "fft")
SQUASHES = ("sigmoid", "clamp")

# ImageNet's RGB covariance (pixels in [0, 1]) as the eigendecomposition published with AlexNet's
# "PCA lighting" augmentation (Krizhevsky et al. 2012, section 4.1) and reprinted with four decimals
# in fb.resnet.torch (datasets/imagenet.lua, `pca`): eigenvalues, and eigenvectors as *columns*.
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def imagenet_covariance(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``Σ = U diag(λ) Uᵀ`` from the published eigendecomposition (3x3)."""
    u = torch.tensor(IMAGENET_EIGENVECTORS, dtype=torch.float64)
    lam = torch.tensor(IMAGENET_EIGENVALUES, dtype=torch.float64)
    return (u @ torch.diag(lam) @ u.T).to(dtype)


@functools.lru_cache(maxsize=None)
def _colour_matrix64() -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(imagenet_covariance(torch.float64))
    evals, evecs = evals.flip(0), evecs.flip(1)  # largest first: latent 0 is the luminance-like axis
    root = evecs @ torch.diag(evals.sqrt())
    return root / torch.linalg.matrix_norm(root, ord=2)


@functools.lru_cache(maxsize=None)
def _colour_matrix_inverse64() -> torch.Tensor:
    return torch.linalg.inv(_colour_matrix64())


def colour_matrix(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The fixed colour map ``M = U Λ^½ / √λ_max``: a square root of ImageNet's colour covariance
    ``Σ = U Λ Uᵀ`` (``imagenet_covariance``) whose columns are the principal axes, largest first, so
    that each latent colour coordinate is one independent direction (luminance-like, then two chroma
    ones with gains about 0.29 and 0.14); a unit latent step moves a pixel's colour by at most one unit.

    Why the principal-axes root and not the symmetric one (``U Λ^½ Uᵀ``, which also gives ``M Mᵀ ∝ Σ``):
    Adam scales every coordinate on its own, so it is not indifferent to a rotation of the latent space.
    Class images made on efficientnet_lite0 transfer better to another network with this root
    (``benchmarks/feature_vis.py``; the numbers are in docs/performance.md).
    The published eigenvectors are orthonormal to four decimals only, so the axes are taken from ``Σ``
    itself (``eigh``), which makes ``M Mᵀ = Σ / λ_max`` hold to float64 precision. Computed once, in
    float64."""
    return _colour_matrix64().to(dtype, copy=True)


def colour_matrix_inverse(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``M⁻¹``, inverted in float64."""
    return _colour_matrix_inverse64().to(dtype, copy=True)


def apply_colour(img: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix @ colour`` at every pixel of a ``(B, 3, H, W)`` tensor."""
    return torch.einsum("ij,bjhw->bihw", matrix.to(img.dtype).to(img.device), img)


def frequencies(height: int, width: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(H, W//2 + 1)`` radial frequency ``√(fy² + fx²)`` in cycles per pixel of the rfft2 bins."""
    fy = torch.fft.fftfreq(height, dtype=dtype)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=dtype)[None, :]
    return torch.sqrt(fy * fy + fx * fx)


def spectrum_scale(height: int, width: int, decay: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(H, W//2 + 1)`` factors ``r / max(f, 1/max(H, W))^decay``: the DC bin (f = 0) gets the
    factor of the lowest non-zero frequency instead of an infinite one. ``r`` is one constant per
    size and decay, the inverse root mean square of the unnormalised factors over the bins, so that
    coefficients of unit variance give a latent image of about unit variance whatever the size:
    a learning rate then moves pixel and fft images by similar amounts, at every size (without
    it a 224 px image moves ~5x faster in fft than in pixel space)."""
    return _spectrum_scale64(int(height), int(width), float(decay)).to(dtype, copy=True)


@functools.lru_cache(maxsize=32)
def _spectrum_scale64(height: int, width: int, decay: float) -> torch.Tensor:
    # computed once per size in float64 (every optimisation step needs it)
    floor = 1.0 / max(height, width)
    raw = frequencies(height, width, torch.float64).clamp(min=floor).pow(-decay)
    return raw / raw.square().mean().sqrt()


def _size(size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


@dataclass(frozen=True)
class Parametrization:
    """Learnable parameters -> pixels in ``[0, 1]`` -> the model's normalised input.

    ``kind``: ``pixel`` (the parameters are the image, before colour and squash) or ``fft``
    (per-channel real-FFT coefficients, shape ``(B, 3, H, W//2+1, 2)``: real and imaginary parts,
    scaled by ``1/max(f, 1/size)^decay``; the inverse transform is orthonormal, ``norm="ortho"``).
    ``decorrelate``: map colours through ImageNet's colour-covariance square root (``colour_matrix``).
    ``squash``: ``sigmoid`` (smooth, never saturates hard) or ``clamp`` (into ``[0, 1]``; zero
    gradient outside). ``init_std``: standard deviation of the random start around mid-grey, in the
    latent image (see ``init``).
    ``key``: the config key this object was built from, named in error messages.
    """

    kind: str = "fft"
    decorrelate: bool = True
    squash: str = "sigmoid"
    decay: float = 1.0
    init_std: float = 0.01
    key: str = field(default="parametrization", compare=False, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise unknown("parametrization", f"{self.key}.kind", self.kind, KINDS)
        if self.squash not in SQUASHES:
            raise unknown("squash", f"{self.key}.squash", self.squash, SQUASHES)
        if not isinstance(self.decorrelate, bool):
            raise ConfigError(f"{self.key}.decorrelate must be true or false, got {self.decorrelate!r}")
        if not float(self.decay) >= 0:
            raise ConfigError(f"{self.key}.decay must be >= 0 (1: a 1/f spectrum, 0: flat), got {self.decay}")
        if self.kind != "fft" and float(self.decay) != 1.0:
            raise ConfigError(f"{self.key}.decay applies to kind=fft only; remove it or set {self.key}.kind=fft")
        if not float(self.init_std) >= 0:
            raise ConfigError(f"{self.key}.init_std must be >= 0, got {self.init_std}")

    # -- shapes

    def shape(self, batch: int, size: Union[int, Sequence[int]]) -> tuple[int, ...]:
        """The parameter tensor's shape for ``batch`` images of ``size`` (an int or ``(H, W)``)."""
        h, w = _size(size)
        return (batch, 3, h, w // 2 + 1, 2) if self.kind == "fft" else (batch, 3, h, w)

    def image_size(self, params: torch.Tensor) -> tuple[int, int]:
        """``(H, W)`` of the images ``params`` describe. FFT coefficients do not record whether the
        width was even or odd (``W//2 + 1`` bins either way), so an even width is assumed; pass
        ``size`` to ``to_image`` for an odd one."""
        if self.kind == "pixel":
            return int(params.shape[-2]), int(params.shape[-1])
        return int(params.shape[-3]), 2 * (int(params.shape[-2]) - 1)

    # -- parameters -> pixels

    def spatial(self, params: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """The latent image ``z`` ``(B, 3, H, W)`` (before colour and squash)."""
        if self.kind == "pixel":
            return params
        h, w = size or self.image_size(params)
        scale = spectrum_scale(h, w, self.decay, params.dtype).to(params.device)
        coeffs = torch.complex(params[..., 0], params[..., 1]) * scale
        return torch.fft.irfft2(coeffs, s=(h, w), norm="ortho")

    def to_image(self, params: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """Pixels ``(B, 3, H, W)`` in ``[0, 1]``; differentiable in ``params``. ``size`` ``(H, W)`` is
        needed only for fft parameters of an odd width."""
        v = self.spatial(params, size)
        if self.decorrelate:
            v = apply_colour(v, colour_matrix(v.dtype))
        return torch.sigmoid(v) if self.squash == "sigmoid" else v.clamp(0, 1)

    def to_input(self, params: torch.Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                 size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """The model's input ``(pixels − mean)/std``; ``None`` mean/std: pixels as they are."""
        return normalise(self.to_image(params, size), mean, std)

    # -- pixels -> parameters

    def from_image(self, pixels: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """The (canonical) parameters whose image is ``pixels`` ``(B, 3, H, W)``. With
        ``squash=sigmoid`` pixels are first clipped to ``[eps, 1 − eps]`` (0 and 1 are reached only
        at infinity); with ``clamp`` pixels in ``[0, 1]`` invert exactly."""
        v = torch.logit(pixels, eps=eps) if self.squash == "sigmoid" else pixels
        if self.decorrelate:
            v = apply_colour(v, colour_matrix_inverse(v.dtype))
        if self.kind == "pixel":
            return v.clone()
        h, w = v.shape[-2:]
        coeffs = torch.fft.rfft2(v, norm="ortho") / spectrum_scale(h, w, self.decay, v.dtype).to(v.device)
        return torch.view_as_real(coeffs).contiguous()

    def init(self, batch: int, size: Union[int, Sequence[int]], generator: torch.Generator,
             dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """Seeded start: the parameters of a mid-grey image plus Gaussian noise on every parameter,
        scaled so that the noise's latent image (``spatial``, before colour and squash) has standard
        deviation exactly ``init_std`` whatever the kind and size (for fft the raw coefficient noise
        would be amplified by the 1/f scale, by more the larger the image). Drawn on the CPU from
        ``generator`` in float64, so the start is the same on every device."""
        h, w = _size(size)
        grey = self.from_image(torch.full((batch, 3, h, w), 0.5, dtype=torch.float64))
        noise = torch.randn(self.shape(batch, (h, w)), generator=generator, dtype=torch.float64)
        spread = float(self.spatial(noise, (h, w)).std())
        params = grey + (float(self.init_std) / spread if spread > 0 else 0.0) * noise
        return params.to(dtype=dtype, device=device)


def normalise(pixels: torch.Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> torch.Tensor:
    """``(pixels − mean)/std`` per channel (``None``: 0 and 1, i.e. unchanged)."""
    m, s = stats(pixels, mean, std)
    return (pixels - m) / s
