"""Attention probabilities of timm vision transformers, and the token grid they live on, for the
transformer techniques (``attention_rollout``, ``transformer_attribution``, ``raw_attention``).

timm's ``Attention.forward`` (timm 1.0) computes ``F.scaled_dot_product_attention`` when its
``fused_attn`` flag is set, and the probabilities then never exist as a tensor. With the flag off it
computes ``softmax(q kᵀ / √d)`` and passes it through ``attn_drop`` (an ``nn.Dropout``, the identity
in eval mode) before multiplying by ``v``; a forward hook on ``attn_drop`` therefore sees the
probabilities of every head. ``attention_probabilities`` switches the flag off and places those hooks
for the ``with`` block only, and puts both back in ``finally``. Models are recognised by duck typing
(``qkv``, ``num_heads``, ``attn_drop``, ``fused_attn``), so importing this module imports no timm.

The map of a technique is the class token's row over the patch tokens, laid out on the token grid
by the rules the CAMs use for token outputs (``cnnviz.core.tokens``): prefix tokens (class,
distillation, register) from ``num_prefix_tokens``, the grid from ``model.token_grid`` when set, else
from the patch embedding for this input size, else the one factorisation with the input's aspect
ratio; when none fits, a ConfigError names ``model.token_grid``.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import ClassVar, Iterator, Optional, Sequence

import torch
from torch import nn

from ..core.attribution import Attribution
from ..core.errors import ConfigError
from ..core.hooks import model_state_kept, removing
from ..core.maps import to_numpy, upsample
from ..core.targets import Target, target_score
from .base import CAMMethod


def is_attention(module: nn.Module) -> bool:
    """A timm-style self-attention module whose unfused path runs the probabilities through ``attn_drop``."""
    return (hasattr(module, "fused_attn") and hasattr(module, "qkv") and hasattr(module, "num_heads")
            and isinstance(getattr(module, "attn_drop", None), nn.Module))


def attention_modules(model: nn.Module, method: str) -> list[tuple[str, nn.Module]]:
    """The attention modules of ``model`` in registration order, the forward order of timm's blocks
    (``blocks.0.attn``, ...); a ConfigError naming what is needed when there is none."""
    found = [(n, m) for n, m in model.named_modules() if is_attention(m)]
    windowed = [n for n, m in found if hasattr(m, "window_size")]
    if windowed:
        # Swin-style attention runs inside local windows: no token attends to the whole image and
        # there is no class token, so neither a class-token row nor a rollout over blocks exists
        raise ConfigError(
            f"{method} needs global self-attention with a class token (a ViT/DeiT, blocks.*.attn), but "
            f"{type(model).__name__} has windowed attention ({windowed[0]}, ...); use a CAM technique at a stage "
            "(method=gradcam layer=layers.N) for this model")
    if not found:
        raise ConfigError(
            f"{method} needs a vision transformer with timm Attention modules (blocks.*.attn); model "
            f"{type(model).__name__} has none. Use a timm ViT/DeiT (model=timm model.arch=vit_tiny_patch16_224), "
            "or a CAM technique (method=gradcam) for this model")
    return found


def token_grid(model: nn.Module, layer: str, batch: int, n_tokens: int, size: Sequence[int]) -> tuple[int, tuple[int, int]]:
    """``(prefix, (h, w))``: how many tokens come before the patch tokens, and the grid of the patch
    tokens, for ``n_tokens`` tokens of block ``layer`` on an input of spatial ``size``.

    The rules are those the CAMs use on token outputs (``cnnviz.core.tokens.layout_of``: the grid
    set as ``model.token_grid``, else the patch embedding's grid for this input size, else the one
    factorisation with the input's aspect ratio), so a transformer technique and a CAM lay one
    model's tokens out alike; a ConfigError names ``model.token_grid`` when none fits."""
    from ..core.tokens import layout_of

    # layout_of reads only the shape of a (B, N, C) token tensor: an empty one stands for the block's tokens
    layout = layout_of(model, layer, torch.empty(batch, n_tokens, 0), (batch, 3, int(size[0]), int(size[1])))
    return layout.prefix, layout.grid


@contextmanager
def attention_probabilities(model: nn.Module, method: str) -> Iterator[dict[str, torch.Tensor]]:
    """Record every attention module's probabilities ``(B, heads, N, N)`` during forward passes, by
    name, for the ``with`` block; fused attention is off inside and restored after, hooks removed.

    The hook keeps the probabilities and hands a clone downstream (as ``capture_outputs`` does),
    so gradients taken with respect to the recorded tensor are those of the probabilities."""
    modules = attention_modules(model, method)
    captured: dict[str, torch.Tensor] = {}
    # an attribute set on the instance is put back; one only on the class is deleted from the instance again
    flags = [(m, "fused_attn" in vars(m), getattr(m, "fused_attn")) for _, m in modules]

    def make(name: str):
        def hook(_module, _inputs, output):
            captured[name] = output
            return output.clone()
        return hook

    try:
        with removing([]) as handles:
            for name, m in modules:
                m.fused_attn = False
                handles.append(m.attn_drop.register_forward_hook(make(name)))
            yield captured
    finally:
        for m, own, value in flags:
            if own:
                m.fused_attn = value
            else:
                delattr(m, "fused_attn")


def checked(captured: dict[str, torch.Tensor], modules: list[tuple[str, nn.Module]], batch: int,
            method: str) -> list[torch.Tensor]:
    """The probabilities in block order, after checking that every block produced them."""
    missing = [n for n, _ in modules if n not in captured]
    if missing:
        raise ConfigError(
            f"{method}: the attention module(s) {', '.join(missing)} did not pass their probabilities through "
            "attn_drop with fused_attn off; this timm attention variant is not supported")
    out = [captured[n] for n, _ in modules]
    for (n, _), p in zip(modules, out):
        if p.ndim != 4 or p.shape[-1] != p.shape[-2] or p.shape[0] != batch:
            raise ConfigError(f"{method}: {n}.attn_drop saw shape {tuple(p.shape)}, not attention probabilities "
                              f"(B={batch}, heads, N, N); this timm attention variant is not supported")
    return out


@dataclasses.dataclass
class AttentionMethod(CAMMethod):
    """A map on the token grid read from the attention probabilities of a timm vision transformer,
    rendered like a CAM (``map_space = "layer"``, with ``upsampled``), with no layer to choose.

    ``uses_gradients`` is False for all of them, because none reads the shared plain pass (which has
    no attention probabilities): a gradient technique takes its own backward here. ``relu`` is kept
    from ``CAMMethod`` for the same call contract; the maps of these techniques are non-negative."""

    needs_layer: ClassVar[bool] = False
    #: the model family the technique needs (``check`` refuses others): these run on timm vision
    #: transformers only, so the registry-generated TinyCNN tests leave them to tests on a tiny ViT
    model_family: ClassVar[str] = "vision_transformer"
    uses_gradients: ClassVar[bool] = False
    #: take the gradient of the target score with respect to the probabilities
    needs_gradients: ClassVar[bool] = False
    relu: bool = False

    def check(self, model: nn.Module) -> None:
        attention_modules(model, self.name)

    def token_map(self, probs: list[torch.Tensor], grads: Optional[list[torch.Tensor]]) -> torch.Tensor:
        """``(B, N)``: the class token's row over all tokens, from the probabilities of every block
        (and their gradients when ``needs_gradients``)."""
        raise NotImplementedError

    def attribute(self, model: nn.Module, x: torch.Tensor, target: Target, layer: Optional[str]) -> Attribution:
        return self.attribute_layers(model, x, target, [])[0]

    def attribute_layers(self, model, x, target, layers):
        modules = attention_modules(model, self.name)
        # a leaf that needs a gradient: the parameters are frozen below, and a graph is needed to
        # reach the probabilities; the caller's tensor is never touched
        x_in = x.detach().clone().requires_grad_(self.needs_gradients)
        with model_state_kept(model), attention_probabilities(model, self.name) as captured:
            with torch.enable_grad() if self.needs_gradients else torch.no_grad():
                logits = model(x_in)
                probs = checked(captured, modules, x.shape[0], self.name)
                if self.needs_gradients:
                    score, idx = target_score(target, logits)
                    grads = [g.detach() for g in torch.autograd.grad(score, probs)]
                else:
                    idx, grads = (), None
                probs = [p.detach() for p in probs]
                logits = logits.detach()
        prefix, (h, w) = token_grid(model, modules[-1][0], x.shape[0], probs[0].shape[-1], x.shape[-2:])
        if prefix == 0:
            raise ConfigError(
                f"{self.name} reads the class token's row of the attention, but {type(model).__name__} has no class "
                "token (num_prefix_tokens = 0, e.g. a ViT built with class_token=False and average pooling); "
                "use a ViT with a class token, or a CAM technique at a block (method=gradcam layer=blocks.N)")
        row = self.token_map(probs, grads)
        cam = row[:, prefix:].reshape(row.shape[0], h, w)
        size = tuple(x.shape[-2:])
        if self.relu:
            cam = cam.clamp(min=0)
        zero = (f"{self.name} map is all zero",)
        each = [bool(torch.any(r != 0)) for r in cam] if cam.shape[0] > 1 else []
        return [Attribution(
            method=self.name,
            values=to_numpy(cam),
            logits=to_numpy(logits),
            target=tuple(idx) if self.uses_target else (),
            layer=None,
            upsampled=to_numpy(upsample(cam, size)),
            params=self.params(),
            warnings=() if torch.any(cam != 0) else zero,
            per_row=tuple({"warnings": () if nonzero else zero} for nonzero in each),
        )]
