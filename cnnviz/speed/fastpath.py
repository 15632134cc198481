"""A faster copy of a model for the passes, equal as a function to the model in eval mode.

Every technique runs the model in eval mode, where a BatchNorm is the affine map
``y = (x - mean) / sqrt(var + eps) * w + b``. Folded into the convolution that feeds it, the network
computes the same function with one memory-bound operation less per layer, and in channels-last memory
the depthwise and pointwise convolutions of mobile networks run faster on CPU, with the float64
reference no further from the copy than from the original. A model without BatchNorms gets the copy
too: its parameters share the model's storage (convolution weights aside, which channels-last
re-lays) but require no gradient, which the input gradients never need. Measured speed-ups and
errors: docs/performance.md.

The price is rounding: channels-last convolutions sum in another order, with a larger float32 error.
Gradients of ReLU networks amplify such differences where a unit sits near zero: integrated gradients
on random-weight VGG-19 differ from captum's about as much as captum differs from a float64 run, and
equal captum's to float32 precision with the copy off. Runs that must match another library bit for
bit should turn the copy off.

A BatchNorm is folded only when, in a probe forward, the tensor it received *is* the output of the
convolution registered just before it; the copy is used only when its logits match the model's on
the probe and when no requested layer is a convolution whose output the folding changed (its output
would then include the BatchNorm). Otherwise the model itself runs. The copy is cached per model and
rebuilt when any parameter or buffer changes storage or version counter — which every in-place op
does, optimisers' steps and ``load_state_dict`` included, but not an in-place op on ``.data``
(``p.data.mul_(2)``): after such a change call ``fastpath.clear_cache()`` or run with
``fast_copy=false``. (Summing every tensor on each pass to catch it cost a large share of a Grad-CAM
call; docs/performance.md.)

Off unless asked: ``using(True)`` turns it on for the calls made inside the block, in this thread and
in the streams it starts (a context variable, not a global: the engine enters it from
``Speed(fast_copy=True)``, the runner from ``fast_copy: true``); ``exact()`` turns it off inside a block.
"""
from __future__ import annotations

import copy
import logging
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import ContextManager, Iterator, Optional, Sequence

import torch
from torch import nn

from ..core import passes
from ..core.bnfold import can_fold, folded_parameters
from ..core.hooks import removing

log = logging.getLogger("cnnviz")

#: whether the calls in this context run on the fast copy; off by default (the library API)
_on: ContextVar[bool] = ContextVar("cnnviz_fast_copy", default=False)


@contextmanager
def using(flag: bool) -> Iterator[None]:
    """The fast copy on (``True``) or off inside the block, as it was after it. The shared passes of
    ``cnnviz.core.passes`` run on it too: this scope sets their ``RUN_AS``."""
    flag = bool(flag)
    on, run_as = _on.set(flag), passes.RUN_AS.set(fast_model if flag else None)
    try:
        yield
    finally:
        passes.RUN_AS.reset(run_as)
        _on.reset(on)


def exact() -> ContextManager[None]:
    """Run the models exactly as given inside the block (no folded copy)."""
    return using(False)


def enabled() -> bool:
    """Whether calls made here run on the fast copy."""
    return _on.get()


def clear_cache() -> None:
    """Forget every fast copy: the next call builds it again from the model as it is now (needed after
    a change the cache cannot see, such as ``p.data.mul_(2)``)."""
    _CACHE.clear()


@dataclass
class _Copy:
    fingerprint: tuple
    module: Optional[nn.Module]  # None: this model cannot be copied safely
    changed: frozenset  # names of convolutions whose output now includes a BatchNorm


_CACHE: "weakref.WeakKeyDictionary[nn.Module, _Copy]" = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple:
    return tuple((t.data_ptr(), t._version, t.device.type) for t in [*model.parameters(), *model.buffers()])


