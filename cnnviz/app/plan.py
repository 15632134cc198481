"""Turn a composed config into plain objects, checking everything before any work is done."""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import typing
from dataclasses import dataclass
from typing import Any, Optional

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..speed import Speed
from .schema import ImageConfig, ModelConfig, RenderConfig, check_keys
from ..core.constraints import check_values, param
from ..core.errors import ConfigError, close_matches, unknown
from ..core.hooks import capture_outputs, model_state_kept
from ..data.images import ImageSource, check_preprocess, check_resized_size, sources_from_config, unique_names
from ..data.lists import resolve_labels
from ..core.layers import resolve_layer
from ..methods.base import Method
from ..metrics import Metric, get_metric
from ..models.loaders import LoadedModel, check_finite
from ..methods import get_method
from ..models.segmentation import apply_region, split_region_target

log = logging.getLogger(__name__)


@dataclass
class Plan:
    device: torch.device
    model: LoadedModel
    preprocess: Any
    methods: dict[str, Method]
    layers: dict[str, list[str]]  # per method; [] for methods without a layer
    targets: list[Any]  # None = per-image default; "top1"; ints
    images: list[ImageSource]
    num_classes: int
    seed: int
    render: Any
    resume: bool = False
    #: per-map metrics applied after each technique (``metrics=[...]``), in config order
    metrics: dict[str, Metric] = dataclasses.field(default_factory=dict)
    #: the accelerations the run applies (``fast_copy``, ``model.streams``, ``reuse_memory``)
    speed: Speed = Speed()
    #: images per batch through the techniques and metrics
    batch_size: int = 1
    #: the forward passes' autocast precision: fp32 (none), bf16, fp16
    precision: str = "fp32"


def plain(value: Any) -> Any:
    """A config value as plain Python (dicts, lists, scalars), as the library takes it."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def resolve_device(name: str) -> torch.device:
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is available here; use device=cpu or device=auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: '{name}' is not a device; use cpu, cuda, cuda:N or auto") from None


def build_methods(cfg_methods: DictConfig) -> tuple[dict[str, Method], dict[str, Any]]:
    """Methods from ``method.<name>`` configs, and the per-method ``layer`` overrides they carry."""
    if not cfg_methods:
        raise ConfigError("no method selected: set method=<name> or 'method=[a,b]'")
    methods, layers = {}, {}
    for name, params in cfg_methods.items():
        cls = get_method(str(name))
        params = OmegaConf.to_container(params, resolve=True) if params is not None else {}
        if "layer" in params:
            layers[str(name)] = params.pop("layer")
        check_params(cls, params, f"method.{name}", f"hyperparameter of {name}", extra=("layer",))
        methods[str(name)] = cls(**params)
    return methods, layers


def check_params(cls: type, params: dict[str, Any], prefix: str, what: str, extra: tuple[str, ...] = ()) -> None:
    """ConfigErrors naming ``<prefix>.<key>`` for an unknown key (with close matches), a value of the
    wrong type, or a value outside what its field declares."""
    valid = {f.name for f in dataclasses.fields(cls)} | set(extra)
    for key in params:
        if key not in valid:
            raise ConfigError(f"{prefix}.{key}: unknown {what}{close_hint(str(key), valid)}; "
                              f"valid: {', '.join(sorted(valid)) or 'none'}")
    check_value_types(cls, params, prefix)
    check_values(cls, params, prefix)


def close_hint(word: str, valid) -> str:
    """``; close matches: ...`` for a mistyped key, or nothing."""
    near = close_matches(word, valid)
    return f"; close matches: {', '.join(near)}" if near else ""


_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_value_types(cls: type, params: dict[str, Any], prefix: str) -> None:
    """A ConfigError naming the key when a value does not have its field's scalar type (``bool``,
    ``int``, ``float``, ``str``, optionally ``Optional``): ``incremental=maybe`` would otherwise be a
    true string. Other field types are the class's own to check."""
    hints = typing.get_type_hints(cls)
    for key, value in params.items():
        want = hints.get(key)
        args = typing.get_args(want)
        if typing.get_origin(want) is typing.Union and type(None) in args and len(args) == 2:
            if value is None:
                continue
            want = next(a for a in args if a is not type(None))
        if want not in _SCALARS:
            continue
        ok = (isinstance(value, bool) if want is bool else
              isinstance(value, want) and not isinstance(value, bool) if want is int else
              isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else
              isinstance(value, str))
        if not ok:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{key}={value!r}: must be {_SCALARS[want]}")


