"""Forward/backward passes shared by the techniques."""
from __future__ import annotations

from contextlib import ExitStack, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Optional, Sequence, Union

import torch
from torch import nn

from .errors import ConfigError
from .hooks import capture_outputs, model_state_kept, relu_rule
from .targets import Target, class_indices, target_score


RELU_RULES = ("plain", "guided", "deconvnet")


@dataclass(frozen=True)
class BackwardRule:
    """How the backward pass treats ReLU-family modules: ``plain`` (autograd's own derivative),
    ``guided`` or ``deconvnet`` (``cnnviz.core.hooks.relu_rule``), the latter two only under the
    sub-module ``only_under`` when it is set. Hashable: it is the key of a shared pass, so that
    techniques asking for equal rules read one pass."""

    relu: str = "plain"
    only_under: Optional[str] = None

    def __post_init__(self) -> None:
        if self.relu not in RELU_RULES:
            raise ValueError(f"BackwardRule.relu must be one of {', '.join(RELU_RULES)}, got {self.relu!r}")
        if self.relu == "plain" and self.only_under is not None:
            # a plain backward has no scope; two spellings of one pass would run it twice
            raise ValueError("BackwardRule: only_under applies to the guided and deconvnet rules, not to plain")

    @property
    def plain(self) -> bool:
        return self.relu == "plain"

    def context(self, model: nn.Module) -> Optional[ContextManager]:
        """The context manager that applies the rule to ``model``, ``None`` for the plain backward."""
        if self.plain:
            return None
        # deconvnet on a network without ReLUs is the plain gradient (its rows warn); guided refuses
        return relu_rule(model, self.relu, self.only_under, required=self.relu != "deconvnet")


PLAIN = BackwardRule()


#: what the passes run in place of a model: ``f(model, x, layers) -> (module, input)``, set for a scope
#: by whoever applies an acceleration (``cnnviz.speed.fastpath.using``); None, the default: the model
#: as given. A context variable, so that the core depends on no acceleration and no call sets a global.
RUN_AS: ContextVar[Optional[Callable]] = ContextVar("cnnviz_run_as", default=None)


def _run_as(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> tuple[nn.Module, torch.Tensor]:
    f = RUN_AS.get()
    return (model, x) if f is None else f(model, x, layers)


@dataclass(frozen=True)
class PassRequest:
    """What a technique needs from a shared gradient pass: the backward rule, the layers whose
    gradients it reads, and the input gradient."""

    rule: BackwardRule = PLAIN
    layers: tuple[str, ...] = ()
    input_gradient: bool = False


@dataclass
class Pass:
    logits: torch.Tensor
    target: tuple[int, ...]
    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    input_gradient: Optional[torch.Tensor]
    #: how each layer's output holds its spatial map (``cnnviz.core.tokens.Layout``), for the layers
    #: a CAM has viewed as ``(B, C, h, w)``; empty in a pass as recorded
    layouts: dict = field(default_factory=dict)


def gradient_pass(
    model: nn.Module,
    x: torch.Tensor,
    target: Target,
    layers: Sequence[str] = (),
    input_gradient: bool = True,
    rule: Union[None, ContextManager, Callable[[nn.Module], Optional[ContextManager]]] = None,
    objective: Optional[Callable[[dict[str, torch.Tensor]], torch.Tensor]] = None,
) -> Pass:
    """One forward and one backward of the target score.

    Gradients are taken with ``torch.autograd.grad`` on the recorded layer outputs (and the
    input when asked), so ``param.grad`` is never touched and the backward stops at the deepest
    tensor that is needed. ``rule`` rewrites the backward pass (e.g. guided backprop), active only
    around the forward: a function of the module that runs, giving a context manager (so that it
    applies to the fast copy, see ``RUN_AS``), or a context manager already bound to ``model``
    (then ``model`` itself runs). ``objective`` replaces the target
    score by a function of the recorded layer outputs (e.g. one filter's activation).
    """
    layers = list(dict.fromkeys(layers))
    bound = rule is not None and hasattr(rule, "__enter__")
    if not bound:
        model, x = _run_as(model, x, layers)
        rule = rule(model) if rule is not None else None
    x = x.detach().clone().requires_grad_(True)
    with ExitStack() as stack:
        stack.enter_context(model_state_kept(model))
        captured = stack.enter_context(capture_outputs(model, layers))
        stack.enter_context(rule if rule is not None else nullcontext())
        with torch.enable_grad():
            logits = model(x)
            missing = [name for name in layers if name not in captured]
            if missing:
                raise ConfigError(f"layer(s) {', '.join(missing)} never ran in the forward pass; choose layers the model calls")
            if objective is not None:
                score, target_idx = objective(captured), ()
            else:
                score, target_idx = target_score(target, logits)
            wrt = [captured[name] for name in layers] + ([x] if input_gradient else [])
            grads = torch.autograd.grad(score, wrt, allow_unused=True) if wrt else ()
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]
    return Pass(
        logits=logits.detach(),
        target=target_idx,
        activations={n: captured[n].detach() for n in layers},
        gradients={n: g.detach() for n, g in zip(layers, grads)},
        input_gradient=grads[-1].detach().contiguous() if input_gradient else None,
    )


def activation_pass(model: nn.Module, x: torch.Tensor, target: Target, layers: Sequence[str] = ()) -> Pass:
    """One forward pass without gradients, recording the named layers' outputs."""
    layers = list(dict.fromkeys(layers))
    model, x = _run_as(model, x, layers)
    with model_state_kept(model), capture_outputs(model, layers) as captured, torch.no_grad():
        logits = model(x)
        missing = [name for name in layers if name not in captured]
        if missing:
            raise ConfigError(f"layer(s) {', '.join(missing)} never ran in the forward pass; choose layers the model calls")
        idx = class_indices(target, logits)
    return Pass(
        logits=logits,
        target=() if idx is None else tuple(int(i) for i in idx),
        activations={n: captured[n] for n in layers},
        gradients={},
        input_gradient=None,
    )


def target_scores(target: Target, logits: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """Per-row score of a batch of logits: the logit of ``indices`` (one index for all rows, or one
    per row), or the callable target applied to the logits."""
    if callable(target):
        return target(logits).reshape(-1)
    idx = torch.as_tensor(list(indices), device=logits.device).reshape(-1, 1).expand(logits.shape[0], 1)
    return logits.gather(1, idx)[:, 0]


def shared_passes(model: nn.Module, x: torch.Tensor, target: Target,
                  requests: Sequence[PassRequest]) -> dict[BackwardRule, Pass]:
    """One gradient pass per backward rule, serving the union of the requests' layers and inputs."""
    merged: dict[BackwardRule, tuple[list[str], bool]] = {}
    for r in requests:
        layers, wants_input = merged.get(r.rule, ([], False))
        merged[r.rule] = (layers + [l for l in r.layers if l not in layers], wants_input or r.input_gradient)
    return {
        rule: gradient_pass(model, x, target, layers=layers, input_gradient=wants_input,
                            rule=rule.context)
        for rule, (layers, wants_input) in merged.items()
    }
