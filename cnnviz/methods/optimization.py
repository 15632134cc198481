"""Images made by optimisation: the shared loop of class models, inversions, filter visualisations
and deep dream.

A technique of this family optimises a float image ``I`` in the model's normalised input space,
``I ← step(I, ∇_I loss(I))``, with the model frozen (parameters ``requires_grad_(False)``, eval
mode; both restored afterwards, also after an error). After every step ``I`` is clamped to the
valid range ``[(0 − mean)/std, (1 − mean)/std]`` per channel, i.e. to pixels in ``[0, 1]``.

``input_mean`` / ``input_std`` are the model's normalisation: the runner and ``explain()`` fill
them from the preprocessing config; left at ``None`` in a direct call the input is taken to be
pixels already (mean 0, std 1), as everywhere in ``cnnviz.core.inputspace``.

Results: ``values`` is the final image ``(B, 3, H, W)`` in normalised space; ``extras`` hold,
for item 0, the final picture (``final``, uint8), the snapshot frames (``snapshots``: the start,
every ``snapshot_every`` steps, the end) and the loss table (``loss``: step, loss, one column per
term; the last row is the final image, without jitter). Everything random (noise starts,
jitter) comes from a generator seeded with ``seed``, so a CPU run is bitwise repeatable.

The image's parameters (issue 26; Olah et al. 2017, Mordvintsev et al. 2018): ``parametrization``
``pixel`` (the image itself) or ``fft`` (1/f-scaled Fourier coefficients), ``decorrelate`` (ImageNet
colour covariance square root), ``squash`` (``clamp`` or ``sigmoid`` into ``[0, 1]``) and
``transforms`` (a random pad / jitter / scale / rotate stack applied before every forward, or
``standard``), see ``_parametrization`` and ``_transforms``. ``parametrization`` decides the rest:
every field left at None takes the value of its ``setting`` (``BASE_SETTINGS`` updated with the
technique's ``SETTINGS``), a field given a value keeps it. ``pixel`` + ``clamp`` + no ``decorrelate``
+ no ``transforms`` is the loop described above, unchanged: the paper-faithful setting, byte for byte.
Any other setting optimises the parameters instead; a technique's own pixel-space ``regularize``
(blur, decay, percentile clipping) then does not apply, and the row says so.

``objective`` (an expression of ``_objectives``) replaces the technique's own loss; ``batch`` makes k
images per input together, pushed apart by ``diversity`` times the batch's Gram diversity; the row's
map is image 0, the others are kept in ``extras`` (``batch``, ``batch_values``).
"""
from __future__ import annotations

import copy
import dataclasses

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn
from tqdm import tqdm

from ..core.attribution import Attribution, NonFiniteError, check_logits, non_finite_counts
from ..core.constraints import param
from ..core.errors import ConfigError, unknown
from ..core.hooks import model_state_kept, removing
from ..core.inputspace import stats
from ..core.layers import resolve_layer
from ..core.maps import to_numpy
from ._objectives import Diversity, Probe, Sum, capturing, parse_objective, probing
from ._parametrization import KINDS, SQUASHES, Parametrization, normalise
from ._transforms import NAMED, TransformStack, build_transforms
from .base import Method

OPTIMIZERS = ("adam", "sgd")

#: per-image loss ``(B,)`` and its named terms, each ``(B,)``
Losses = tuple[torch.Tensor, dict[str, torch.Tensor]]


# --- pure helpers --------------------------------------------------------------------------------

