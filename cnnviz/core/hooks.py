"""Every hook cnnviz places lives in a context manager that removes it in ``finally``."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .layers import resolve_layer

#: Module types whose backward pass guided backprop / deconvnet rewrite.
RELU_FAMILY: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)


@contextmanager
def removing(handles: list) -> Iterator[list]:
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()
        handles.clear()


@contextmanager
def capture_outputs(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named modules during forward passes.

    The hook keeps the module's own output and hands a clone downstream, so an in-place op after
    the layer (``ReLU(inplace=True)``) changes the clone, never the recorded tensor, and gradients
    taken with respect to the recorded tensor are the pre-in-place ones.
    """
    captured: dict[str, torch.Tensor] = {}

    def make(name: str) -> Callable:
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ConfigError(
                    f"layer '{name}' returns {type(output).__name__}, not a tensor; "
                    "choose a module that outputs a single tensor"
                )
            captured[name] = output
            return output.clone()

        return hook

    with removing([]) as handles:
        for name in dict.fromkeys(layers):
            handles.append(resolve_layer(model, name).register_forward_hook(make(name)))
        yield captured


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward lets only positive gradients through."""

    @staticmethod
    def forward(ctx, x):  # noqa: D401
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


def relu_modules(model: nn.Module, only_under: Optional[str] = None) -> list[tuple[str, nn.Module]]:
    if only_under:
        resolve_layer(model, only_under)  # an unknown sub-module gets close matches, not "has none"
    prefix = None if not only_under else only_under + "."
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, RELU_FAMILY) and (prefix is None or name.startswith(prefix))
    ]


#: where activation modules are defined: torch's own, and timm's (GELU, Swish, HardSwish, ... of its own)
_ACTIVATION_MODULES = ("torch.nn.modules.activation", "timm.layers.activations")


def other_nonlinearities(model: nn.Module, only_under: Optional[str] = None) -> list[tuple[str, nn.Module]]:
    """Activation modules other than the ReLU family (GELU, SiLU, Hardswish, Sigmoid, Tanh, LeakyReLU,
    softmax attention, ...), under ``only_under`` when set: guided backprop and deconvnet define no
    rule for them."""
    prefix = None if not only_under else only_under + "."
    return [
        (name, m)
        for name, m in model.named_modules()
        if not isinstance(m, RELU_FAMILY) and type(m).__module__.startswith(_ACTIVATION_MODULES)
        and (prefix is None or name.startswith(prefix))
    ]


class _DeconvGate(torch.autograd.Function):
    """Forward: the module's output. Backward: max(grad, 0) straight to the module's input,
    bypassing the module's own derivative (Zeiler & Fergus' deconvnet rule)."""

    @staticmethod
    def forward(ctx, module_input, module_output):
        return module_output.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0), None


def _guided_hooks(module: nn.Module) -> list:
    return [module.register_forward_hook(lambda _m, _i, out: _PositiveGradient.apply(out))]


def _deconv_hooks(module: nn.Module) -> list:
    inputs: list[torch.Tensor] = []

    def keep_input(_m, args):
        inputs.append(args[0].clone())  # before an in-place ReLU overwrites it

    def gate(_m, _args, out):
        return _DeconvGate.apply(inputs.pop(), out.detach())

    return [module.register_forward_pre_hook(keep_input), module.register_forward_hook(gate)]


RELU_RULES = {"guided": _guided_hooks, "deconvnet": _deconv_hooks}


@contextmanager
def relu_rule(model: nn.Module, rule: str, only_under: Optional[str] = None, method: str = "", required: bool = True):
    """Rewrite the backward pass of every ReLU-family module for the ``with`` block only.

    ``guided``: autograd keeps the module's own derivative f'(x) and the gate placed after the
    module first drops negative gradients, so grad_in = f'(x) * max(grad_out, 0).
    ``deconvnet``: grad_in = max(grad_out, 0), whatever the sign of the forward input.
    With ``required=False`` a model without such modules runs with its ordinary backward.

    A model (or ``only_under`` scope) with other activation modules (GELU, SiLU, Hardswish, Sigmoid,
    ...) is refused, naming them, with or without ReLUs beside them: the papers define these rules on
    ReLU networks only, and running the plain backward through the other nonlinearities would pass a
    partly plain gradient off as guided.
    """
    found = relu_modules(model, only_under)
    others = other_nonlinearities(model, only_under)
    if others:
        name = method or {"guided": "guided backprop", "deconvnet": "deconvnet"}.get(rule, rule)
        kinds = sorted({type(m).__name__ for _, m in others})
        shown = ", ".join(f"'{n}'" for n, _ in others[:3]) + (f", ... {len(others) - 3} more" if len(others) > 3 else "")
        where = f" under '{only_under}'" if only_under else ""
        has = (f"has {', '.join(kinds)} activations beside its {len(found)} ReLU-family modules" if found else
               f"has none: it has {', '.join(kinds)} activations")
        raise ConfigError(
            f"{name} has a backward rule for ReLU-family modules (nn.ReLU, nn.ReLU6) only, but the model{where} "
            f"{has} ({shown}); the rule is not defined for them, and the plain "
            f"gradient through them is not {name}. Use vanilla_backprop, integrated_gradients or a CAM (gradcam), or "
            "restrict the rule to a part of the model that holds only ReLUs (method.<name>.only_under=<sub-module>)"
        )
    if not found and required:
        where = f" under '{only_under}'" if only_under else ""
        raise ConfigError(
            f"{method or {'guided': 'guided backprop', 'deconvnet': 'deconvnet'}.get(rule, rule)} rewrites the backward pass of ReLU-family modules (nn.ReLU, nn.ReLU6), "
            f"but the model has none{where}; functional relu calls cannot be rewritten. "
            "Use a gradient method such as vanilla_backprop, or a model built from nn.ReLU modules"
        )
    with removing([]) as handles:
        for _, module in found:
            handles.extend(RELU_RULES[rule](module))
        yield


def guided_relus(model: nn.Module, only_under: Optional[str] = None, method: str = "guided_backprop"):
    return relu_rule(model, "guided", only_under, method)


@contextmanager
def model_state_kept(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Run in eval mode with parameters frozen; restore training flags and requires_grad after."""
    flags = [(m, m.training) for m in model.modules()]
    grads_needed = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        for p, _ in grads_needed:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in flags:
            m.training = training
        for p, needed in grads_needed:
            p.requires_grad_(needed)


@contextmanager
def replaced_output(module: nn.Module, replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Substitute ``replace(output)`` for ``module``'s output during the ``with`` block."""
    with removing([module.register_forward_hook(lambda _m, _i, out: replace(out))]):
        yield
