"""The call contract shared by every technique: ``method(model, x, target, layer=...)``."""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from typing import Any, Callable, ClassVar, ContextManager, Optional, Sequence

import torch
from torch import nn

from ..core.attribution import Attribution, NonFiniteError, check_logits, non_finite_counts
from ..core.constraints import check_fields
from ..core.errors import ConfigError
from ..core.maps import to_numpy, upsample
from ..speed.memory import reusing_when_asked
from ..core.hooks import model_state_kept
from ..core.passes import PLAIN, BackwardRule, Pass, PassRequest, activation_pass, shared_passes
from ..core.targets import Target, class_indices
from ..core.tokens import layout_of
from ..speed.fastpath import forward_fn


MAP_SPACES = ("input", "layer")


@dataclasses.dataclass
class Method:
    """A technique: its dataclass fields are its hyperparameters, the model is a call argument.

    The protocol (``cnnviz/methods/README.md``): a technique declares its traits as class
    variables and implements one of two paths, which its traits name —
    ``attribute`` (one call computes one Attribution on its own), or, with ``shares_passes``,
    ``pass_requests`` + ``from_passes`` (the engine runs one gradient pass per backward rule for
    every technique of a group; ``attribute`` and ``attribute_layers`` are then derived here).
    """

    name: ClassVar[str] = ""
    #: Where the map lives: ``"input"`` (``values`` shaped like ``x``, ``(B, C, H, W)``) or
    #: ``"layer"`` (``values`` ``(B, h, w)`` at ``layer``, with ``upsampled`` to the input size).
    map_space: ClassVar[str] = "input"
    needs_layer: ClassVar[bool] = False
    #: False for techniques that explain something other than a class score (a filter, a layer)
    uses_target: ClassVar[bool] = True
    #: Render kinds (keys of ``cnnviz.output.render.RENDERERS``) the runner writes for this technique.
    renders: ClassVar[tuple[str, ...]] = ("color", "gray")
    #: Files made from ``Attribution.extras``: ``"<writer>:<key>"`` specs, see ``cnnviz.output.writers.WRITERS``.
    writes: ClassVar[tuple[str, ...]] = ()
    #: True for techniques that run the model on many batches in one call (perturbations, paths,
    #: optimisation): they run inside ``memory.reusing_freed_memory`` when the caller asks (``Speed(reuse_memory=True)``).
    many_passes: ClassVar[bool] = False
    #: True when the result comes from shared gradient passes: the technique implements
    #: ``pass_requests`` and ``from_passes`` (and ``pass_requests`` may still return ``[]`` for a
    #: configuration that computes on its own, which then goes through ``attribute``).
    shares_passes: ClassVar[bool] = False
    #: True when calls may run at once on one model from several threads (``cnnviz.speed.streams``):
    #: the technique puts no hook on the model and changes none of its state.
    concurrent_safe: ClassVar[bool] = False
    #: True when one call on a batch of images gives each image what a call on it alone gives, its
    #: warnings, metrics and extras included (those of one image go in ``Attribution.per_row``):
    #: the runner then computes a batch in one call and splits it with ``Attribution.row``. False:
    #: the runner calls the technique image by image (its results summarise a batch, or it is
    #: computed image by image anyway).
    batch_rows: ClassVar[bool] = True
    #: None: the technique runs on any classifier. Otherwise the model family it needs (e.g.
    #: ``"vision_transformer"``): ``check(model)`` refuses other models, naming the family, and the
    #: registry-generated tests on TinyCNN test it on its own family instead.
    model_family: ClassVar[Optional[str]] = None
    #: None, or ``(field, values)``: the hyperparameter that most changes what the map shows and the
    #: values worth comparing, which ``experiment=select`` sweeps (``select.values`` may replace them)
    main_hyperparameter: ClassVar[Optional[tuple[str, tuple]]] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # a misspelt space (or a hyperparameter of that name) would fall through every ``map_space == ...`` test
        if cls.map_space not in MAP_SPACES:
            raise TypeError(f"{cls.__name__}.map_space must be one of {', '.join(MAP_SPACES)}, got {cls.map_space!r}")

    def __post_init__(self) -> None:
        # the library API refuses what the runner refuses, under the same config key
        check_fields(self, f"method.{self.name or type(self).__name__}")
        self.check_params()

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_params(self) -> None:
        """Raise ``ConfigError`` for hyperparameters that cannot work together (no model needed);
        each field's own range or choices are declared with ``constraints.param``."""

    def check(self, model: nn.Module) -> None:
        """Raise ``ConfigError`` early when this technique cannot run on ``model``."""

    def concurrent(self) -> bool:
        """Whether this instance may run from several threads at once: ``concurrent_safe`` unless a
        wrapper's answer depends on what it wraps."""
        return self.concurrent_safe

    def __call__(self, model: nn.Module, x: torch.Tensor, target: Target = None, layer: Optional[str] = None) -> Attribution:
        if x.ndim != 4:
            raise ValueError(f"{self.name}: x must be a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if self.needs_layer and not layer:
            raise ConfigError(f"{self.name} needs a layer: set layer=<dotted module name>")
        with self.memory():
            return self.attribute(model, x, target, layer)

    def memory(self):
        return reusing_when_asked() if self.many_passes else nullcontext()

    def attribute(self, model: nn.Module, x: torch.Tensor, target: Target, layer: Optional[str]) -> Attribution:
        """One Attribution; a technique that shares passes gets it from passes of its own."""
        if not self.shares_passes:
            raise NotImplementedError(f"{type(self).__name__} must implement attribute (or declare shares_passes)")
        return self.attribute_layers(model, x, target, [layer] if self.needs_layer else [])[0]

    def attribute_layers(self, model: nn.Module, x: torch.Tensor, target: Target, layers: Sequence[str]) -> list[Attribution]:
        """One Attribution per layer (one for a technique without layers): from one set of shared
        passes when the technique shares them, else one call per layer."""
        if self.shares_passes:
            return self.from_passes(model, x, target, layers, shared_passes(model, x, target, self.pass_requests(layers)))
        return [self(model, x, target, layer=layer) for layer in layers]

    def pass_requests(self, layers: Sequence[str]) -> list[PassRequest]:
        """The gradient passes this technique takes from a computation shared with others (only
        read when ``shares_passes``); empty when it computes on its own."""
        return []

    def from_passes(self, model: nn.Module, x: torch.Tensor, target: Target, layers: Sequence[str],
                    passes: dict[BackwardRule, Pass]) -> list[Attribution]:
        """The Attributions, from the passes named by ``pass_requests``."""
        raise NotImplementedError


@dataclasses.dataclass
class GradientMethod(Method):
    """Input-space gradient of the target score, under a backward rule on ReLUs (``rule``), read
    from the shared pass of that rule."""

    map_space: ClassVar[str] = "input"
    shares_passes: ClassVar[bool] = True

    def rule(self) -> BackwardRule:
        """The backward rule this technique's gradient is taken under."""
        return PLAIN

    def backward_rule(self, model: nn.Module) -> Optional[ContextManager]:
        return self.rule().context(model)

    def check(self, model):
        rule = self.backward_rule(model)
        if rule is not None:
            with rule:
                pass

    def pass_requests(self, layers):
        return [PassRequest(self.rule(), (), True)] if self.shares_passes else []

    def from_passes(self, model, x, target, layers, passes):
        p = passes[self.rule()]
        return [Attribution(method=self.name, values=to_numpy(p.input_gradient), logits=to_numpy(p.logits),
                            target=p.target, params=self.params())]


@dataclasses.dataclass
class PerturbationMethod(Method):
    """Input-space attribution from forward passes alone, on perturbed copies of the input (no
    gradient, no backward rule), in the spirit of captum's perturbation attributions.

    ``attribute`` runs the model (through the fast copy where it is safe) once on ``x`` under
    ``torch.inference_mode``, refuses non-finite logits, and asks ``maps`` for the ``(B, C, H, W)``
    maps. A technique implements ``maps``, putting the perturbed copies of several images into one
    model batch (so a batch of images costs no more forwards than its perturbations fill), or
    ``image_map`` for one image at a time, which the default ``maps`` calls image by image.
    """

    map_space: ClassVar[str] = "input"
    many_passes: ClassVar[bool] = True
    renders: ClassVar[tuple[str, ...]] = ("color", "gray", "pos_sal", "neg_sal")

    def maps(self, net: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             target: Target, which: list[int], logits: torch.Tensor) -> torch.Tensor:
        """The ``(B, C, H, W)`` maps of ``x``; ``forward`` runs ``net`` (the model or its fast copy)
        on a batch, ``which`` is one class index per image (empty for a callable target) and
        ``logits`` the unperturbed logits of the batch. Image row ``b`` must equal what a call on
        image ``b`` alone gives."""
        return torch.stack([self.image_map(net, forward, x, b, target, which[b:b + 1], logits)
                            for b in range(x.shape[0])])

    def image_map(self, net: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, b: int,
                  target: Target, which: list[int], logits: torch.Tensor) -> torch.Tensor:
        """The ``(C, H, W)`` map of image ``b`` of ``x``; ``which`` is ``[class index]`` (empty for
        a callable target). Only read by the default ``maps``."""
        raise NotImplementedError(f"{type(self).__name__} must implement maps or image_map")

    def attribute(self, model, x, target, layer):
        net, forward = forward_fn(model, x)
        with model_state_kept(net), torch.inference_mode():
            logits = forward(x)
            check_logits(logits, self.name)  # before any score drop, which NaN would make meaningless
            idx = class_indices(target, logits)
            which = [] if idx is None else [int(i) for i in idx]
            maps = self.maps(net, forward, x, target, which, logits)
        return Attribution(
            method=self.name,
            values=to_numpy(maps),
            logits=to_numpy(logits),
            target=tuple(which),
            params=self.params(),
        )


def require_finite(layer: str, t: torch.Tensor, method: str) -> None:
    """Refuse a layer whose activations hold NaN/±Inf: every map made from them is NaN, and some
    techniques would fail on them with a message that does not say why (an SVD that does not converge)."""
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(
            f"{method} at layer '{layer}': the layer's activations are not finite "
            f"({non_finite_counts(t.detach().cpu().numpy())}); the model overflows there for this input: "
            "choose another layer (layer=...) or check the model's weights")


def spatial_pass(model: nn.Module, x: torch.Tensor, p: Pass, layers: Sequence[str], method: str) -> Pass:
    """``p`` with the activations and gradients of ``layers`` as ``(B, C, h, w)`` views and their
    layouts in ``Pass.layouts`` (``cnnviz.core.tokens``); a ConfigError for a layer without a spatial map."""
    layouts = {}
    for layer in layers:
        try:
            layouts[layer] = layout_of(model, layer, p.activations[layer], tuple(x.shape))
        except ConfigError as e:
            raise ConfigError(f"{method}: {e}") from None
    activations = {**p.activations, **{l: layouts[l].spatial(p.activations[l]) for l in layers}}
    gradients = {**p.gradients, **{l: layouts[l].spatial(p.gradients[l]) for l in layers if l in p.gradients}}
    return dataclasses.replace(p, activations=activations, gradients=gradients, layouts={**p.layouts, **layouts})


@dataclasses.dataclass
class CAMMethod(Method):
    """Class activation map at a layer, Σ_k w_k A_k unless ``combine`` says otherwise.

    Gradient CAMs override ``channel_weights`` (or ``combine``) and read the shared plain pass;
    gradient-free ones set ``uses_gradients = False`` (which sets ``shares_passes = False``) and
    override ``layer_map``. ``attribute_layers`` serves any number of layers from one forward (and
    one backward) pass.
    """

    map_space: ClassVar[str] = "layer"
    needs_layer: ClassVar[bool] = True
    renders: ClassVar[tuple[str, ...]] = ("cam_gray", "cam_heatmap", "cam_on_image")
    uses_gradients: ClassVar[bool] = True
    shares_passes: ClassVar[bool] = True
    relu: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # for a CAM the two are one choice: gradients come from the shared plain pass, a
        # gradient-free CAM runs its own forward passes; one declaration keeps them from disagreeing
        cls.shares_passes = cls.uses_gradients

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` weights from activations and gradients ``(B, C, h, w)``."""
        raise NotImplementedError

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weights = self.channel_weights(activations, gradients)
        return torch.einsum("bc,bchw->bhw", weights, activations)

    def layer_map(self, model: nn.Module, x: torch.Tensor, p: Pass, layer: str, target: Target) -> torch.Tensor:
        """``(B, h, w)`` map at ``layer`` before the optional ReLU."""
        return self.combine(p.activations[layer], p.gradients[layer])

    def attribute_layers(self, model: nn.Module, x: torch.Tensor, target: Target, layers: Sequence[str]) -> list[Attribution]:
        if self.shares_passes:
            return super().attribute_layers(model, x, target, layers)
        with torch.inference_mode(), self.memory():
            return self.finish_all(model, x, activation_pass(model, x, target, layers=layers), layers, target)

    def pass_requests(self, layers):
        return [PassRequest(PLAIN, tuple(layers), False)] if self.shares_passes else []

    def from_passes(self, model, x, target, layers, passes):
        return self.finish_all(model, x, passes[PLAIN], layers, target)

    def finish_all(self, model, x, p: Pass, layers: Sequence[str], target: Target) -> list[Attribution]:
        # the one place where layer outputs become (B, C, h, w) maps: transformer tokens and channels-last
        # maps are viewed as such (cnnviz.core.tokens), the same view for activations and gradients
        p = spatial_pass(model, x, p, layers, self.name)
        for layer in layers:
            require_finite(layer, p.activations[layer], self.name)
        return [self.finish(self.layer_map(model, x, p, layer, target), p, layer, tuple(x.shape[-2:])) for layer in layers]

    def finish(self, cam: torch.Tensor, p: Pass, layer: str, size: tuple[int, int]) -> Attribution:
        blanked = torch.zeros(cam.shape[0], dtype=torch.bool)
        acts = p.activations.get(layer)
        if self.relu and acts is not None and acts.shape[0] == cam.shape[0]:
            # a map that was negative everywhere at a layer with negative activations (a conv or
            # BatchNorm output before its ReLU): non-negative channel weights (Grad-CAM++'s) on
            # negative activations give it, and the ReLU below blanks it; the warning says so
            flat = cam.detach().flatten(1)
            negative = acts.detach().flatten(1).amin(dim=1) < 0
            blanked = ((flat.amax(dim=1) <= 0) & (flat.amin(dim=1) < 0) & negative).cpu()
        if self.relu:
            cam = cam.clamp(min=0)
        # a NaN/Inf map is refused where the Attribution is built, never drawn as zeros
        zero = f"{self.name} map at {layer} is all zero"
        why = (f"{zero}: before the ReLU it was negative everywhere, and the layer has negative activations "
               f"(a layer before its activation function): positive channel weights on negative activations give "
               f"a negative map, which the ReLU blanks; choose a layer after its activation (its ReLU or the "
               f"block's output), or set method.{self.name}.relu=false to keep the signed map")
        rows = [() if bool(torch.any(row != 0)) else ((why if bool(blanked[i]) else zero),) for i, row in enumerate(cam)]
        warnings = () if any(not r for r in rows) else tuple(dict.fromkeys(w for r in rows for w in r))
        each = rows if cam.shape[0] > 1 else []
        return Attribution(
            method=self.name,
            values=to_numpy(cam),
            logits=to_numpy(p.logits),
            target=p.target,
            layer=layer,
            upsampled=to_numpy(upsample(cam, size)),
            params=self.params(),
            warnings=warnings,
            per_row=tuple({"warnings": r} for r in each),
        )

    def attribute(self, model, x, target, layer):
        return self.attribute_layers(model, x, target, [layer])[0]
