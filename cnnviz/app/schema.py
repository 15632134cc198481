"""Structured-config schemas: a typo in a key or a wrong type fails when Hydra composes."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..core.constraints import param
from ..output.options import RenderOptions

#: OmegaConf's marker of a mandatory value (``omegaconf.MISSING``), spelled out so that the schemas
#: import without Hydra
MISSING = "???"


@dataclass
class PreprocessConfig:
    """null in ``input_size``, ``crop_pct``, ``interpolation``, ``mean`` or ``std`` (conf/model/timm.yaml):
    the value of the timm model's pretrained configuration (``cnnviz.app.plan.resolve_preprocess``)."""

    input_size: Optional[int] = 224
    #: center_crop: shorter side to input_size / crop_pct, then a centred square crop;
    #: stretch: resize to a square; keep_aspect: shorter side to input_size, no crop (non-square).
    resize: str = "center_crop"
    crop_pct: Optional[float] = 0.875
    interpolation: Optional[str] = "bilinear"
    mean: Optional[List[float]] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: Optional[List[float]] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class ModelConfig:
    _target_: str = MISSING
    arch: str = MISSING
    weights: Optional[str] = None
    path: Optional[str] = None
    library: Optional[str] = None
    #: the network of model=torchvision_segmentation (fcn_resnet50, deeplabv3_resnet50, ...)
    name: Optional[str] = None
    default_layer: Optional[str] = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    #: parallel streams for integrated gradients / SmoothGrad on CPU (cnnviz.speed.streams); 1 = none
    streams: int = 1
    #: [h, w]: the patch-token grid of a transformer's (B, N, C) layer outputs, where it cannot be inferred
    #: from the model (cnnviz.core.tokens); null = inferred
    token_grid: Optional[List[int]] = None
    #: detectors (model=torchvision_detection): detections scoring at least this are explained
    score_threshold: Optional[float] = None
    #: detectors: at most this many detections per image, best first
    max_detections: Optional[int] = None
    #: detectors: renders of each detection's map normalised inside its box
    per_box: Optional[bool] = None


@dataclass
class ImageConfig:
    #: skimage | preset | file | folder | list
    source: str = MISSING
    name: Optional[str] = None
    path: Optional[str] = None
    url: Optional[str] = None
    sha256: Optional[str] = None
    #: the class explained when the top-level ``target`` is null (or ``label``); an int or a class name
    target: Any = None
    #: the object as [x0, y0, x1, y1] in original-image pixels (for metrics=pointing_game)
    box: Optional[List[float]] = None
    #: folder: also the images in its subfolders
    recursive: bool = False
    #: folder: only the files matching this pattern (relative to the folder, e.g. "*.jpg", "n01*/*.JPEG")
    glob: Optional[str] = None
    #: folder / list: the first ``limit`` images (after ``shuffle``); null = all
    limit: Optional[int] = None
    #: folder / list: a seeded random order (``seed``) instead of the sorted / listed one
    shuffle: bool = False
    seed: int = 0
    #: folder: ``subfolder`` = each image's class is its subfolder's name (torchvision's ImageFolder)
    label_from: Optional[str] = None
    #: folder with label_from=subfolder: a JSON file mapping class indices to names or names to indices
    #: (ImageNet's class_index.json: {"0": ["n01440764", "tench"], ...}); null = the model's class names,
    #: else the subfolders in sorted order
    class_index: Optional[str] = None


def _structured(options: type, name: str) -> type:
    """A plain (non-frozen) dataclass with ``options``' fields, defaults and constraints, which Hydra
    can build and override: the options are declared once, where the library uses them."""
    hints = typing.get_type_hints(options)
    fields = [(f.name, hints[f.name], field(default=f.default, metadata=f.metadata)) for f in dataclasses.fields(options)]
    return dataclasses.make_dataclass(name, fields, namespace={"__module__": __name__, "__doc__": options.__doc__})


#: ``render``: the fields of ``cnnviz.output.options.RenderOptions``
RenderConfig = _structured(RenderOptions, "RenderConfig")


@dataclass
class SelectConfig:
    """``experiment=select`` (``cnnviz.app.select``): which technique, layer and hyperparameter, chosen
    by a metric on calibration images."""

    #: the techniques compared; null = those of the ``method`` group (their options from there, or from
    #: conf/method/<name>.yaml for a technique the group does not hold)
    methods: Optional[List[str]] = None
    #: the layers tried by techniques that need one: all | type:<Class> | a name | a list; null = ``layer``
    layers: Any = "all"
    #: a metric (one column) or a metric column (``insertion``, ``deletion_auc``, ``road_lerf``,
    #: ``insertion_minus_deletion``); better is the metric's ``higher_is_better``
    metric: str = "insertion"
    #: {technique: [values of its main hyperparameter] | {field: [values]} | []}; a technique not named
    #: (or null) sweeps the values it declares (``Method.main_hyperparameter``), [] none. Typed Any with
    #: a null default so that one override sets the whole mapping: 'select.values={smoothgrad: [0.1, 0.2]}'
    #: (a typed dict would refuse new keys without a +). Read it as select["values"]: DictConfig.values
    #: is a method.
    values: Any = None
    #: confidence level of the intervals over images (Student t)
    level: float = param(0.95, gt=0, lt=1)
    #: how many of the best candidates the report shows maps of
    top: int = param(3, min=1)
    #: images shown per candidate in the report
    examples: int = param(4, min=0)


@dataclass
class Config:
    model: ModelConfig = MISSING
    image: Dict[str, ImageConfig] = field(default_factory=dict)
    method: Dict[str, Any] = field(default_factory=dict)
    #: metrics=[deletion,insertion]: per-map metric -> its options (conf/metrics/<name>.yaml)
    metrics: Dict[str, Any] = field(default_factory=dict)
    experiment: Optional[Any] = None
    layer: Any = None
    target: Any = None
    device: str = "cpu"
    seed: int = 0
    #: skip the items whose rows and files are already complete in the run folder
    resume: bool = False
    #: exit status 0 even when items failed (their rows say why); false: 3
    allow_failures: bool = False
    #: run the techniques on a BatchNorm-folded channels-last copy of the model (cnnviz.speed.fastpath)
    fast_copy: bool = True
    #: techniques that run many batches keep freed memory in malloc's heap between them (cnnviz.speed.memory)
    reuse_memory: bool = True
    render: RenderConfig = field(default_factory=RenderConfig)
    #: images per batch through the techniques and metrics (one target per image)
    batch_size: int = 16
    #: split the images into ``shards`` parts; this job takes images shard, shard + shards, ...
    shards: int = 1
    shard: int = 0
    #: fp32 | bf16 | fp16: the model's forward passes under autocast at that precision (fp32: none)
    precision: str = "fp32"
    #: experiment=select: sweep technique x layer x hyperparameter and write the best as best.yaml
    select: Optional[SelectConfig] = None


def check_keys(node, schema: type, where: str) -> None:
    """Hydra accepts ``+image.x.typo=1`` into a typed node; refuse keys the schema does not have
    (nested dataclass fields are checked too)."""
    from ..core.errors import ConfigError, close_matches

    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node.keys():
        if key not in fields:
            near = close_matches(str(key), fields)
            hint = f"; close matches: {', '.join(near)}" if near else ""
            raise ConfigError(f"{where}.{key}: unknown key{hint}; valid: {', '.join(fields)}")
        factory = fields[key].default_factory
        if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
            check_keys(node[key], factory, f"{where}.{key}")


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="config_schema", node=Config)
