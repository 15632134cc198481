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
from torch import nn
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..speed import Speed
from .schema import ImageConfig, ModelConfig, RenderConfig, check_keys
from ..core.constraints import check_values, param
from ..core.errors import ConfigError, close_matches, unknown
from ..core.hooks import capture_outputs, model_state_kept
from ..data.images import ImageSource, check_preprocess, check_resized_size, sources_from_config, unique_names
from ..data.lists import resolve_labels
from ..core.layers import resolve_layer
from ..core.targets import OutputScore
from ..core.tokens import layout_of, set_token_grid
from ..methods.base import Method
from ..metrics import Metric, get_metric
from ..metrics.evaluate import bind_references
from ..models.loaders import LoadedModel, check_finite
from ..methods import get_method
from ..models.segmentation import apply_region, split_region_target
from ..models.outputs import probe_output, split_target_kind
from ..models.detection import default_layer as detection_default_layer, split_detection_target
from ..models.registry import canonical_loader

#: the loader of model=torchvision_detection (cnnviz.models.detection)
DETECTION_LOADER = "cnnviz.models.detection.torchvision_detection"

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


def image_sources(key: str, cfg) -> list[ImageSource]:
    """``image.<key>``'s images: ``source: benchmark`` from ``cnnviz.benchmark`` (which the data layer
    does not import), any other source from ``cnnviz.data``."""
    if cfg.get("source") == "benchmark":
        from ..benchmark.data import benchmark_sources

        return benchmark_sources(f"image.{key}", cfg)
    return sources_from_config(key, cfg)


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
             "name": cfg_model.name, "seed": seed,
             "input_size": (cfg_model.get("preprocess") or {}).get("input_size")}
    # null means "the loader's default", except weights, where null asks for a random init
    return loader(**{k: v for k, v in given.items() if k in accepted and (v is not None or k == "weights")})


def reference_model(cfg: DictConfig, weights: str, region: Any, device: torch.device) -> nn.Module:
    """The model of ``cfg.model`` loaded with ``model.weights=weights``: a metric's reference model (the
    data randomization test's copy trained on shuffled labels), checked like the run's model, with the
    same segmentation region, in eval mode on ``device``. Not cached (``load_model`` keeps one model, the
    run's own)."""
    loaded = _load_model(OmegaConf.merge(cfg.model, {"weights": weights}), int(cfg.seed))
    check_finite(loaded.module, loaded.origin)
    return apply_region(loaded, region, cfg.model.preprocess).module.to(device).eval()


def expand_layer_pattern(pattern: str, model: LoadedModel) -> Optional[list[str]]:
    """``all`` or ``type:<Class>`` (modules of that class or a subclass), in model order; ``None``
    when ``pattern`` is a plain layer name.

    ``all`` on a transformer (a model with attention modules) is its blocks (``transformer_blocks``):
    one map per block, as each block's output is the token grid the next one reads, while the leaves
    inside a block (qkv, norms, the MLP's halves) are steps of one computation. On any other model it
    is every leaf module (narrowed by ``probe_layers`` to those a technique can use)."""
    modules = [(n, m) for n, m in model.module.named_modules() if n]
    if pattern == "all":
        return transformer_blocks(model.module) or [n for n, m in modules if not list(m.children())]
    if pattern.startswith("type:"):
        wanted = pattern[5:]
        found = [n for n, m in modules if any(c.__name__ == wanted for c in type(m).__mro__)]
        if not found:
            kinds = sorted({type(m).__name__ for _, m in modules})
            raise unknown("module type", "layer=type:<Class>", wanted, kinds)
        return found
    return None


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention")


