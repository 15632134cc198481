"""Objectives for feature visualisation: small registered pieces that compose by weighted sums.

Olah et al. 2017 ("Feature Visualization", Distill, section "Optimization Objectives") describe
what an optimised image can be asked to do: raise a class logit, a channel's mean activation, one
neuron (one spatial position of a channel), a direction in a layer's activation space, the whole
layer's energy (DeepDream), and, across a batch, be *diverse* (the "Diversity" section: a penalty
on the similarity of the images' Gram matrices, after Gatys et al.'s style representation).

An objective maps one forward pass (a ``Probe``: the pixels, the captured activations and the
logits) to one value per image ``(B,)`` to *maximise*. Objectives compose::

    objective = class_logit(130) - 1e-3 * l2()
    objective = channel("blocks.4", 7) + 0.5 * diversity("blocks.2")

``parse_objective("class_logit(130) - 1e-3*l2")`` builds the same from a config string; each name
is looked up in a strict registry (an unknown one lists close matches). ``probing(model, objective)``
places the hooks the objective needs for the ``with`` block and returns ``probe(x, pixels)``; the
hooks act during ``probe`` calls only.
"""
from __future__ import annotations

import ast
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from ..core.hooks import removing
from ..core.layers import resolve_layer
from ..core.registry import Registry

#: the objective names; one class each, registered below
OBJECTIVES = Registry("objective", "objective")


@dataclass(frozen=True)
class Probe:
    """One forward pass as objectives see it: the pixels before transforms ``(B, 3, H, W)`` in
    ``[0, 1]``, the activations of the layers asked for, and the logits (``None`` when no objective
    needs them: the forward pass then stops at the last layer asked for)."""

    pixels: Optional[torch.Tensor]
    acts: dict
    logits: Optional[torch.Tensor]

    def act(self, layer: str) -> torch.Tensor:
        return self.acts[layer]


class Objective:
    """A value per image to maximise; ``+``, ``-``, unary ``-`` and ``number *`` build weighted sums."""

    name: str = ""

    #: layers whose output the objective reads
    layers: tuple[str, ...] = ()
    #: whether it reads the logits (the full forward pass)
    needs_logits: bool = False

    def __call__(self, probe: Probe) -> torch.Tensor:
        raise NotImplementedError

    def bind(self, target: Optional[Sequence[int]]) -> "Objective":
        """This objective with the run's ``target`` classes filled in where it left them open
        (``class_logit`` without an index); the others are returned as they are."""
        return self

    # composition

    def terms(self) -> tuple[tuple[float, "Objective"], ...]:
        return ((1.0, self),)

    def __add__(self, other: "Objective") -> "Objective":
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum(self.terms() + other.terms())

    def __sub__(self, other: "Objective") -> "Objective":
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-1.0) * other

    def __mul__(self, weight: float) -> "Objective":
        if isinstance(weight, Objective) or not isinstance(weight, (int, float)):
            return NotImplemented
        return Sum(tuple((float(weight) * w, o) for w, o in self.terms()))

    __rmul__ = __mul__

    def __neg__(self) -> "Objective":
        return (-1.0) * self


class Sum(Objective):
    """``Σ wᵢ · objectiveᵢ``; ``parts(probe)`` gives each weighted term for a loss table."""

    def __init__(self, terms: tuple[tuple[float, Objective], ...]):
        self._terms = terms
        self.layers = tuple(dict.fromkeys(l for _, o in terms for l in o.layers))
        self.needs_logits = any(o.needs_logits for _, o in terms)

    def terms(self) -> tuple[tuple[float, Objective], ...]:
        return self._terms

    def bind(self, target: Optional[Sequence[int]]) -> "Objective":
        return Sum(tuple((w, o.bind(target)) for w, o in self._terms))

    def parts(self, probe: Probe) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for w, o in self._terms:
            label = repr(o)
            out[label] = out.get(label, 0) + w * o(probe)
        return out

    def __call__(self, probe: Probe) -> torch.Tensor:
        return sum(w * o(probe) for w, o in self._terms)

    def __repr__(self) -> str:
        text = " + ".join(f"{w:g}*{o!r}" for w, o in self._terms)
        return text.replace("+ -", "- ")


# --- checks shared by the pieces -------------------------------------------------------------------

def _channel(act: torch.Tensor, channel: int, who: str) -> torch.Tensor:
    if act.ndim < 2 or not 0 <= channel < act.shape[1]:
        raise ConfigError(
            f"objective {who}: channel {channel} is out of range: the layer has "
            f"{act.shape[1] if act.ndim >= 2 else 0} channels (shape {tuple(act.shape)}); "
            "choose a channel in [0, channels)"
        )
    return act[:, channel]


