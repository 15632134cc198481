"""Layer-wise relevance propagation as a modified backward pass.

The quantity that flows backward is g = R / a, the relevance of a tensor divided by its value
(Montavon et al. 2019, "Layer-Wise Relevance Propagation: An Overview", §10.2). In that form:

* a linear layer (conv, dense) with rule ρ passes  g_in = ∇_a⟨z_ρ(a), g ⊙ z / stab(z_ρ)⟩,
  where z is the layer's true output and z_ρ its output with the rule's modified weights;
* ReLU, max-pooling, average pooling, flattening and the addition of a skip connection need no
  change at all: their ordinary backward is exactly the LRP-0 / proportional-split rule in g-form
  (an addition a + b hands a/(a+b) of the relevance to a: the same g);
* activations that are not piecewise identity (ReLU6, LeakyReLU) pass relevance unchanged:
  g_in = g_out · y / x;
* the input relevance is R = x ⊙ g, except with the zᴮ rule, which computes it explicitly.

Everything here runs on a private copy of the model, with BatchNorm folded into the preceding
convolution; the user's model is never touched.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn
from torch.func import functional_call

from ..core.bnfold import can_fold, folded_parameters
from ..core.errors import ConfigError
from ..core.hooks import removing

LINEAR = (nn.Conv2d, nn.Linear)
RATIO_ACTIVATIONS = (nn.ReLU6, nn.LeakyReLU)
PASS_THROUGH = (
    nn.ReLU, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity, nn.Flatten,
)
SUPPORTED = LINEAR + RATIO_ACTIVATIONS + PASS_THROUGH + (nn.modules.batchnorm._BatchNorm,)
TINY = 1e-9
#: how LRP-ε's ε is read: ``relative`` (ε · std of the layer's output, per image) or ``absolute``
EPSILON_MODES = ("relative", "absolute")


def stabilise(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps · sign(z), with sign(0) = +1, and never exactly zero."""
    sign = torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
    return z + sign * max(eps, TINY)