def _foldable_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, batchnorm name) pairs where the BatchNorm's input is the conv's output tensor."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children()) or isinstance(m, nn.modules.batchnorm._BatchNorm)]
    candidates = []
    for (cn, conv), (bn_name, bn) in zip(leaves, leaves[1:]):
        if can_fold(conv, bn):
            candidates.append((cn, bn_name))
    if not candidates:
        return []
    modules = dict(model.named_modules())
    outputs: dict[str, list] = {}
    inputs: dict[str, list] = {}
    handles = []
    for cn, bn_name in candidates:
        handles.append(modules[cn].register_forward_hook(lambda m, i, o, n=cn: outputs.setdefault(n, []).append(o)))
        handles.append(modules[bn_name].register_forward_hook(lambda m, i, o, n=bn_name: inputs.setdefault(n, []).append(i[0])))
    with removing(handles), torch.no_grad():
        model(probe)
    return [(cn, bn) for cn, bn in candidates
            if len(outputs.get(cn, [])) == 1 and len(inputs.get(bn, [])) == 1 and inputs[bn][0] is outputs[cn][0]]


def _fold(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Out of place: the copy's other parameters share storage with the model's."""
    weight, bias = folded_parameters(conv, bn)
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter(bias, requires_grad=False)


class _FoldedNorm(nn.Module):
    """What remains of a BatchNorm once folded: timm's BatchNormAct2d keeps its ``drop`` and ``act``
    under their names (backward rules and layer names find them where they were)."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        for name in ("drop", "act"):
            if isinstance(getattr(bn, name, None), nn.Module):
                setattr(self, name, getattr(bn, name))

    def forward(self, x):
        for child in self.children():
            x = child(x)
        return x


def _build(model: nn.Module, probe: torch.Tensor) -> _Copy:
    fingerprint = _fingerprint(model)
    was_training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        pairs = _foldable_pairs(model, probe)
        # parameters shared, not requiring gradients: input gradients never need weight gradients, and
        # autograd on weights that require them costs VGG-19 a third more per forward + backward
        shared = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()}
        fast = copy.deepcopy(model, shared).eval()
        modules = dict(fast.named_modules())
        for cn, bn_name in pairs:
            _fold(modules[cn], modules[bn_name])
            fast.set_submodule(bn_name, _FoldedNorm(modules[bn_name]))
        fast = fast.to(memory_format=torch.channels_last)
        with torch.no_grad():
            want = model(probe)
            got = fast(probe.contiguous(memory_format=torch.channels_last))
        if not isinstance(want, torch.Tensor) or not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()) + 1e-5):
            log.warning("fast path: the BatchNorm-folded copy of %s does not match it; running the model as given",
                        type(model).__name__)
            return _Copy(fingerprint, None, frozenset())
        log.debug("fast path: %d BatchNorm(s) folded into their convolutions, channels-last", len(pairs))
        return _Copy(fingerprint, fast, frozenset(cn for cn, _ in pairs))
    except Exception as e:  # a model that cannot be copied or probed runs as given
        log.debug("fast path unavailable for %s: %s", type(model).__name__, e)
        return _Copy(fingerprint, None, frozenset())
    finally:
        for m, training in was_training:
            m.training = training


def instrumented(model: nn.Module) -> bool:
    """Hooks on the model belong to whoever put them there (a user, LRP's rules): run it as given."""
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in model.modules())


def fast_model(model: nn.Module, x: torch.Tensor, layers: Sequence[str] = ()) -> tuple[nn.Module, torch.Tensor]:
    """``(model to run, input for it)``: the folded channels-last copy and ``x`` in channels-last memory
    when that is safe for ``layers``, else ``model`` and ``x`` unchanged."""
    if not _on.get() or x.ndim != 4 or instrumented(model):
        return model, x
    entry = _CACHE.get(model)
    if entry is None or entry.fingerprint != _fingerprint(model):
        # built under inference mode (Score-CAM, occlusion), its tensors could never enter a backward
        with torch.inference_mode(False):
            entry = _build(model, x[:1].detach().clone())
        _CACHE[model] = entry
    if entry.module is None or entry.changed.intersection(layers):
        return model, x
    return entry.module, x.contiguous(memory_format=torch.channels_last)


def forward_fn(model: nn.Module, x: torch.Tensor, layers: Sequence[str] = ()):
    """``(module run, f)`` with ``f(batch) -> output`` through the fast copy where it is safe (see
    ``fast_model``), the batch put in the memory format that copy wants."""
    net, fx = fast_model(model, x, layers)
    if net is model:
        return model, model
    return net, lambda batch: net(batch.contiguous(memory_format=torch.channels_last))