def _spatial_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the batch one: ``(B, ...)`` -> ``(B,)``."""
    return t.flatten(1).mean(1) if t.ndim > 1 else t


# --- the pieces ------------------------------------------------------------------------------------

@OBJECTIVES.register("class_logit")
class ClassLogit(Objective):
    """The logit of class ``index`` (one int for every image, or one per image): Simonyan et al.'s
    class model score, before the softmax so that other classes are not pushed down instead.
    Without an index, the run's target (``bind``)."""

    needs_logits = True

    def __init__(self, index: Union[int, Sequence[int], None] = None):
        self.index = index

    def bind(self, target: Optional[Sequence[int]]) -> "Objective":
        if self.index is not None:
            return self
        if not target:
            raise ConfigError("objective class_logit has no index and the row has no target class; "
                              "write class_logit(<class index>) or set target=<class index>")
        return ClassLogit(int(target[0]) if len(target) == 1 else list(target))

    def __call__(self, probe: Probe) -> torch.Tensor:
        if self.index is None:
            raise ConfigError("objective class_logit has no index; write class_logit(<class index>)")
        logits = probe.logits
        b, classes = logits.shape[0], logits.shape[-1]
        index = list(self.index) if isinstance(self.index, (list, tuple)) else [int(self.index)] * b
        if len(index) != b:
            raise ConfigError(f"objective {self!r}: {len(index)} classes for a batch of {b} images; give one class or one per image")
        bad = [i for i in index if not 0 <= i < classes]
        if bad:
            raise ConfigError(f"objective {self!r}: class {bad[0]} is out of range; the model has {classes} classes")
        return logits.reshape(b, -1)[torch.arange(b, device=logits.device), torch.tensor(index, device=logits.device)]

    def __repr__(self) -> str:
        return "class_logit" if self.index is None else f"class_logit({self.index})"


class _LayerObjective(Objective):
    def __init__(self, layer: str):
        self.layer = str(layer)
        self.layers = (self.layer,)


@OBJECTIVES.register("channel")
class Channel(_LayerObjective):
    """Mean activation of ``channel`` at ``layer`` over all spatial positions (Olah et al.'s
    "channel" objective, the usual filter visualisation)."""

    def __init__(self, layer: str, channel: int):
        super().__init__(layer)
        self.channel = int(channel)

    def __call__(self, probe: Probe) -> torch.Tensor:
        return _spatial_mean(_channel(probe.act(self.layer), self.channel, repr(self)))

    def __repr__(self) -> str:
        return f"channel('{self.layer}', {self.channel})"


@OBJECTIVES.register("neuron")
class Neuron(_LayerObjective):
    """Activation of ``channel`` at one spatial position ``(y, x)`` of ``layer``; the centre
    ``(H//2, W//2)`` of the activation map by default (of the map actually seen, so it follows
    the size a scale transform gives)."""

    def __init__(self, layer: str, channel: int, y: Optional[int] = None, x: Optional[int] = None):
        super().__init__(layer)
        self.channel, self.y, self.x = int(channel), y, x

    def __call__(self, probe: Probe) -> torch.Tensor:
        plane = _channel(probe.act(self.layer), self.channel, repr(self))
        if plane.ndim != 3:
            raise ConfigError(f"objective {self!r}: layer '{self.layer}' has no 2-D spatial map (shape "
                              f"{tuple(probe.act(self.layer).shape)}); use channel(...) instead")
        h, w = plane.shape[-2:]
        y = h // 2 if self.y is None else int(self.y)
        x = w // 2 if self.x is None else int(self.x)
        if not (0 <= y < h and 0 <= x < w):
            raise ConfigError(f"objective {self!r}: position (y={y}, x={x}) is outside the {h}x{w} map of "
                              f"layer '{self.layer}'; leave y and x out for the centre")
        return plane[:, y, x]

    def __repr__(self) -> str:
        where = "" if self.y is None and self.x is None else f", y={self.y}, x={self.x}"
        return f"neuron('{self.layer}', {self.channel}{where})"