def to_pixels(img: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised ``(B, C, H, W)`` -> pixels in ``[0, 1]``."""
    m, s = stats(img, mean, std)
    return (img * s + m).clamp(0, 1)


def picture(img: torch.Tensor, mean, std, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Item 0 as a uint8 ``(H, W, 3)`` picture, resized (bilinear) to ``size`` when given."""
    one = img[:1].detach().float()
    if size is not None and tuple(one.shape[-2:]) != tuple(size):
        one = F.interpolate(one, size=tuple(size), mode="bilinear", align_corners=False)
    pixels = to_pixels(one, mean, std)[0].permute(1, 2, 0).cpu().numpy()
    return (pixels * 255).round().astype(np.uint8)


def start_image(x: torch.Tensor, init: str, mean, std, generator: torch.Generator) -> torch.Tensor:
    """A start image shaped like ``x``: ``zero`` (black pixels), ``mean`` (the normalisation's mean
    colour, i.e. 0 in normalised space: Simonyan et al.'s "zero image" of mean-subtracted input) or
    ``noise`` (the mean colour plus N(0, 0.1²) per pixel value, clipped to [0, 1]). The noise is
    drawn on the CPU, so it is the same on every device."""
    m, s = stats(x, mean, std)
    if init == "zero":
        return ((0 - m) / s).expand_as(x).clone()
    if init == "mean":
        return torch.zeros_like(x)
    if init == "noise":
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return (((m + 0.1 * noise).clamp(0, 1)) - m) / s
    raise ValueError(f"unknown init '{init}'")


def jitter(img: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Roll the image by a random ``(dy, dx)`` in ``[-pixels, pixels]`` (wrapping around); the
    gradient flows back through the roll, so it arrives unshifted."""
    if pixels <= 0:
        return img
    h, w = img.shape[-2:]
    dy = int(torch.randint(-min(pixels, h - 1), min(pixels, h - 1) + 1, (1,), generator=generator))
    dx = int(torch.randint(-min(pixels, w - 1), min(pixels, w - 1) + 1, (1,), generator=generator))
    return torch.roll(img, shifts=(dy, dx), dims=(-2, -1))


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of width ``sigma`` pixels (kernel radius 3σ, reflect padding, which needs the
    radius below the image size)."""
    if sigma <= 0:
        return img
    radius = max(1, min(int(np.ceil(3 * sigma)), min(img.shape[-2:]) - 1))
    return TF.gaussian_blur(img, [2 * radius + 1] * 2, [float(sigma)] * 2)


def zero_below_percentile(img: torch.Tensor, score: torch.Tensor, percentile: float) -> torch.Tensor:
    """Set to 0 the pixels (all channels) of each image whose ``score`` ``(B, H, W)`` lies below
    that image's ``percentile`` -th percentile."""
    if percentile <= 0:
        return img
    threshold = torch.quantile(score.flatten(1).float(), percentile / 100.0, dim=1).to(score.dtype)
    keep = score >= threshold.view(-1, 1, 1)
    return img * keep[:, None]


# --- reading a layer -----------------------------------------------------------------------------

class _LayerReached(Exception):
    """Raised by the layer hook to stop the forward pass once the layer's output is known."""


@contextmanager
def layer_reader(model: nn.Module, layer: str) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """``read(img)`` -> the output of ``layer`` for ``img``, in the autograd graph.

    One hook for the whole ``with`` block (removed in ``finally``); the forward pass stops at the
    layer, so the rest of the network costs nothing. The output is the module's own tensor: no
    in-place operation after the layer ever runs on it.
    """
    module = resolve_layer(model, layer)
    box: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise ConfigError(
                f"layer '{layer}' returns {type(output).__name__}, not a tensor; choose a module that outputs a single tensor"
            )
        box.append(output)
        raise _LayerReached

    def read(img: torch.Tensor) -> torch.Tensor:
        box.clear()
        try:
            model(img)
        except _LayerReached:
            return box[0]
        raise ConfigError(f"layer '{layer}' never ran in the forward pass; choose a layer the model calls")

    with removing([module.register_forward_hook(hook)]):
        yield read


def filter_of(act: torch.Tensor, index: int, method: str, layer: str) -> torch.Tensor:
    """Channel ``index`` of a ``(B, C, ...)`` activation, or a ConfigError naming the key."""
    if act.ndim < 2 or not 0 <= index < act.shape[1]:
        raise ConfigError(
            f"method.{method}.filter={index} is out of range: layer '{layer}' has "
            f"{act.shape[1] if act.ndim >= 2 else 0} channels (shape {tuple(act.shape)})"
        )
    return act[:, index]


# --- the loop ------------------------------------------------------------------------------------

@dataclass
class Trace:
    """Item 0's loss rows and snapshot frames, across every optimiser of one call."""

    size: tuple[int, int]
    columns: dict[str, list[float]] = field(default_factory=dict)
    frames: list[np.ndarray] = field(default_factory=list)
    step: int = 0
    notes: list[str] = field(default_factory=list)
    #: the gradient was zero at the start: the row says so, and not also that the loss did not fall
    stuck: bool = False

    def record(self, step: int, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        row = {"step": float(step), "loss": float(loss[0]), **{k: float(v[0]) for k, v in terms.items()}}
        for key, value in row.items():
            self.columns.setdefault(key, []).append(value)

    def table(self) -> dict[str, np.ndarray]:
        table = {k: np.asarray(v, dtype=np.float64) for k, v in self.columns.items()}
        table["step"] = table["step"].astype(np.int64)
        return table


@dataclass
class OptimizationMethod(Method):
    """Base of the techniques that make an image by gradient descent on ``losses``.

    A subclass implements ``prepare`` (per-call constants, e.g. the target features), ``start``,
    ``losses`` (per-image loss to *minimise* and its terms) and ``metrics``; optionally
    ``regularize`` (a function of the image applied after each step, e.g. blur) and
    ``optimize`` (deep dream's octaves call ``descend`` once per scale).
    """

    many_passes = True
    map_space: ClassVar[str] = "input"  # the synthesised image, shaped like the input
    #: each image is optimised on its own, with its own loss curve and snapshots (extras)
    batch_rows: ClassVar[bool] = False
    renders: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ("png:final", "strip:snapshots", "gif:snapshots", "csv:loss", "plot:loss")
    #: what an instance with ``batch`` > 1 writes as well (its ``writes`` then lists them)
    BATCH_WRITES: ClassVar[tuple[str, ...]] = ("strip:batch", "npy:batch_values")

    steps: int = param(100, min=1)
    lr: float = param(0.1, gt=0)
    optimizer: str = param("adam", choices=OPTIMIZERS)
    momentum: float = param(0.0, min=0)
    lr_decay: float = param(1.0, gt=0, max=1)
    lr_decay_every: int = param(0, min=0)
    snapshot_every: int = param(10, min=1)
    seed: int = param(0, min=0)
    input_mean: Optional[list[float]] = None
    input_std: Optional[list[float]] = param(None, gt=0)
    parametrization: str = param("pixel", choices=KINDS, kind="image parametrization")
    #: None (null in config): follows ``parametrization`` (``SETTINGS``), as do the fields a technique
    #: declares None
    decorrelate: Optional[bool] = None
    squash: Optional[str] = param(None, choices=SQUASHES, kind="squash")
    #: the spectrum's fall-off for parametrization=fft: coefficients scaled by 1/f^fft_decay
    fft_decay: float = param(1.0, min=0)
    #: ``none``, ``standard`` (Olah et al.'s stack) or a list of steps, e.g. ``[{pad: 12}, {jitter: 8}]``;
    #: None follows ``parametrization``
    transforms: Any = None
    #: an objective expression (``_objectives.parse_objective``) that replaces the technique's own loss,
    #: e.g. ``channel('blocks.4', 5) - 0.5*tv``; ``class_logit`` without an index is the row's target
    objective: Optional[str] = None
    #: images made together per input and target; with more than one, ``diversity`` times the Gram
    #: diversity at ``diversity_layer`` joins the objective (Olah et al. 2017, "Diversity")
    batch: int = param(1, min=1)
    #: None: ``DIVERSITY`` with a batch of several images and the technique's own loss, else 0
    diversity: Optional[float] = param(None, min=0)
    #: None: the technique's layer, or for a technique without one the last layer of the model with a
    #: spatial map
    diversity_layer: Optional[str] = None

    #: the weight of the diversity term a batch of several images gets by default
    DIVERSITY: ClassVar[float] = 10.0
    #: what the fields left at None become, per parametrization: the setting every technique shares
    #: (``BASE_SETTINGS``) updated with the technique's own; ``pixel`` is the paper's loop
    SETTINGS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    BASE_SETTINGS: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "pixel": {"decorrelate": False, "squash": "clamp", "transforms": "none"},
        "fft": {"decorrelate": True, "squash": "sigmoid", "transforms": "standard"},
    }

    def __post_init__(self) -> None:
        self.resolve_setting()
        super().__post_init__()
        if self.batch > 1:  # an instance attribute: the class's declaration stays what every instance writes
            self.writes = type(self).writes + self.BATCH_WRITES

    def resolve_setting(self) -> None:
        """Fill the fields left at None with the values of ``parametrization``'s setting; a field given
        a value keeps it. An unknown parametrization is left for ``check_params`` to name."""
        for name, value in self.setting(self.parametrization).items():
            if getattr(self, name, None) is None:
                setattr(self, name, copy.deepcopy(value))
        if self.diversity is None:
            several = isinstance(self.batch, int) and self.batch > 1
            self.diversity = self.DIVERSITY if several and self.objective is None else 0.0

    @classmethod
    def setting(cls, parametrization: str) -> dict[str, Any]:
        """The values the None fields take under ``parametrization`` (empty for an unknown one)."""
        return {**cls.BASE_SETTINGS.get(parametrization, {}), **cls.SETTINGS.get(parametrization, {})}

    # -- configuration

    def key(self, name: str) -> str:
        return f"method.{self.name}.{name}"

    def check_params(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise unknown("optimizer", self.key("optimizer"), self.optimizer, OPTIMIZERS)
        if self.optimizer != "sgd" and self.momentum:
            raise ConfigError(f"{self.key('momentum')} applies to optimizer=sgd only; set it to 0 or use optimizer=sgd")
        for name in ("steps", "snapshot_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{self.key(name)} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"{self.key('lr')} must be > 0, got {self.lr}")
        if self.lr_decay_every < 0 or not 0 < self.lr_decay <= 1:
            raise ConfigError(
                f"{self.key('lr_decay')} must be in (0, 1] and {self.key('lr_decay_every')} >= 0 (0: never), "
                f"got {self.lr_decay} and {self.lr_decay_every}"
            )
        if self.parametrization not in KINDS:
            raise unknown("image parametrization", self.key("parametrization"), self.parametrization, KINDS)
        if self.squash not in SQUASHES:
            raise unknown("squash", self.key("squash"), self.squash, SQUASHES)
        if not isinstance(self.decorrelate, bool):
            raise ConfigError(f"{self.key('decorrelate')} must be true or false, got {self.decorrelate!r}")
        if self.parametrization != "fft" and float(self.fft_decay) != 1.0:
            raise ConfigError(f"{self.key('fft_decay')} applies to {self.key('parametrization')}=fft only; "
                              "remove it or set parametrization=fft")
        self.transform_stack()
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"{self.key('batch')} must be an integer >= 1 (images per target), got {self.batch!r}")
        if self.diversity and self.batch < 2:
            raise ConfigError(f"{self.key('diversity')}={self.diversity} needs {self.key('batch')} >= 2: the term compares "
                              "the images of one batch; set batch=k or diversity=0")
        if self.objective is not None and self.diversity:
            raise ConfigError(f"{self.key('diversity')} applies to the technique's own loss; with "
                              f"{self.key('objective')} write the term into it, e.g. \"... + 10*diversity('blocks.4')\"")
        self.parsed_objective()  # a bad expression fails here, before any model is loaded

    def classic(self) -> bool:
        """Pixels, clamped, no colour change, no transforms: the loop of the original papers."""
        return (self.parametrization == "pixel" and self.squash == "clamp" and not self.decorrelate
                and not len(self.transform_stack()))

    def image_parametrization(self) -> Parametrization:
        return Parametrization(kind=self.parametrization, decorrelate=bool(self.decorrelate), squash=self.squash,
                               decay=float(self.fft_decay), key=f"method.{self.name}")

    def transform_stack(self) -> TransformStack:
        spec = self.transforms
        if spec is None or spec == "none":
            return TransformStack()
        if isinstance(spec, str) and spec in NAMED:
            return NAMED[spec]()
        if isinstance(spec, str) or not all(isinstance(step, Mapping) for step in spec):
            raise ConfigError(f"{self.key('transforms')} must be 'none', 'standard', 'robust', null (what "
                              f"{self.key('parametrization')} implies) or a list of steps such as "
                              f"[{{pad: 12}}, {{jitter: 8}}, {{scale: [0.95, 1.05]}}, {{rotate: [-5, 5]}}], got {spec!r}")
        return build_transforms(list(spec), key=self.key("transforms"))

    def check(self, model: nn.Module) -> None:
        self.check_params()

    # -- the parts a technique provides

    def prepare(self, model: nn.Module, x: torch.Tensor, target: Any, layer: Optional[str], logits: torch.Tensor,
                read: Optional[Callable]) -> dict[str, Any]:
        """Per-call constants for ``losses`` and ``metrics`` (never stored on ``self``: one instance
        serves a whole sweep)."""
        return {}

    def start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def losses(self, model: nn.Module, img: torch.Tensor, ctx: dict[str, Any],
               generator: Optional[torch.Generator]) -> Losses:
        """Per-image loss to minimise; ``generator`` is None for the final, un-jittered evaluation."""
        raise NotImplementedError

    def reference(self, seen: torch.Tensor, ctx: dict[str, Any]) -> Optional[dict[str, Any]]:
        """For a technique that compares the image with the input position by position (an inversion):
        the ``prepare`` constants recomputed from ``seen``, the input under the same random transform as
        the image at this step, so the two stay aligned. None (the default): nothing is compared."""
        return None

    def regularize(self, img: torch.Tensor, grad: torch.Tensor, step: int) -> torch.Tensor:
        """The image after a step's regularisation (before the clamp); ``grad`` is that step's
        gradient of the loss."""
        return img

    def regularizes(self) -> bool:
        """Whether ``regularize`` changes anything with these hyperparameters."""
        return type(self).regularize is not OptimizationMethod.regularize

    def loss(self, model: nn.Module, img: torch.Tensor, ctx: dict[str, Any],
             generator: Optional[torch.Generator]) -> Losses:
        """``losses``, or minus ``objective`` when one is set, minus ``diversity`` times the batch's
        Gram diversity when that is on."""
        if "objective" not in ctx:
            if "captured" not in ctx:
                return self.losses(model, img, ctx, generator)
            ctx["captured"].clear()
            loss, terms = self.losses(model, img, ctx, generator)
            return self.diverse(loss, terms, ctx)
        objective = ctx["objective"]
        found = ctx["probe"](img, to_pixels(img, self.input_mean, self.input_std))
        value = objective(found)
        terms = objective.parts(found) if isinstance(objective, Sum) else {repr(objective): value}
        return -value, terms

    def diverse(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], ctx: dict[str, Any]) -> Losses:
        layer = ctx["diversity_layer"]
        if layer not in ctx["captured"]:
            raise ConfigError(f"{self.key('diversity_layer')}='{layer}' did not run before the forward pass stopped "
                              f"at the technique's layer; choose a layer at or before it")
        value = Diversity(layer)(Probe(pixels=None, acts=ctx["captured"], logits=None))
        return loss - self.diversity * value, {**terms, "diversity": value}

    def metrics(self, model: nn.Module, x: torch.Tensor, start: torch.Tensor, final: torch.Tensor,
                ctx: dict[str, Any]) -> dict[str, float]:
        return {}

    def advice(self, metrics: dict[str, float], layer: Optional[str]) -> tuple[str, ...]:
        """Warnings a technique reads off its own ``metrics`` (e.g. a result that is no result)."""
        return ()

    def optimize(self, model: nn.Module, start: torch.Tensor, ctx: dict[str, Any], generator: torch.Generator,
                 trace: Trace) -> torch.Tensor:
        return self.descend(model, start, ctx, generator, trace, self.steps)

    # -- the shared machinery

    def check_loss(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], step: int) -> None:
        """Stop at the first non-finite loss: every later step would optimise NaN into the image and
        the run would end in a blank picture with no hint of where it went wrong."""
        if bool(torch.isfinite(loss).all()):
            return
        bad = non_finite_counts(loss.detach().cpu().double().numpy())
        what = ", ".join(k for k, v in terms.items() if not bool(torch.isfinite(v).all()))
        raise NonFiniteError(
            f"{self.name}: the loss is not finite at step {step} ({bad.split(' of ')[0]}"
            + (f"; in {what}" if what else "") + f"); the image left the range where the model is finite: "
            f"lower {self.key('lr')} (now {self.lr:g}) or check the model for overflow")

    def bounds(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = stats(img, self.input_mean, self.input_std)
        return (0 - m) / s, (1 - m) / s

    def lr_at(self, step: int) -> float:
        """``lr · lr_decay^⌊step / lr_decay_every⌋``: the first decay comes after ``lr_decay_every``
        steps, never at step 0."""
        return self.lr * self.lr_decay ** (step // self.lr_decay_every) if self.lr_decay_every else self.lr

    def make_optimizer(self, img: torch.Tensor) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam([img], lr=self.lr)
        return torch.optim.SGD([img], lr=self.lr, momentum=self.momentum)

    def descend(self, model: nn.Module, start: torch.Tensor, ctx: dict[str, Any], generator: torch.Generator,
                trace: Trace, steps: int) -> torch.Tensor:
        """``steps`` steps of one optimiser (built once) on a copy of ``start``; returns the image."""
        if not self.classic():
            return self.descend_params(model, start, ctx, generator, trace, steps)
        img = start.detach().clone().requires_grad_(True)
        opt = self.make_optimizer(img)
        low, high = self.bounds(img)
        for i in tqdm(range(steps), desc=self.name, unit="step", disable=None, leave=False):
            for group in opt.param_groups:
                group["lr"] = self.lr_at(i)
            with torch.enable_grad():
                loss, terms = self.loss(model, img, ctx, generator)
                self.check_loss(loss, terms, trace.step)
                (grad,) = torch.autograd.grad(loss.sum(), img)
            trace.record(trace.step, loss.detach(), {k: v.detach() for k, v in terms.items()})
            if trace.step == 0 and not bool(grad[:1].any()):
                trace.stuck = True
                trace.notes.append(
                    f"{self.name}: the gradient is zero at the start image, so nothing moves (e.g. a randomly "
                    "initialised network with zero biases sees only zeros in a constant image); "
                    + (f"start from noise: {self.key('init')}=noise" if hasattr(self, "init") else "choose another layer"))
            img.grad = grad
            opt.step()
            with torch.no_grad():
                img.copy_(torch.clamp(self.regularize(img, grad, i), low, high))
            trace.step += 1
            if trace.step % self.snapshot_every == 0:
                trace.frames.append(picture(img, self.input_mean, self.input_std, trace.size))
        img.grad = None
        return img.detach()

    def descend_params(self, model: nn.Module, start: torch.Tensor, ctx: dict[str, Any], generator: torch.Generator,
                       trace: Trace, steps: int) -> torch.Tensor:
        """``descend`` on the parameters of ``image_parametrization()``, started from the parameters of
        ``start``'s pixels, with ``transform_stack()`` applied to the pixels before every forward;
        returns the (untransformed) image in normalised space."""
        para, stack = self.image_parametrization(), self.transform_stack()
        mean, std = self.input_mean, self.input_std
        size = tuple(start.shape[-2:])
        # a start on the range's edge (init=zero: black) would sit where sigmoid has no gradient
        pixels = to_pixels(start.detach(), mean, std).double().clamp(0.01, 0.99)
        params = para.from_image(pixels).to(start.dtype).requires_grad_(True)
        opt = self.make_optimizer(params)
        compared = None
        if type(self).reference is not OptimizationMethod.reference:
            compared = to_pixels(ctx["input"], mean, std).expand(params.shape[0], -1, -1, -1)
        if self.regularizes() and trace.step == 0:
            trace.notes.append(f"{self.name}: its pixel-space regularisation (blur, decay, clipping) applies to "
                               f"parametrization=pixel with squash=clamp and no transforms only; here the "
                               f"{self.parametrization} parametrization and the transforms take its place")
        for i in tqdm(range(steps), desc=self.name, unit="step", disable=None, leave=False):
            for group in opt.param_groups:
                group["lr"] = self.lr_at(i)
            with torch.enable_grad():
                seen, step_ctx = para.to_image(params, size), ctx
                if len(stack) and compared is not None:  # one draw for image and input: they stay aligned
                    both = stack(torch.cat([seen, compared]), generator)
                    seen = both[:len(compared)]
                    with torch.no_grad():
                        step_ctx = {**ctx, **self.reference(normalise(both[len(compared):], mean, std), ctx)}
                elif len(stack):
                    seen = stack(seen, generator)
                loss, terms = self.loss(model, normalise(seen, mean, std), step_ctx, generator)
                self.check_loss(loss, terms, trace.step)
                (grad,) = torch.autograd.grad(loss.sum(), params)
            trace.record(trace.step, loss.detach(), {k: v.detach() for k, v in terms.items()})
            if trace.step == 0 and not bool(grad[:1].any()):
                trace.stuck = True
                trace.notes.append(f"{self.name}: the gradient is zero at the start image, so nothing moves")
            params.grad = grad
            opt.step()
            trace.step += 1
            if trace.step % self.snapshot_every == 0:
                with torch.no_grad():
                    trace.frames.append(picture(para.to_input(params, mean, std, size), mean, std, trace.size))
        params.grad = None
        with torch.no_grad():
            return para.to_input(params.detach(), mean, std, size)

    def attribute(self, model, x, target, layer):
        if x.shape[0] > 1:  # each image on its own, so its result does not depend on the batch it came in
            each = [target[b] if isinstance(target, (list, tuple)) else target for b in range(x.shape[0])]
            parts = [self.attribute(model, x[b:b + 1], t, layer) for b, t in enumerate(each)]
            first = parts[0]
            return dataclasses.replace(first, values=np.concatenate([p.values for p in parts]),
                                       logits=np.concatenate([p.logits for p in parts]),
                                       target=tuple(i for p in parts for i in p.target))
        self.check_params()
        x = x.detach()
        generator = torch.Generator().manual_seed(int(self.seed))
        objective = self.parsed_objective()
        with model_state_kept(model):
            with torch.no_grad():
                logits = model(x)  # the full network, before the layer reader cuts it short
            check_logits(logits, self.name, layer)
            diverse = self.batch > 1 and self.diversity > 0 and objective is None
            watched = [self.diversity_layer or layer or last_spatial_layer(model, x)] if diverse else []
            # the capture hook goes on first, so it sees the layer before the reader stops the pass there
            with capturing(model, watched) as captured, \
                    (layer_reader(model, layer) if layer else _no_reader()) as read, \
                    (probing(model, objective) if objective is not None else _no_reader()) as probe:
                with torch.no_grad():
                    ctx = {"read": read, "input": x, **self.prepare(model, x, target, layer, logits, read)}
                if objective is not None:
                    ctx.update(objective=objective.bind(ctx.get("target") or None), probe=probe)
                elif diverse:
                    ctx.update(captured=captured, diversity_layer=watched[0])
                start = self.spread(self.start(x, generator), generator)
                trace = Trace(size=tuple(x.shape[-2:]))
                trace.frames.append(picture(start, self.input_mean, self.input_std, trace.size))
                final = self.optimize(model, start, ctx, generator, trace)
                with torch.no_grad():
                    loss, terms = self.loss(model, final, ctx, None)
                    start_loss, _ = self.loss(model, start, ctx, None)
                    metrics = {"final_loss": float(loss[0]), **self.metrics(model, x, start[:1], final[:1], ctx)}
        trace.record(trace.step, loss, terms)
        if trace.step % self.snapshot_every:  # the last step was not a snapshot already
            trace.frames.append(picture(final, self.input_mean, self.input_std, trace.size))
        warnings = tuple(trace.notes)
        if not trace.stuck and float(loss[0]) >= float(start_loss[0]):
            warnings += (f"{self.name}: the loss did not decrease ({float(start_loss[0]):.4g} -> {float(loss[0]):.4g}); "
                         f"try another {self.key('lr')} or more {self.key('steps')}",)
        warnings += self.advice(metrics, layer)
        extras = {
            "final": picture(final, self.input_mean, self.input_std),
            "snapshots": np.stack(trace.frames),
            "loss": trace.table(),
        }
        if self.batch > 1:  # the row's map is image 0; every image of the batch is kept beside it
            extras["batch"] = np.stack([picture(final[i:i + 1], self.input_mean, self.input_std)
                                        for i in range(final.shape[0])])
            extras["batch_values"] = to_numpy(final)
        return Attribution(
            method=self.name,
            values=to_numpy(final[:1]),
            logits=to_numpy(logits),
            target=ctx.get("target", ()),
            layer=layer,
            params=self.params(),
            warnings=warnings,
            metrics=metrics,
            extras=extras,
        )

    def parsed_objective(self):
        """The ``objective`` expression as an Objective, or None for the technique's own loss."""
        if self.objective is None or str(self.objective).strip() in ("", "none", "null"):
            return None
        return parse_objective(str(self.objective), key=self.key("objective"))

    def spread(self, start: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``batch`` copies of the start image; with more than one, each gets its own seeded noise
        (N(0, 0.02²) per pixel value, drawn on the CPU) so the images can move apart."""
        if self.batch <= 1:
            return start
        pixels = to_pixels(start, self.input_mean, self.input_std).expand(self.batch, -1, -1, -1)
        noise = torch.randn(pixels.shape, generator=generator, dtype=start.dtype).to(start.device)
        return normalise((pixels + 0.02 * noise).clamp(0, 1), self.input_mean, self.input_std)


def last_spatial_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The last module (in call order) whose output is a 4-D map larger than 1 x 1: where a
    technique without a layer reads the batch's diversity by default."""
    seen: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: seen.append(name)
                                     if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1
                                     else None)
             for name, m in model.named_modules() if name]
    with removing(hooks), torch.no_grad():
        model(x[:1])
    if not seen:
        raise ConfigError("the model has no layer with a spatial map for the batch's diversity; set diversity_layer")
    return seen[-1]


@contextmanager
def _no_reader():
    yield None
