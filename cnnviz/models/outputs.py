"""Targets that are not one class logit: a continuous output, the similarity to a reference image,
and one output of a model that returns several.

Every technique explains ``target`` on a model whose forward gives ``(B, K)``. Each target kind
here turns its request into that form, in the way that leaves the techniques untouched and the
layers' names as they were:

- ``{output: 3}`` (a regression model's continuous output 3): the model is left as it is; the
  target is ``OutputScore(3)`` (``cnnviz.core.targets``), a callable on the output, which the
  call contract already accepts. A callable is a raw score to every technique (Score-CAM does not
  softmax it, the probability metrics skip it), and the manifest records its value, not a class.
- ``{similar_to: ref.jpg}`` (why does the input look like the reference?): ``SimilarTo`` wraps the
  network; its forward returns ``(B, R)``, the cosine similarity of the input's pooled features
  to each reference's, and the target is ``OutputScore(r)`` (a raw score again: a softmax over the
  references would mean nothing). Pooled features: for a timm model
  ``forward_head(forward_features(x), pre_logits=True)``; otherwise the input of the last
  ``nn.Linear`` (torchvision's classifiers); ``target.layer`` names another module, whose output
  is used (globally average-pooled when 4D). The references are preprocessed like the inputs and
  embedded once, when the wrapper is made, by the model as it is then (eval mode).
- ``{output: b, class: 2}`` (a model returning a tuple or dict): ``SelectOutput`` returns output
  ``b``; the target is class 2 of it, an ordinary class logit (softmax, probabilities and metrics
  apply as for any classifier).

The wrappers take the network's children as their own (``RegionLogits`` in ``segmentation.py`` is
the precedent), so layer names stay the network's. They share the network's child dictionary rather
than registering each child again: the fast path (``cnnviz.speed.fastpath``) swaps a folded
BatchNorm for a stand-in with ``set_submodule`` on the wrapper, and with a dictionary of its own
the network would keep calling the unfolded BatchNorm wherever one is a direct child (timm's
EfficientNet ``bn1``/``bn2``), so the copy would no longer match and would not be used.

Each kind is a registered class (``TARGET_KINDS``, a strict registry: a duplicate name raises, an
unknown key is listed with the close matches). In a config::

    target: {output: 3}
    target: {similar_to: /path/ref.jpg}                 # target.layer=<module> where none is found
    target: [{similar_to: a.jpg}, {similar_to: b.jpg}]  # one item per reference
    target: {output: logits, class: 2}                  # a dict output (an index for a tuple)

Example::

    from cnnviz import explain
    ex = explain(model, "dog.jpg", method="gradcam", layer="bn2", target={"similar_to": "other_dog.jpg"})
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError, close_matches
from ..core.hooks import model_state_kept, removing
from ..core.layers import resolve_layer
from ..core.registry import Registry
from ..core.targets import OutputScore

#: target kinds by the config key that asks for them
TARGET_KINDS = Registry("target kind", "target")

#: keys of dict targets handled elsewhere (segmentation regions, ``cnnviz.models.segmentation``)
OTHER_KEYS = ("class", "region")


def target_kind(name: str):
    """Class decorator: a target kind asked for by a dict target with key ``name``; a duplicate raises."""
    return TARGET_KINDS.register(name)


class _Adopting(nn.Module):
    """A wrapper whose children are the network's, under the same names (the module docstring says
    why the child dictionary is shared)."""

    def __init__(self, net: nn.Module):
        if any(True for _ in net.named_parameters(recurse=False)) or any(True for _ in net.named_buffers(recurse=False)):
            raise ValueError(f"{type(self).__name__} wraps networks whose parameters all live in child modules")
        # held outside the module tree: its children are ours already, and listing it again would
        # give every layer a second name. Set first: ``training`` below reads it.
        object.__setattr__(self, "_net", (net,))
        was_training = net.training
        super().__init__()  # sets training = True, which would reach the network: restored below
        net.training = was_training
        self._modules = net._modules

    @property
    def net(self) -> nn.Module:
        return self._net[0]

    # The training flag is the network's own: its forward may read it (timm's heads apply dropout
    # with ``training=self.training``), and whatever sets or restores the wrapper's flag
    # (``model_state_kept``) then sets or restores the network's.
    @property
    def training(self) -> bool:  # type: ignore[override]
        return self._net[0].training

    @training.setter
    def training(self, mode: bool) -> None:
        self._net[0].training = mode


def _describe(out: Any) -> str:
    if isinstance(out, dict):
        return f"a dict with keys {', '.join(map(str, out))}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} outputs"
    return f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__


def _pick(out: Any, key: Any, where: str = "target.output") -> torch.Tensor:
    """Entry ``key`` of a dict, tuple or list output; a ConfigError naming ``where`` otherwise."""
    if isinstance(out, dict):
        if key not in out:
            near = close_matches(str(key), [str(k) for k in out])
            hint = f"; close matches: {', '.join(near)}" if near else ""
            raise ConfigError(f"{where}: '{key}' is not an output of the model{hint}; it returns {_describe(out)}")
        return out[key]
    if isinstance(out, (tuple, list)):
        if isinstance(key, bool) or not isinstance(key, int):
            raise ConfigError(f"{where}: the model returns {_describe(out)}: name one by its index 0..{len(out) - 1}")
        if not 0 <= key < len(out):
            raise ConfigError(f"{where}: {key} is out of range: the model returns {len(out)} outputs")
        return out[key]
    raise ConfigError(f"{where}: '{key}' names an output, but the model returns {_describe(out)}; "
                      "use target={output: <index>} for one of its values")


class SelectOutput(_Adopting):
    """``forward(x) -> (B, C)``: output ``key`` of a network returning a dict, tuple or list."""

    def __init__(self, net: nn.Module, key: Any):
        super().__init__(net)
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pick(self.net(x), self.key)


class SimilarTo(_Adopting):
    """``forward(x) -> (B, R)``: cosine similarity of the pooled features of ``x`` to those of each
    of the ``R`` references (buffer ``reference``, ``(R, D)``, computed once here).

    ``layer``: None for the network's own pooled features (timm ``forward_head(..., pre_logits=True)``,
    else the input of its last ``nn.Linear``), or a module whose output is the embedding (4D outputs
    are averaged over space)."""

    def __init__(self, net: nn.Module, references: torch.Tensor, layer: Optional[str] = None):
        super().__init__(net)
        self.source, self.layer = _feature_source(net, layer)
        with model_state_kept(self), torch.no_grad():
            reference = self.features(references)
        self.register_buffer("reference", reference.detach().clone())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, D)`` pooled features of ``x``."""
        if self.source == "timm":
            return self.net.forward_head(self.net.forward_features(x), pre_logits=True).flatten(1)
        module = dict(self.named_modules())[self.layer]
        got: list[torch.Tensor] = []

        # keep the tensor, hand a clone on: an in-place op downstream (ReLU(inplace=True)) then
        # changes the clone, not the features
        def keep_input(_m, inputs):
            got.append(inputs[0])
            return (inputs[0].clone(), *inputs[1:])

        def keep_output(_m, _i, output):
            got.append(output)
            return output.clone() if isinstance(output, torch.Tensor) else output

        if self.source == "linear_input":
            hook = module.register_forward_pre_hook(keep_input)
        else:
            hook = module.register_forward_hook(keep_output)
        with removing([hook]):
            self.net(x)
        if not got or not isinstance(got[0], torch.Tensor):
            raise ConfigError(f"target.layer: module '{self.layer}' did not give a tensor in the forward pass; "
                              "name a module that runs once and outputs one tensor")
        f = got[0]
        return (f.mean(dim=(2, 3)) if f.ndim == 4 else f).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.features(x)
        return F.cosine_similarity(e[:, None, :], self.reference.to(e.dtype)[None, :, :], dim=-1)