@OBJECTIVES.register("direction")
class Direction(_LayerObjective):
    """``⟨v, a(y, x)⟩`` averaged over positions: the dot product of a channel-space vector ``v``
    with the activation vector at every position of ``layer`` (Olah et al.'s "layer direction";
    a one-hot ``v`` gives the channel objective)."""

    def __init__(self, layer: str, vector: Sequence[float]):
        super().__init__(layer)
        self.vector = torch.as_tensor(vector, dtype=torch.float64).flatten()

    def __call__(self, probe: Probe) -> torch.Tensor:
        act = probe.act(self.layer)
        if act.ndim < 2 or act.shape[1] != self.vector.numel():
            raise ConfigError(f"objective {self!r}: the vector has {self.vector.numel()} entries but layer "
                              f"'{self.layer}' has {act.shape[1] if act.ndim >= 2 else 0} channels; give one per channel")
        v = self.vector.to(act.dtype).to(act.device).view(1, -1, *([1] * (act.ndim - 2)))
        return _spatial_mean((act * v).sum(1))

    def __repr__(self) -> str:
        return f"direction('{self.layer}', <{self.vector.numel()} values>)"


@OBJECTIVES.register("deep_dream")
class DeepDream(_LayerObjective):
    """Mean of the squared activations of ``layer`` (Mordvintsev et al. 2015's DeepDream objective,
    ``½‖a‖²`` up to the constant factor: a mean keeps the scale independent of the layer's size)."""

    def __call__(self, probe: Probe) -> torch.Tensor:
        return _spatial_mean(probe.act(self.layer) ** 2)

    def __repr__(self) -> str:
        return f"deep_dream('{self.layer}')"


@OBJECTIVES.register("diversity")
class Diversity(_LayerObjective):
    """Minus the mean cosine similarity between this image's Gram matrix at ``layer`` and each other
    image's of the batch (Olah et al. 2017, "Diversity"): ``G_b = A_b A_bᵀ``, ``A_b`` the ``C x HW``
    activation of image ``b``; value ``d_b = −mean_{j≠b} cos(vec G_b, vec G_j)``. Identical images
    give ``−1`` each (cos = 1); a batch of one has no pair and gives 0. Maximising it pushes the
    images' styles apart."""

    def __call__(self, probe: Probe) -> torch.Tensor:
        act = probe.act(self.layer)
        b = act.shape[0]
        if b < 2:
            return act.new_zeros(b)
        a = act.flatten(2)  # (B, C, HW)
        gram = F.normalize((a @ a.transpose(1, 2)).flatten(1), dim=1)  # unit vec(G_b)
        cos = gram @ gram.T  # (B, B)
        off = cos.sum(1) - cos.diagonal()
        return -off / (b - 1)

    def __repr__(self) -> str:
        return f"diversity('{self.layer}')"


@OBJECTIVES.register("l2")
class L2(Objective):
    """Mean squared distance of the pixels from mid-grey 0.5: an image-energy penalty, to be
    *subtracted* (``class_logit(130) - 1e-3*l2``), the pixel-space counterpart of Simonyan et al.'s
    L2 regulariser."""

    def __call__(self, probe: Probe) -> torch.Tensor:
        return _spatial_mean((probe.pixels - 0.5) ** 2)

    def __repr__(self) -> str:
        return "l2"


@OBJECTIVES.register("tv")
class TotalVariation(Objective):
    """Mean squared difference between neighbouring pixels (down and right), per image: a
    smoothness penalty, to be subtracted (Mahendran & Vedaldi's total variation with β = 2)."""

    def __call__(self, probe: Probe) -> torch.Tensor:
        p = probe.pixels
        dy = (p[..., 1:, :] - p[..., :-1, :]) ** 2
        dx = (p[..., :, 1:] - p[..., :, :-1]) ** 2
        return _spatial_mean(dy) + _spatial_mean(dx)

    def __repr__(self) -> str:
        return "tv"


def make(name: str, *args: Any, key: str = "objective", **kwargs: Any) -> Objective:
    """The objective registered as ``name`` built with ``args``; an unknown name lists close
    matches, wrong arguments name the objective's signature."""
    try:
        cls = OBJECTIVES.get(name)
    except ConfigError as e:
        raise ConfigError(str(e).replace("(objective)", f"({key})")) from None
    try:
        return cls(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{key}: {usage(name)} cannot take these arguments ({e})") from None


def usage(name: str) -> str:
    """``neuron(layer, channel, y=None, x=None)``: how to call a registered objective."""
    cls = OBJECTIVES.get(name)
    if cls.__init__ is Objective.__init__:
        return name
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    shown = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in params]
    return f"{name}({', '.join(shown)})"


# --- a config string -> an objective ---------------------------------------------------------------