def transformer_blocks(module: nn.Module) -> list[str]:
    """The blocks of a transformer, in model order: the elements of every ``nn.Sequential`` /
    ``nn.ModuleList`` whose elements each hold an attention module (a class named ``*Attention``, as
    timm's ViT, DeiT, Eva and Swin attentions are, or ``nn.MultiheadAttention``) and hold no such list
    themselves: ``blocks.0 .. blocks.11`` of a ViT, ``layers.<stage>.blocks.<i>`` of a Swin. Empty for
    a model without attention (a CNN, ConvNeXt)."""
    attention = [n for n, m in module.named_modules() if _is_attention(m)]
    if not attention:
        return []

    def holds(name: str) -> bool:
        return any(a == name or a.startswith(name + ".") for a in attention)

    lists = [n for n, m in module.named_modules()
             if n and isinstance(m, (nn.Sequential, nn.ModuleList)) and len(m)
             and all(holds(f"{n}.{i}") for i in range(len(m)))]
    innermost = [n for n in lists if not any(o != n and o.startswith(n + ".") for o in lists)]
    return [f"{n}.{i}" for n in innermost for i in range(len(dict(module.named_modules())[n]))]


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
        if isinstance(t, OutputScore):  # a target kind's (apply_target_kind), checked when made
            out.append(t)
            continue
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


def spatial_problem(model: LoadedModel, layer: str, output: torch.Tensor, size: int) -> Optional[str]:
    """Why a CAM cannot read a map from ``layer``'s ``output`` on a ``size`` px input (its layout, see
    ``cnnviz.core.tokens``), or None."""
    try:
        layout_of(model.module, layer, output, (output.shape[0], 3, size, size))
    except ConfigError as e:
        return str(e)
    return None


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
            layers[name] = [l for l in layers[name] if l in out and (m.map_space != "layer" or not
                                                                     spatial_problem(plan_model, l, out[l], size))]
            if not layers[name]:
                raise ConfigError(f"layer: the pattern matched no layer that {name} can use (it needs (B, C, H, W) "
                                  "outputs, channels-last maps or transformer tokens)")
            log.info("%s: layer pattern expanded to %d layers", name, len(layers[name]))
        for layer in layers[name]:
            if layer not in out:
                raise ConfigError(f"layer '{layer}' never ran in the forward pass of {plan_model.name}")
            problem = spatial_problem(plan_model, layer, out[layer], size) if m.map_space == "layer" else None
            if problem:
                raise ConfigError(f"{name} needs a layer with a spatial map: {problem}")
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


def detection_target(cfg: DictConfig) -> tuple[Any, Any]:
    """For a detector (``model=torchvision_detection``): ``(None, DetectionRequest)`` from ``target``
    and the model's ``score_threshold`` / ``max_detections`` / ``per_box``; for any other model
    ``(target, None)`` (a detection target for it is a ConfigError)."""
    is_detector = canonical_loader(cfg.model.get("_target_")) == DETECTION_LOADER
    return split_detection_target(plain(cfg.target), cfg.model, is_detector)


def apply_target_kind(loaded: LoadedModel, kind: Any, target: Any, pre) -> tuple[LoadedModel, Any]:
    """For a target of a kind in ``cnnviz.models.outputs`` (``kind`` from ``split_target_kind``): the
    model as the kind needs it, named with the kind for the manifest's model column when wrapped
    (``efficientnet_lite0@similar_to``), and the targets it gives; otherwise both unchanged."""
    if kind is None:
        return loaded, target
    cls, specs = kind
    from ..api import reference_input

    resolved = cls.resolve(loaded.module, specs, lambda ref: reference_input(str(ref), pre), probe_output(int(pre.input_size)))
    if resolved.module is loaded.module:
        return loaded, resolved.targets
    name = f"{loaded.name}@{resolved.label}" if resolved.label else loaded.name
    # the classes of a similarity are the references, not the network's
    names = [] if cls.name == "similar_to" else loaded.class_names
    # the cached model keeps its own module; this plan gets the wrapper
    return dataclasses.replace(loaded, module=resolved.module, name=name, class_names=names), resolved.targets


