"""The call contract shared by every technique: ``method(model, x, target, layer=...)``."""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from typing import Any, ClassVar, ContextManager, Optional, Sequence

import torch
from torch import nn

from ..core.attribution import Attribution, NonFiniteError, non_finite_counts
from ..core.constraints import check_fields
from ..core.errors import ConfigError
from ..core.maps import to_numpy, upsample
from ..speed.memory import reusing_freed_memory
from ..core.passes import Pass, PassRequest, activation_pass, rule_context, shared_passes
from ..core.targets import Target


@dataclasses.dataclass
class Method:
    """A technique: its dataclass fields are its hyperparameters, the model is a call argument."""

    name: ClassVar[str] = ""
    #: "gradient" (input-space map) or "cam" (layer map); decides what files are written.
    kind: ClassVar[str] = "gradient"
    needs_layer: ClassVar[bool] = False
    #: False for techniques that explain something other than a class score (a filter, a layer)
    uses_target: ClassVar[bool] = True
    #: Render kinds (keys of ``cnnviz.output.render.RENDERERS``) the runner writes for this technique.
    renders: ClassVar[tuple[str, ...]] = ("color", "gray")
    #: Files made from ``Attribution.extras``: ``"<writer>:<key>"`` specs, see ``cnnviz.output.writers.WRITERS``.
    writes: ClassVar[tuple[str, ...]] = ()
    #: True for techniques that run the model on many batches in one call (perturbations, paths,
    #: optimisation): they run inside ``memory.reusing_freed_memory``.
    many_passes: ClassVar[bool] = False

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

    def __call__(self, model: nn.Module, x: torch.Tensor, target: Target = None, layer: Optional[str] = None) -> Attribution:
        if x.ndim != 4:
            raise ValueError(f"{self.name}: x must be a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if self.needs_layer and not layer:
            raise ConfigError(f"{self.name} needs a layer: set layer=<dotted module name>")
        with self.memory():
            return self.attribute(model, x, target, layer)

    def memory(self):
        return reusing_freed_memory() if self.many_passes else nullcontext()

    def attribute(self, model: nn.Module, x: torch.Tensor, target: Target, layer: Optional[str]) -> Attribution:
        raise NotImplementedError

    def attribute_layers(self, model: nn.Module, x: torch.Tensor, target: Target, layers: Sequence[str]) -> list[Attribution]:
        """One Attribution per layer; techniques that can share their passes across layers override this."""
        return [self(model, x, target, layer=layer) for layer in layers]

    def pass_requests(self, layers: Sequence[str]) -> list[PassRequest]:
        """The gradient passes this technique can take from a computation shared with others;
        empty when it computes on its own."""
        return []

    def from_passes(self, model: nn.Module, x: torch.Tensor, target: Target, layers: Sequence[str],
                    passes: dict[tuple, Pass]) -> list[Attribution]:
        """The Attributions, from the passes named by ``pass_requests``."""
        raise NotImplementedError


@dataclasses.dataclass
class GradientMethod(Method):
    """Input-space gradient of the target score, optionally under a backward rule on ReLUs."""

    def rule(self) -> tuple:
        """``("plain",)`` or ``(relu rule, only_under)``, see ``passes.rule_context``."""
        return ("plain",)

    def backward_rule(self, model: nn.Module) -> Optional[ContextManager]:
        return rule_context(model, self.rule())

    def concurrent(self) -> bool:
        """Whether calls may run at once on one model from several threads (``cnnviz.speed.streams``):
        plain gradients put no hook on the model and change none of its state."""
        return self.rule() == ("plain",) and type(self).attribute is GradientMethod.attribute

    def check(self, model):
        rule = self.backward_rule(model)
        if rule is not None:
            with rule:
                pass

    def pass_requests(self, layers):
        return [PassRequest(self.rule(), (), True)] if type(self).attribute is GradientMethod.attribute else []

    def from_passes(self, model, x, target, layers, passes):
        p = passes[self.rule()]
        return [Attribution(method=self.name, values=to_numpy(p.input_gradient), logits=to_numpy(p.logits),
                            target=p.target, params=self.params())]

    def attribute(self, model, x, target, layer):
        return self.from_passes(model, x, target, [], shared_passes(model, x, target, self.pass_requests([])))[0]


def require_4d(layer: str, t: torch.Tensor, method: str) -> None:
    if t.ndim != 4:
        raise ConfigError(
            f"{method} needs a convolutional layer whose output is (B, C, H, W), but layer "
            f"'{layer}' outputs shape {tuple(t.shape)}; choose an earlier layer (layer=...)"
        )


def require_finite(layer: str, t: torch.Tensor, method: str) -> None:
    """Refuse a layer whose activations hold NaN/±Inf: every map made from them is NaN, and some
    techniques would fail on them with a message that does not say why (an SVD that does not converge)."""
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(
            f"{method} at layer '{layer}': the layer's activations are not finite "
            f"({non_finite_counts(t.detach().cpu().numpy())}); the model overflows there for this input: "
            "choose another layer (layer=...) or check the model's weights")


@dataclasses.dataclass
class CAMMethod(Method):
    """Class activation map at a layer, Σ_k w_k A_k unless ``combine`` says otherwise.

    Gradient CAMs override ``channel_weights`` (or ``combine``); gradient-free ones set
    ``uses_gradients = False`` and override ``layer_map``. ``attribute_layers`` serves any number of
    layers from one forward (and one backward) pass.
    """

    kind: ClassVar[str] = "cam"
    needs_layer: ClassVar[bool] = True
    renders: ClassVar[tuple[str, ...]] = ("cam_gray", "cam_heatmap", "cam_on_image")
    uses_gradients: ClassVar[bool] = True
    relu: bool = True

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
        if self.uses_gradients:
            return self.from_passes(model, x, target, layers, shared_passes(model, x, target, self.pass_requests(layers)))
        with torch.inference_mode(), self.memory():
            return self.finish_all(model, x, activation_pass(model, x, target, layers=layers), layers, target)

    def pass_requests(self, layers):
        return [PassRequest(("plain",), tuple(layers), False)] if self.uses_gradients else []

    def from_passes(self, model, x, target, layers, passes):
        return self.finish_all(model, x, passes[("plain",)], layers, target)

    def finish_all(self, model, x, p: Pass, layers: Sequence[str], target: Target) -> list[Attribution]:
        for layer in layers:
            require_4d(layer, p.activations[layer], self.name)
            require_finite(layer, p.activations[layer], self.name)
        return [self.finish(self.layer_map(model, x, p, layer, target), p, layer, tuple(x.shape[-2:])) for layer in layers]

    def finish(self, cam: torch.Tensor, p: Pass, layer: str, size: tuple[int, int]) -> Attribution:
        if self.relu:
            cam = cam.clamp(min=0)
        # a NaN/Inf map is refused where the Attribution is built, never drawn as zeros
        warnings = () if torch.any(cam != 0) else (f"{self.name} map at {layer} is all zero",)
        return Attribution(
            method=self.name,
            values=to_numpy(cam),
            logits=to_numpy(p.logits),
            target=p.target,
            layer=layer,
            upsampled=to_numpy(upsample(cam, size)),
            params=self.params(),
            warnings=warnings,
        )

    def attribute(self, model, x, target, layer):
        return self.attribute_layers(model, x, target, [layer])[0]