def parse_objective(text: str, key: str = "objective") -> Objective:
    """``"class_logit(130) - 1e-3*l2"`` -> the composed objective. The grammar is a Python
    expression of objective calls (``name(args...)``, or a bare ``name`` for one without
    arguments), number literals and lists, ``+``, ``-`` and ``number *``; nothing is evaluated
    beyond that (the text is parsed with ``ast``, never ``eval``-ed)."""
    try:
        tree = ast.parse(str(text), mode="eval").body
    except SyntaxError as e:
        raise ConfigError(f"{key}='{text}' is not an objective expression ({e.msg}); "
                          "write e.g. class_logit(130) - 1e-3*l2") from None

    def literal(node: ast.AST) -> Any:
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise ConfigError(f"{key}='{text}': arguments must be numbers, strings or lists, got "
                              f"'{ast.unparse(node)}'") from None

    def build(node: ast.AST) -> Union[Objective, float]:
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            left, right = build(node.left), build(node.right)
            if isinstance(node.op, ast.Mult):
                if isinstance(left, Objective) == isinstance(right, Objective):
                    raise ConfigError(f"{key}='{text}': '*' multiplies an objective by a number, got '{ast.unparse(node)}'")
                return left * right
            if not (isinstance(left, Objective) and isinstance(right, Objective)):
                raise ConfigError(f"{key}='{text}': '+'/'-' join objectives, got '{ast.unparse(node)}'")
            return left + right if isinstance(node.op, ast.Add) else left - right
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = build(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.Name):
            return make(node.id, key=key)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = [literal(a) for a in node.args]
            kwargs = {k.arg: literal(k.value) for k in node.keywords}
            return make(node.func.id, *args, key=key, **kwargs)
        raise ConfigError(f"{key}='{text}': '{ast.unparse(node)}' is not allowed; use objective calls, numbers, + - *")

    result = build(tree)
    if not isinstance(result, Objective):
        raise ConfigError(f"{key}='{text}' is a number, not an objective; write e.g. class_logit(130)")
    return result


# --- running the model for an objective ------------------------------------------------------------

class _Reached(Exception):
    """Stops the forward pass once every layer an objective reads has run."""


@contextmanager
def capturing(model: nn.Module, layers: Sequence[str]) -> Iterator[dict]:
    """A dict that, during the ``with`` block, holds the output of each of ``layers`` from the forward
    passes the model runs (the first call of a module in a pass, until the caller clears the dict);
    nothing stops the pass. Hooks removed in ``finally``; downstream modules get a clone, so an
    in-place op after the layer never alters what was kept."""
    captured: dict[str, torch.Tensor] = {}

    def make_hook(name: str) -> Callable:
        def hook(_module, _inputs, output):
            return _keep(captured, name, output).clone()

        return hook

    with removing([resolve_layer(model, n).register_forward_hook(make_hook(n)) for n in layers]):
        yield captured


def _keep(captured: dict, name: str, output: Any) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise ConfigError(f"layer '{name}' returns {type(output).__name__}, not a tensor; "
                          "choose a module that outputs a single tensor")
    # a module called more than once in a pass (a shared ReLU) is read at its first call,
    # the one the early stop would see
    captured.setdefault(name, output)
    return output


@contextmanager
def probing(model: nn.Module, objective: Objective) -> Iterator[Callable[..., Probe]]:
    """``probe(x, pixels=None) -> Probe`` for the ``with`` block: one forward hook per layer the
    objective reads, removed in ``finally``. The hooks keep the module's own output and pass a clone
    downstream, so an in-place op after the layer never alters what the objective reads. Without a
    logit term the pass stops as soon as every layer has run. A module called several times in one
    pass is read at its first call."""
    layers = tuple(objective.layers)
    modules = [resolve_layer(model, name) for name in layers]
    captured: dict[str, torch.Tensor] = {}
    stop_early = not objective.needs_logits
    probing_now = False

    def make_hook(name: str) -> Callable:
        def hook(_module, _inputs, output):
            if not probing_now:  # another forward pass in the block (a metric's) runs untouched
                return None
            _keep(captured, name, output)
            if stop_early and len(captured) == len(layers):
                raise _Reached
            return output.clone()

        return hook

    def probe(x: torch.Tensor, pixels: Optional[torch.Tensor] = None) -> Probe:
        nonlocal probing_now
        captured.clear()
        logits = None
        if layers or objective.needs_logits:
            probing_now = True
            try:
                logits = model(x)
            except _Reached:
                pass
            finally:
                probing_now = False
        missing = [n for n in layers if n not in captured]
        if missing:
            raise ConfigError(f"layer '{missing[0]}' never ran in the forward pass; choose a layer the model calls")
        return Probe(pixels=pixels, acts=dict(captured), logits=logits if objective.needs_logits else None)

    with removing([m.register_forward_hook(make_hook(n)) for n, m in zip(layers, modules)]):
        yield probe