#: the loaders whose models carry timm's pretrained configuration (model=timm)
TIMM_LOADER = "cnnviz.models.loaders.timm_model"
PREPROCESS_FROM_MODEL = ("input_size", "crop_pct", "interpolation", "mean", "std")


def resolve_preprocess(cfg_model: DictConfig) -> None:
    """Fill the null values of ``model.preprocess`` (in place) from the timm model's pretrained
    configuration (``timm.data.resolve_data_config``, ``cnnviz.models.loaders.timm_data_config``): a
    value set in the config wins. Other models have no such configuration: a null there is a
    ConfigError naming the key."""
    pre = cfg_model.preprocess
    missing = [k for k in PREPROCESS_FROM_MODEL if pre.get(k) is None]
    if not missing:
        return
    if canonical_loader(cfg_model.get("_target_")) != TIMM_LOADER:
        raise ConfigError(f"model.preprocess.{missing[0]} is null, and only timm models (model=timm) take it from "
                          f"their pretrained configuration; set model.preprocess.{missing[0]}=<value>")
    from ..models.loaders import timm_data_config

    data = timm_data_config(str(cfg_model.arch))
    _, height, width = data["input_size"]
    if "input_size" in missing and height != width:
        raise ConfigError(f"model.preprocess.input_size is null and timm's {cfg_model.arch} is trained at "
                          f"{height}x{width}, not square; set model.preprocess.input_size=<pixels>")
    resolved = {"input_size": int(height), "crop_pct": float(data["crop_pct"]), "interpolation": str(data["interpolation"]),
                "mean": [float(v) for v in data["mean"]], "std": [float(v) for v in data["std"]]}
    for key in missing:
        pre[key] = resolved[key]
    log.info("model.preprocess from timm's pretrained configuration of %s: %s", cfg_model.arch,
             ", ".join(f"{k}={resolved[k]}" for k in missing))


def build_plan(cfg: DictConfig) -> Plan:
    check_keys(cfg.model, ModelConfig, "model")
    for key, image_cfg in (cfg.image or {}).items():
        check_keys(image_cfg, ImageConfig, f"image.{key}")
    resolve_preprocess(cfg.model)
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
        images.extend(dataclasses.replace(s, box=box) if box else s for s in image_sources(str(key), image_cfg))
    if not images:
        raise ConfigError("no image selected: set image=<preset> or image=file image.file.path=...")
    for src in images:
        if src.eager:
            img, _ = src.read()  # a file named in the config must be readable, and not too large once resized, before any work starts
            check_resized_size(img.size, cfg.model.preprocess)
    target, detection = detection_target(cfg)  # detectors: detections | {class: c} | {box: [...], class: c}
    target, kind = split_target_kind(target)  # {output: k}, {similar_to: img}, {output: b, class: c}
    target, region = split_region_target(target)  # {class: c, region: ...} for segmentation models
    model = apply_region(load_model(cfg.model, int(cfg.seed)), region, cfg.model.preprocess)
    model, target = apply_target_kind(model, kind, target, cfg.model.preprocess)
    model.module.to(device)
    # metrics that compare a second model (sanity_data_randomization): the same loader, their model.weights
    bind_references(metrics, lambda weights: reference_model(cfg, weights, region, device), model.module)
    set_token_grid(model.module, plain(cfg.model.get("token_grid")))  # model.token_grid, read by the CAMs
    for m in methods.values():
        m.check(model.module)
    layers, expanded = {}, set()
    for name, m in methods.items():
        if m.needs_layer:
            layers[name], pattern = parse_layers(method_layers.get(name, cfg.layer), model,
                                                    detection_default_layer(model.module, cfg.model.default_layer))
            if pattern:
                expanded.add(name)
        else:
            layers[name] = []
    num_classes = probe_layers(model, layers, expanded, methods, cfg.model.preprocess, device)
    if detection is not None:  # one request, expanded per image into its detections by the runner
        num_classes = len(model.class_names)
    targets = [detection] if detection is not None else parse_targets(target, num_classes)
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