def _feature_source(net: nn.Module, layer: Optional[str]) -> tuple[str, Optional[str]]:
    """How ``SimilarTo`` finds the pooled features: ``("timm", None)``, ``("linear_input", name)``
    or ``("output", name)``; a ConfigError naming ``target.layer`` when none is found."""
    if layer is not None:
        try:
            resolve_layer(net, str(layer), type(net).__name__)
        except ConfigError as e:
            raise ConfigError(f"target.layer: {e}") from None
        return "output", str(layer)
    head = getattr(net, "forward_head", None)
    if callable(head) and callable(getattr(net, "forward_features", None)) and \
            "pre_logits" in inspect.signature(head).parameters:
        return "timm", None
    linears = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return "linear_input", linears[-1]
    raise ConfigError(
        f"target.similar_to: cannot find the pooled features of {type(net).__name__}: it is no timm model "
        "(forward_head) and has no nn.Linear whose input they would be. Name the module whose output is the "
        "embedding: target={similar_to: ..., layer: <dotted module name>} (a 4D output is averaged over space)")


# --- the kinds -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """A target request made concrete: the module to explain, the targets to pass the techniques,
    and a label for the model column (``None``: the model's name as it is)."""

    module: nn.Module
    targets: list[Any]
    label: Optional[str] = None


class TargetKind:
    """A dict target of one kind: ``keys`` it accepts (the first is its name), and ``resolve``,
    which turns every request of a run into a module and its targets."""

    keys: tuple[str, ...] = ()

    @classmethod
    def check_keys(cls, spec: dict) -> None:
        for key in spec:
            if key not in cls.keys:
                near = close_matches(str(key), cls.keys)
                hint = f"; close matches: {', '.join(near)}" if near else ""
                raise ConfigError(f"target.{key}: not a key of a {cls.name} target{hint}; "
                                  f"valid: {', '.join(cls.keys)}")

    @classmethod
    def resolve(cls, net: nn.Module, specs: Sequence[dict], reference: Callable[[Any], torch.Tensor],
                probe: Callable[[nn.Module], Any]) -> Resolved:
        """``specs``: the run's dict targets of this kind; ``reference(value)``: an image named in
        a target as the normalised ``(1, 3, H, W)`` input it makes (the caller reads and
        preprocesses it: ``cnnviz.api.reference_input``); ``probe(net)``: the network's output on
        one input."""
        raise NotImplementedError


def _form(spec: dict) -> str:
    """The request as the manifest records it: ``{output: 3}``, ``{similar_to: ref.jpg}``."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"


@target_kind("output")
class Output(TargetKind):
    """``{output: k}``: the model's continuous output k (a ``(B, D)`` output, no softmax);
    ``{output: name_or_index, class: c}``: class c of one output of a model returning a dict/tuple."""

    keys = ("output", "class")

    @classmethod
    def resolve(cls, net, specs, reference, probe):
        with_class = {"class" in s for s in specs}
        if len(with_class) > 1:
            raise ConfigError("target: give every {output: ...} target a class, or none; run the two kinds as separate jobs (-m)")
        out = probe(net)
        if with_class.pop():
            outputs = {s["output"] for s in specs}
            if len(outputs) > 1:
                raise ConfigError(f"target.output: every target of a run must name the same output (got {sorted(map(str, outputs))}); "
                                  "run them as separate jobs (-m)")
            key = specs[0]["output"]
            picked = _pick(out, key)
            classes = []
            for s in specs:
                c = s["class"]
                if isinstance(c, bool) or not isinstance(c, int):
                    raise ConfigError(f"target.class: '{c}' is not a class index of output {key}")
                classes.append(c)
            if picked.ndim != 2:
                raise ConfigError(f"target.output: output {key} has shape {tuple(picked.shape)}; a class target needs (B, classes)")
            return Resolved(SelectOutput(net, key), classes, f"output[{key}]")
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"target.output: the model returns {_describe(out)}; name the output and a class: "
                              "target={output: <name or index>, class: <int>}")
        if out.ndim != 2:
            raise ConfigError(f"target.output: the model's output has shape {tuple(out.shape)}; "
                              "{output: k} needs (B, outputs) values")
        scores = []
        for s in specs:
            k = s["output"]
            if isinstance(k, bool) or not isinstance(k, int):
                raise ConfigError(f"target.output: '{k}' is not an output index; the model returns one tensor of "
                                  f"{out.shape[1]} outputs (0..{out.shape[1] - 1})")
            if not 0 <= k < out.shape[1]:
                raise ConfigError(f"target.output: {k} is out of range: the model returns {out.shape[1]} outputs "
                                  f"(0..{out.shape[1] - 1})")
            scores.append(OutputScore(k, "output", f"output {k}", _form(s)))
        return Resolved(net, scores)


@target_kind("similar_to")
class Similarity(TargetKind):
    """``{similar_to: image}``: cosine similarity of the pooled features to the reference image's
    (``layer``: the module whose output is the embedding, where the model's own is not found)."""

    keys = ("similar_to", "layer")

    @classmethod
    def resolve(cls, net, specs, reference, probe):
        layers = {s.get("layer") for s in specs}
        if len(layers) > 1:
            raise ConfigError("target.layer: every similar_to target of a run must name the same layer")
        refs = torch.cat([reference(s["similar_to"]) for s in specs])
        param = next(net.parameters(), None)
        if param is not None:
            refs = refs.to(device=param.device, dtype=param.dtype if param.is_floating_point() else refs.dtype)
        module = SimilarTo(net, refs, layers.pop())
        scores = [OutputScore(r, "similar_to", f"similar_to {_name(s['similar_to'])}", _form(s)) for r, s in enumerate(specs)]
        return Resolved(module, scores, "similar_to")


def _name(ref: Any) -> str:
    from pathlib import Path

    return Path(str(ref)).name if isinstance(ref, (str, bytes)) or hasattr(ref, "__fspath__") else type(ref).__name__


# --- from a target request -------------------------------------------------------------------


def kind_of(spec: Any) -> Optional[type]:
    """The registered kind a dict target asks for; None for anything else (ints, top1, regions);
    a ConfigError for a dict key that is no kind's but close to one."""
    if not isinstance(spec, dict):
        return None
    names = TARGET_KINDS.names()
    found = [k for k in spec if k in names]
    if len(found) > 1:
        raise ConfigError(f"target: {', '.join(found)} are two target kinds; give one per target")
    if found:
        return TARGET_KINDS.get(found[0])
    for key in spec:
        if str(key) not in OTHER_KEYS and close_matches(str(key), names):
            raise ConfigError(f"target.{key}: unknown target kind; close matches: "
                              f"{', '.join(close_matches(str(key), names))}; valid: {', '.join(names)}, "
                              "or {class: c, region: ...} for segmentation models")
    return None


def split_target_kind(target: Any) -> tuple[Any, Optional[tuple[type, list[dict]]]]:
    """``(target, None)`` for a target without a kind here, else ``(None, (kind, specs))``: every
    entry of a target list must be of that one kind."""
    items = target if isinstance(target, list) else [target]
    kinds = [kind_of(t) for t in items]
    if all(k is None for k in kinds):
        return target, None
    if len(set(kinds)) > 1:
        raise ConfigError(f"target: {_form(next(t for t, k in zip(items, kinds) if k is not None))} cannot be mixed with "
                          "other kinds of target in one run; run them as separate jobs (-m)")
    kind = kinds[0]
    for t in items:
        kind.check_keys(t)
        if kind.keys[0] not in t or t[kind.keys[0]] is None:
            raise ConfigError(f"target.{kind.keys[0]}: not set")
    return None, (kind, list(items))


def probe_output(size: int, example: Optional[torch.Tensor] = None) -> Callable[[nn.Module], Any]:
    """``probe(net)``: the network's output on ``example`` (one image of it), or on a blank
    ``size`` x ``size`` input, in eval mode, without gradients, the network's state kept."""
    def probe(net: nn.Module) -> Any:
        param = next(net.parameters(), None)
        dev = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        if example is not None:
            x = example[:1].detach().to(dev)
        else:
            x = torch.zeros(1, 3, int(size), int(size), device=dev, dtype=dtype)
        with model_state_kept(net), torch.no_grad():
            return net(x)

    return probe


def resolve_target(net: nn.Module, target: Any, reference: Callable[[Any], torch.Tensor],
                   probe: Callable[[nn.Module], Any]) -> Optional[Resolved]:
    """The module and targets a dict target of a registered kind asks for (``TargetKind.resolve``
    says what ``reference`` and ``probe`` are); None for other targets."""
    _, request = split_target_kind(target)
    if request is None:
        return None
    kind, specs = request
    return kind.resolve(net, specs, reference, probe)
