"""The call contract shared by every technique: ``method(model, x, target, layer=...)``."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, ContextManager, Optional

import torch
from torch import nn

from ..attribution import Attribution
from ..errors import ConfigError
from ..maps import to_numpy, upsample
from ..passes import Pass, gradient_pass
from ..targets import Target


@dataclasses.dataclass
class Method:
    """A technique: its dataclass fields are its hyperparameters, the model is a call argument."""

    name: ClassVar[str] = ""
    #: "gradient" (input-space map) or "cam" (layer map); decides what files are written.
    kind: ClassVar[str] = "gradient"
    needs_layer: ClassVar[bool] = False
    #: Render kinds (keys of ``cnnviz.render.RENDERERS``) the runner writes for this technique.
    renders: ClassVar[tuple[str, ...]] = ("color", "gray")

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, model: nn.Module) -> None:
        """Raise ``ConfigError`` early when this technique cannot run on ``model``."""

    def __call__(self, model: nn.Module, x: torch.Tensor, target: Target = None, layer: Optional[str] = None) -> Attribution:
        if x.ndim != 4:
            raise ValueError(f"{self.name}: x must be a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if self.needs_layer and not layer:
            raise ConfigError(f"{self.name} needs a layer: set layer=<dotted module name>")
        return self.attribute(model, x, target, layer)

    def attribute(self, model: nn.Module, x: torch.Tensor, target: Target, layer: Optional[str]) -> Attribution:
        raise NotImplementedError


@dataclasses.dataclass
class GradientMethod(Method):
    """Input-space gradient of the target score, optionally under a backward rule."""

    def backward_rule(self, model: nn.Module) -> Optional[ContextManager]:
        return None

    def check(self, model):
        rule = self.backward_rule(model)
        if rule is not None:
            with rule:
                pass

    def attribute(self, model, x, target, layer):
        p = gradient_pass(model, x, target, rule=self.backward_rule(model))
        return Attribution(
            method=self.name,
            values=to_numpy(p.input_gradient),
            logits=to_numpy(p.logits),
            target=p.target,
            params=self.params(),
        )


def require_4d(layer: str, t: torch.Tensor, method: str) -> None:
    if t.ndim != 4:
        raise ConfigError(
            f"{method} needs a convolutional layer whose output is (B, C, H, W), but layer "
            f"'{layer}' outputs shape {tuple(t.shape)}; choose an earlier layer (layer=...)"
        )


@dataclasses.dataclass
class CAMMethod(Method):
    """Class activation map Σ_k w_k A_k at one layer; subclasses define the channel weights."""

    kind: ClassVar[str] = "cam"
    needs_layer: ClassVar[bool] = True
    renders: ClassVar[tuple[str, ...]] = ("cam_gray", "cam_heatmap", "cam_on_image")
    relu: bool = True

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` weights from activations and gradients ``(B, C, h, w)``."""
        raise NotImplementedError

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weights = self.channel_weights(activations, gradients)
        return torch.einsum("bc,bchw->bhw", weights, activations)

    def cam_from_pass(self, p: Pass, layer: str, size: tuple[int, int]) -> Attribution:
        acts, grads = p.activations[layer], p.gradients[layer]
        require_4d(layer, acts, self.name)
        cam = self.combine(acts, grads)
        if self.relu:
            cam = cam.clamp(min=0)
        warnings = ()
        if not torch.any(cam != 0):
            warnings = (f"{self.name} map at {layer} is all zero",)
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
        p = gradient_pass(model, x, target, layers=[layer], input_gradient=False)
        return self.cam_from_pass(p, layer, tuple(x.shape[-2:]))