def build_metrics(cfg_metrics: Optional[DictConfig], mean, std) -> dict[str, Metric]:
    """Metrics from ``metrics.<name>`` configs; unknown names and options are ConfigErrors."""
    metrics = {}
    for name, params in (cfg_metrics or {}).items():
        cls = get_metric(str(name))
        params = OmegaConf.to_container(params, resolve=True) if params is not None else {}
        check_params(cls, params, f"metrics.{name}", f"option of {name}")
        metric = cls(**params)
        for key, stat in (("input_mean", mean), ("input_std", std)):  # pixel-space substrates need the normalisation
            if getattr(metric, key, False) is None:
                setattr(metric, key, [float(v) for v in stat])
        metric.check()
        metrics[str(name)] = metric
    return metrics


def image_box(key: str, box: Any) -> Optional[tuple[float, float, float, float]]:
    """``image.<key>.box`` as four floats x0 < x1, y0 < y1 (original-image pixels), or None."""
    if box is None:
        return None
    values = list(box)
    if len(values) != 4 or not values[0] < values[2] or not values[1] < values[3]:
        raise ConfigError(f"image.{key}.box must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1 "
                          f"(original-image pixels), got {values}")
    return tuple(float(v) for v in values)


_MODELS: dict[str, LoadedModel] = {}


def load_model(cfg_model: DictConfig, seed: int) -> LoadedModel:
    """The model a config names; cached in-process, so the jobs of a basic-launcher multirun and
    the items of a job load it once."""
    loading = {k: v for k, v in OmegaConf.to_container(cfg_model, resolve=True).items() if k != "streams"}
    key = json.dumps([loading, seed], sort_keys=True, default=str)
    if key in _MODELS:
        log.info("reusing the cached model %s (%s)", cfg_model.arch, cfg_model.weights)
        return _MODELS[key]
    _MODELS.clear()  # one model in memory at a time
    loaded = _load_model(cfg_model, seed)
    check_finite(loaded.module, loaded.origin)  # before caching: a bad load is never reused
    _MODELS[key] = loaded
    return _MODELS[key]


def _load_model(cfg_model: DictConfig, seed: int) -> LoadedModel:
    """Call the registered loader ``model._target_`` names (``cnnviz.app.trust``): the string is never
    imported, so a configuration cannot make cnnviz call anything but a model loader."""
    from ..models.registry import get_loader

    loader = get_loader(cfg_model.get("_target_"))
    accepted = inspect.signature(loader).parameters
    given = {"arch": cfg_model.arch, "weights": cfg_model.weights, "path": cfg_model.path, "library": cfg_model.library,
             "name": cfg_model.name, "seed": seed}
    # null means "the loader's default", except weights, where null asks for a random init
    return loader(**{k: v for k, v in given.items() if k in accepted and (v is not None or k == "weights")})


def expand_layer_pattern(pattern: str, model: LoadedModel) -> Optional[list[str]]:
    """``all`` (every leaf module) or ``type:<Class>`` (modules of that class or a subclass), in
    model order; ``None`` when ``pattern`` is a plain layer name."""
    modules = [(n, m) for n, m in model.module.named_modules() if n]
    if pattern == "all":
        return [n for n, m in modules if not list(m.children())]
    if pattern.startswith("type:"):
        wanted = pattern[5:]
        found = [n for n, m in modules if any(c.__name__ == wanted for c in type(m).__mro__)]
        if not found:
            kinds = sorted({type(m).__name__ for _, m in modules})
            raise unknown("module type", "layer=type:<Class>", wanted, kinds)
        return found
    return None