def check_supported(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if not list(m.children()) and not isinstance(m, SUPPORTED):
            raise ConfigError(
                f"lrp does not support module '{name}' ({type(m).__name__}); supported layers: "
                "Conv2d, Linear, BatchNorm (folded), ReLU, ReLU6, LeakyReLU, max/avg pooling, Dropout, Flatten, Identity"
            )


def fold_batchnorms(model: nn.Module) -> None:
    """Fold every BatchNorm that directly follows a convolution (in module order) into it, in place
    (``model`` is a private copy); the BatchNorm becomes the identity."""
    previous: Optional[nn.Module] = None
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if previous is not None and can_fold(previous, m):
                weight, bias = folded_parameters(previous, m)
                with torch.no_grad():
                    previous.weight.copy_(weight)
                    previous.bias = nn.Parameter(bias, requires_grad=False)
                    # the BatchNorm stays, as the identity: layer names and rules find it where it was
                    m.running_mean.zero_()
                    m.running_var.fill_(1.0)
                    m.eps = 0.0
                    if m.affine:
                        m.weight.fill_(1.0)
                        m.bias.zero_()
            previous = None
        elif not list(m.children()):
            previous = m if isinstance(m, nn.Conv2d) else (previous if isinstance(m, nn.Identity) else None)


def private_copy(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    for m in clone.modules():
        if hasattr(m, "inplace"):
            m.inplace = False  # the rules read each activation's input after the forward
    return clone


def _with(module: nn.Module, weight: torch.Tensor, bias, a: torch.Tensor) -> torch.Tensor:
    params = {"weight": weight}
    if module.bias is not None:
        params["bias"] = bias if bias is not None else torch.zeros_like(module.bias)
    return functional_call(module, params, (a,))


def rule_output(module: nn.Module, a: torch.Tensor, out: torch.Tensor, rule: str, gamma: float) -> torch.Tensor:
    """z_ρ: the layer's output under the rule, differentiable in ``a`` (weights constant).

    γ and z⁺ use the generalised forms for signed inputs (Montavon et al. 2019, §10.2.2):
    for outputs z > 0, positive inputs meet w + γw⁺ and negative inputs w + γw⁻ (the roles swap
    for z ≤ 0); z⁺ keeps the positive contributions a⁺w⁺ + a⁻w⁻.
    """
    w, b = module.weight, module.bias
    if rule in ("epsilon", "zero"):
        return _with(module, w, b, a)
    pos, neg = a.clamp(min=0), a.clamp(max=0)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    bp = None if b is None else b.clamp(min=0)
    if rule == "zplus":
        return _with(module, wp, bp, pos) + _with(module, wn, None, neg)
    bn = None if b is None else b.clamp(max=0)
    up = _with(module, w + gamma * wp, None if b is None else b + gamma * bp, pos) + _with(module, w + gamma * wn, None, neg)
    down = _with(module, w + gamma * wn, None if b is None else b + gamma * bn, pos) + _with(module, w + gamma * wp, None, neg)
    return torch.where(out > 0, up, down)


def _linear_hook(rule: str, epsilon: float, gamma: float, epsilon_mode: str = "relative"):
    busy: set[int] = set()  # the rule's own forwards below must not re-enter this hook

    def hook(module, args, out):
        if id(module) in busy:
            return None
        busy.add(id(module))
        try:
            z_rule = rule_output(module, args[0], out, rule, gamma)
        finally:
            busy.discard(id(module))
        if rule == "epsilon" and epsilon_mode == "relative":  # ε relative to the spread of the layer's outputs, per image
            eps = epsilon * out.detach().flatten(1).std(dim=1).view(-1, *([1] * (out.ndim - 1)))
            # a constant output (std 0, e.g. all zero for a blank image) would leave 0 / 0 where z = 0
            eps = eps.clamp(min=TINY)
            denominator = z_rule + torch.where(z_rule >= 0, eps, -eps)
        elif rule == "epsilon":
            denominator = stabilise(z_rule, epsilon)
        else:
            denominator = stabilise(z_rule, 0.0)
        scale = (out / denominator).detach()
        return out.detach() + (z_rule * scale - (z_rule * scale).detach())

    return hook


def _ratio_hook(module, args, out):
    a = args[0]
    ratio = torch.where(a != 0, out / torch.where(a != 0, a, torch.ones_like(a)), torch.zeros_like(a)).detach()
    return out.detach() + (a * ratio - (a * ratio).detach())


@contextmanager
def relevance_rules(model: nn.Module, rules: dict[str, str], epsilon: float, gamma: float,
                    epsilon_mode: str = "relative") -> Iterator[None]:
    """Hooks turning ``model``'s backward into LRP in g-form; ``rules`` maps linear-layer names to
    epsilon | gamma | zplus | zero (layers not named keep their ordinary backward).

    LRP-ε's stabiliser is ε · std(z) of the layer's output z per image with ``epsilon_mode``
    ``relative`` (floored at ``TINY``, like the other rules' stabilisers), ε itself with ``absolute``
    (the paper's form): z + ε · sign(z), sign(0) = +1."""
    with removing([]) as handles:
        for name, m in model.named_modules():
            if name in rules:
                handles.append(m.register_forward_hook(_linear_hook(rules[name], epsilon, gamma, epsilon_mode)))
            elif isinstance(m, RATIO_ACTIVATIONS):
                handles.append(m.register_forward_hook(_ratio_hook))
        yield


def zb_relevance(module: nn.Module, x: torch.Tensor, out: torch.Tensor, g: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """The zᴮ rule (Montavon et al. 2017) at the input layer: relevance of inputs bounded in [low, high].

    R_i = Σ_j (x_i w_ij − l_i w⁺_ij − h_i w⁻_ij) / z_j^B · R_j,  R_j = out_j · g_j.
    """
    w = module.weight
    params = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
    terms = []
    with torch.enable_grad():
        for tensor, weight in ((x, w), (low, w.clamp(min=0)), (high, w.clamp(max=0))):
            t = tensor.detach().clone().requires_grad_(True)
            terms.append((t, functional_call(module, {**params, "weight": weight}, (t,))))
        zb = terms[0][1] - terms[1][1] - terms[2][1]
        s = (out * g / stabilise(zb, 0.0)).detach()
        grads = torch.autograd.grad([z for _, z in terms], [t for t, _ in terms], grad_outputs=[s, s, s])
    return x * grads[0] - low * grads[1] - high * grads[2]


@contextmanager
def layer_input(module: nn.Module) -> Iterator[list]:
    """Record the input of ``module`` during the ``with`` block (the last call's)."""
    seen: list = []
    with removing([module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))]):
        yield seen