def parse_layers(layer: Any, model: LoadedModel, default: Optional[str]) -> tuple[list[str], bool]:
    """Layer names, and whether a pattern (all, type:X) produced them."""
    if layer is None:
        if not default:
            raise ConfigError(f"layer is not set and model {model.name} has no default_layer: set layer=<dotted module name>")
        return [default], False
    requested = [str(v) for v in layer] if OmegaConf.is_list(layer) or isinstance(layer, (list, tuple)) else [str(layer)]
    layers, expanded = [], False
    for name in requested:
        names = expand_layer_pattern(name, model)
        if names is None:
            resolve_layer(model.module, name, model.name)
            names = [name]
        else:
            expanded = True
        layers.extend(names)
    return list(dict.fromkeys(layers)), expanded


def parse_targets(target: Any, num_classes: int) -> list[Any]:
    values = list(target) if OmegaConf.is_list(target) or isinstance(target, (list, tuple)) else [target]
    out = []
    for t in values:
        if t is None or t in ("top1", "label"):
            out.append(t)
            continue
        if isinstance(t, bool) or not isinstance(t, int):
            raise ConfigError(f"target: '{t}' is not a class index; use an int, a list of ints, top1, label "
                              "(each image's own class) or null (its own class when it has one, else top1)")
        if not 0 <= t < num_classes:
            raise ConfigError(
                f"target {t} is out of range: the model has {num_classes} classes, valid targets are 0..{num_classes - 1}"
            )
        out.append(int(t))
    return list(dict.fromkeys(out))


def probe_layers(plan_model: LoadedModel, layers: dict[str, list[str]], expanded: set[str], methods: dict[str, Method],
                 pre, device) -> int:
    """One forward on a blank input: layer output shapes for the CAM methods, and the class count.
    Layers from a pattern are narrowed (in place) to those a method can use; named ones must fit."""
    size = int(pre.input_size)
    every = list(dict.fromkeys(name for names in layers.values() for name in names))
    with model_state_kept(plan_model.module), capture_outputs(plan_model.module, every) as out, torch.no_grad():
        logits = plan_model.module(torch.zeros(1, 3, size, size, device=device))
    if logits.ndim != 2:
        raise ConfigError(f"model {plan_model.name} returns shape {tuple(logits.shape)}; cnnviz expects (B, classes) logits")
    for name, m in methods.items():
        if name in expanded:
            layers[name] = [l for l in layers[name] if l in out and (m.map_space != "layer" or out[l].ndim == 4)]
            if not layers[name]:
                raise ConfigError(f"layer: the pattern matched no layer that {name} can use (it needs (B, C, H, W) outputs)")
            log.info("%s: layer pattern expanded to %d layers", name, len(layers[name]))
        for layer in layers[name]:
            if layer not in out:
                raise ConfigError(f"layer '{layer}' never ran in the forward pass of {plan_model.name}")
            if m.map_space == "layer" and out[layer].ndim != 4:
                raise ConfigError(
                    f"{name} needs a layer whose output is (B, C, H, W), but layer '{layer}' outputs "
                    f"{tuple(out[layer].shape)}; choose a convolutional layer (layer=...)"
                )
    return int(logits.shape[1])


@dataclass(frozen=True)
class Batching:
    batch_size: int = param(16, min=1)
    shards: int = param(1, min=1)
    shard: int = param(0, min=0)
    precision: str = param("fp32", choices=("fp32", "bf16", "fp16"))


def check_batching(cfg: DictConfig, device: torch.device) -> Batching:
    """``batch_size``, ``shards`` / ``shard`` and ``precision``, checked (ConfigErrors naming the key)."""
    values = {k: cfg.get(k, getattr(Batching, k)) for k in ("batch_size", "shards", "shard", "precision")}
    check_value_types(Batching, values, "")
    check_values(Batching, values, "")
    b = Batching(**values)
    if b.shard >= b.shards:
        raise ConfigError(f"shard={b.shard}: must be below shards={b.shards} (shards are numbered 0..{b.shards - 1})")
    if b.precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision=fp16 needs device=cuda (float16 autocast on CPU is slow and loses range); "
                          "use precision=bf16 or fp32 on CPU")
    return b


def build_plan(cfg: DictConfig) -> Plan:
    check_keys(cfg.model, ModelConfig, "model")
    for key, image_cfg in (cfg.image or {}).items():
        check_keys(image_cfg, ImageConfig, f"image.{key}")
    check_preprocess(cfg.model.preprocess)
    device = resolve_device(cfg.device)
    try:
        speed = Speed(fast_copy=bool(cfg.get("fast_copy", True)), streams=cfg.model.get("streams", 1),
                      reuse_memory=bool(cfg.get("reuse_memory", True)))
    except ValueError as e:
        raise ConfigError(f"model.{e}: 1 runs integrated gradients' and SmoothGrad's batches one after another, "
                          "2 in two parallel streams on CPU (model.streams=2)") from None
    check_values(RenderConfig, OmegaConf.to_container(cfg.render, resolve=True), "render")
    batching = check_batching(cfg, device)
    methods, method_layers = build_methods(cfg.method)
    metrics = build_metrics(cfg.get("metrics"), cfg.model.preprocess.mean, cfg.model.preprocess.std)
    for m in methods.values():  # techniques that work in pixel space learn the model's normalisation
        if getattr(m, "input_mean", False) is None:
            m.input_mean = [float(v) for v in cfg.model.preprocess.mean]
        if getattr(m, "input_std", False) is None:
            m.input_std = [float(v) for v in cfg.model.preprocess.std]
    images: list[ImageSource] = []
    for key, image_cfg in (cfg.image or {}).items():
        box = image_box(str(key), image_cfg.get("box"))
        images.extend(dataclasses.replace(s, box=box) if box else s for s in sources_from_config(str(key), image_cfg))
    if not images:
        raise ConfigError("no image selected: set image=<preset> or image=file image.file.path=...")
    for src in images:
        if src.eager:
            img, _ = src.read()  # a file named in the config must be readable, and not too large once resized, before any work starts
            check_resized_size(img.size, cfg.model.preprocess)
    target, region = split_region_target(plain(cfg.target))  # {class: c, region: ...} for segmentation models
    model = apply_region(load_model(cfg.model, int(cfg.seed)), region, cfg.model.preprocess)
    model.module.to(device)
    for m in methods.values():
        m.check(model.module)
    layers, expanded = {}, set()
    for name, m in methods.items():
        if m.needs_layer:
            layers[name], pattern = parse_layers(method_layers.get(name, cfg.layer), model, cfg.model.default_layer)
            if pattern:
                expanded.add(name)
        else:
            layers[name] = []
    num_classes = probe_layers(model, layers, expanded, methods, cfg.model.preprocess, device)
    targets = parse_targets(target, num_classes)
    images = resolve_labels(unique_names(images), model.class_names, num_classes)
    if "label" in targets:
        unlabelled = [s for s in images if s.default_target is None]
        if unlabelled:
            log.warning("target=label: %d image(s) have no label (e.g. %s); their items fail", len(unlabelled),
                        unlabelled[0].origin or unlabelled[0].name)
    # names are made unique over the whole list first: every shard's files and rows keep the same names
    images = images[batching.shard::batching.shards]
    if not images:
        raise ConfigError(f"shard={batching.shard} of shards={batching.shards} has no image: the list has fewer "
                          f"images than shards; use shards<={batching.shard}")
    return Plan(device, model, cfg.model.preprocess, methods, layers, targets, images, num_classes,
                int(cfg.seed), cfg.render, bool(cfg.resume), metrics, speed, batching.batch_size, batching.precision)
